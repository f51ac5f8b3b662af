import type { ConfigReader, Located } from '../../config/reader.js'
import { snippet, type ProbeFactory } from '../probe.js'
import { converse, type Parse } from './conversation.js'

/** One step of a send-expect check: bytes to write, or a string / regex to wait for. */
export type Step = { send: string } | { expect: string | RegExp }

export interface SendExpectOptions {
  steps: Step[]
}

/**
 * `send-expect`: a scripted exchange like HAProxy's tcp-check. Either `send` and/or `expect`
 * for one round, or `steps: [{ send: ... }, { expect: ... }, ...]`. An `expect` written as
 * `/regex/flags` is a regular expression; anything else must appear verbatim. Each expect
 * searches the bytes received after the previous match.
 */
export const sendExpectProbe: ProbeFactory<SendExpectOptions> = {
  type: 'send-expect',
  optionKeys: ['send', 'expect', 'steps'],
  parseOptions(m, reader, context) {
    const steps: Step[] = []
    let ok = true
    if (m.has('steps')) {
      for (const k of ['send', 'expect']) {
        if (m.has(k)) {
          reader.report(m.keyAt(k), `${context}: give either steps or send/expect, not both`)
          ok = false
        }
      }
      const items = reader.seq(m.get('steps'), `${context} steps`)
      if (items === undefined) return undefined
      for (const item of items) {
        const s = reader.map(item, ['send', 'expect'], `a step of ${context}`)
        if (s === undefined) {
          ok = false
          continue
        }
        const keys = s.keys()
        if (keys.length !== 1) {
          reader.report(item, `a step of ${context} needs exactly one of send or expect`)
          ok = false
          continue
        }
        const step = readStep(reader, keys[0] === 'send' ? 'send' : 'expect', s.get(keys[0] ?? 'expect'), context)
        if (step === undefined) ok = false
        else steps.push(step)
      }
    } else {
      for (const k of ['send', 'expect'] as const) {
        if (!m.has(k)) continue
        const step = readStep(reader, k, m.get(k), context)
        if (step === undefined) ok = false
        else steps.push(step)
      }
    }
    if (ok && !steps.some((s) => 'expect' in s)) {
      reader.report(reader.at(m.node, m.path), `${context}: type send-expect needs an expect (or steps with at least one expect); for a bare connect use type tcp`)
      ok = false
    }
    return ok ? { steps } : undefined
  },
  create: (o) => ({
    check: (target) =>
      converse(target, async (c) => {
        let last = ''
        for (const step of o.steps) {
          if ('send' in step) c.send(step.send)
          else last = await c.read(describeExpect(step.expect), matcher(step.expect))
        }
        return last === '' ? 'matched' : `matched "${snippet(last)}"`
      }),
  }),
}

function readStep(reader: ConfigReader, kind: 'send' | 'expect', at: Located, context: string): Step | undefined {
  const text = reader.string(at, `${context} ${kind}`, { nonEmpty: true })
  if (text === undefined) return undefined
  if (kind === 'send') return { send: text }
  const re = /^\/(.*)\/([a-z]*)$/s.exec(text)
  if (re === null) return { expect: text }
  try {
    return { expect: new RegExp(re[1] ?? '', re[2]) }
  } catch (err) {
    reader.report(at, `${context} expect: ${text} is not a valid regular expression: ${err instanceof Error ? err.message : String(err)}`)
    return undefined
  }
}

function describeExpect(e: string | RegExp): string {
  return typeof e === 'string' ? `"${snippet(e)}"` : `a match for ${String(e)}`
}

function matcher(e: string | RegExp): Parse<string> {
  return (buf) => {
    const text = buf.toString('latin1')
    if (typeof e === 'string') {
      const i = text.indexOf(e)
      return i < 0 ? undefined : { value: e, used: i + e.length }
    }
    const m = e.exec(text)
    if (m === null) return undefined
    if (e.global || e.sticky) e.lastIndex = 0
    return { value: m[0], used: m.index + m[0].length }
  }
}
