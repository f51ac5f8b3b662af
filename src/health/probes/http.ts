import type { ConfigReader, Located } from '../../config/reader.js'
import { ProbeFailure, snippet, type ProbeFactory } from '../probe.js'
import { converse } from './conversation.js'

export interface HttpProbeOptions {
  path: string
  /** The Host header; defaults to the backend's host. */
  host: string | undefined
  /** Inclusive ranges of accepted status codes. */
  expect: readonly (readonly [number, number])[]
  /** As written, for messages. */
  expectText: string
}

/**
 * `http`: `GET path HTTP/1.1` with `Connection: close`; the status line's code must be in
 * `expect_status`: a code (`200`), a class (`2xx`), a range (`200-299`) or a list of these.
 * Default: 200-399. Only the status line is read; the body is never waited for.
 */
export const httpProbe: ProbeFactory<HttpProbeOptions> = {
  type: 'http',
  optionKeys: ['path', 'expect_status', 'host'],
  parseOptions(m, reader, context) {
    const path = m.has('path') ? reader.string(m.get('path'), `${context} path`, { pattern: /^\/[\x21-\x7e]*$/, patternHint: 'must start with "/" and hold no spaces or control characters' }) : '/'
    const host = m.has('host') ? reader.string(m.get('host'), `${context} host`, { pattern: /^[\x21-\x7e]+$/, patternHint: 'must be a host name, with no spaces' }) : undefined
    const expect = m.has('expect_status') ? readStatuses(reader, m.get('expect_status'), `${context} expect_status`) : { ranges: [[200, 399] as const], text: '200-399' }
    if (path === undefined || expect === undefined || (m.has('host') && host === undefined)) return undefined
    return { path, host, expect: expect.ranges, expectText: expect.text }
  },
  create: (o) => ({
    check: (target) =>
      converse(target, async (c) => {
        const host = o.host ?? (target.host.includes(':') ? `[${target.host}]` : target.host)
        c.send(`GET ${o.path} HTTP/1.1\r\nHost: ${host}\r\nUser-Agent: sluice-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n`)
        const line = await c.line('the HTTP status line')
        const m = /^HTTP\/\d(?:\.\d)? (\d{3})\b/.exec(line)
        if (m === null) throw new ProbeFailure(`expected an HTTP status line, got "${snippet(line)}"`)
        const status = Number(m[1])
        if (!o.expect.some(([lo, hi]) => status >= lo && status <= hi)) throw new ProbeFailure(`status ${status}, expected ${o.expectText}`)
        return `status ${status}`
      }),
  }),
}

function readStatuses(reader: ConfigReader, at: Located, context: string): { ranges: [number, number][]; text: string } | undefined {
  const items = at.node !== undefined && 'items' in at.node ? reader.seq(at, context) : [at]
  if (items === undefined) return undefined
  const ranges: [number, number][] = []
  const texts: string[] = []
  for (const item of items) {
    const t = reader.text(item, context)
    if (t === undefined) return undefined
    const r = parseStatus(t.trim())
    if (r === undefined) {
      reader.report(item, `${context} "${t}" is not a status: write a code (200), a class (2xx), a range (200-299) or a list of these, from 100 to 599`)
      return undefined
    }
    ranges.push(r)
    texts.push(t.trim())
  }
  if (ranges.length === 0) {
    reader.report(at, `${context} is an empty list; give at least one status`)
    return undefined
  }
  return { ranges, text: texts.join(', ') }
}

function parseStatus(t: string): [number, number] | undefined {
  let m = /^([1-5])xx$/i.exec(t)
  if (m !== null) return [Number(m[1]) * 100, Number(m[1]) * 100 + 99]
  m = /^(\d{3})(?:-(\d{3}))?$/.exec(t)
  if (m === null) return undefined
  const lo = Number(m[1])
  const hi = m[2] === undefined ? lo : Number(m[2])
  return lo >= 100 && hi <= 599 && lo <= hi ? [lo, hi] : undefined
}
