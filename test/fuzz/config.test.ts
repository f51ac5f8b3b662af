import fc from 'fast-check'
import { readFileSync, readdirSync } from 'node:fs'
import { join } from 'node:path'
import t from 'tap'
import { parse, stringify } from 'yaml'
import { ConfigError } from '../../src/errors.js'
import { parseConfig } from '../../src/config/load.js'
import { fuzz } from '../helpers/fuzz.js'

/**
 * The configuration loader, fed broken YAML and valid YAML with wrong values in it: it
 * returns a Config or throws a ConfigError (every issue at a FILE:LINE:COL), never anything
 * else, never hangs. Seeds are printed; SLUICE_FUZZ_SEED=N replays one (docs/testing.md).
 */

const root = join(import.meta.dirname, '../..')
const SAMPLES = [
  readFileSync(join(root, 'config/sluice.yaml'), 'utf8'),
  ...readdirSync(join(root, 'config/examples')).filter((f) => f.endsWith('.yaml')).map((f) => readFileSync(join(root, 'config/examples', f), 'utf8')),
]
const ENV = { SLUICE_ADMIN_TOKEN: 'fuzz-token' }

function load(text: string): void {
  try {
    parseConfig(text, 'fuzz.yaml', ENV)
  } catch (err) {
    if (err instanceof ConfigError) {
      for (const i of err.issues) {
        if (!(Number.isInteger(i.line) && i.line >= 1 && Number.isInteger(i.col) && i.col >= 1)) throw new Error(`an issue without a line and column: ${JSON.stringify(i)}`)
        if (i.message === '') throw new Error('an issue without a message')
      }
    }
    throw err
  }
}

/** Characters that mean something to YAML, and some that mean something to sluice. */
const YAML_CHARS = [...':-{}[], \n\t#&*!|>"\'%@`$0123456789.abcxyz/\\', '${', '1s', '-1', '0x', '::', '[::1]:', '127.0.0.1:']

const textMutation = fc
  .tuple(
    fc.constantFrom(...SAMPLES),
    fc.array(fc.record({ at: fc.nat(), cut: fc.nat({ max: 8 }), put: fc.array(fc.constantFrom(...YAML_CHARS), { maxLength: 4 }).map((a) => a.join('')) }), { minLength: 1, maxLength: 6 }),
  )
  .map(([text, edits]) => {
    let s = text
    for (const e of edits) {
      const i = e.at % (s.length + 1)
      s = s.slice(0, i) + e.put + s.slice(i + e.cut)
    }
    return s
  })

/** A value of any shape and a few that are nearly right. */
const wrongValue = fc.oneof(
  fc.jsonValue({ maxDepth: 2 }),
  fc.constantFrom('', '0', '-1', '1e309', 'NaN', '10x', '1.5s', '25h', '0ms', '999999999999999999999', '127.0.0.1', ':0', '[::1]:99999', 'a:b:c', '10.0.0.0/33', 'auto', 'tcp', 'udp', '${NOPE}', '100/s', '0/s', 'x'.repeat(300)),
  fc.integer(),
  fc.double(),
)

/** Walks to a random node of a parsed sample and replaces it (or a key under it). */
function replaceAt(doc: unknown, steps: number[], value: unknown, asKey: boolean): unknown {
  if (steps.length === 0 || doc === null || typeof doc !== 'object') return value
  const keys = Object.keys(doc)
  if (keys.length === 0) return value
  const k = keys[steps[0]! % keys.length]!
  const rec = doc as Record<string, unknown>
  if (steps.length === 1 && asKey && !Array.isArray(doc)) {
    const { [k]: old, ...rest } = rec
    return { ...rest, [typeof value === 'string' ? value : JSON.stringify(value)]: old }
  }
  const copy: Record<string, unknown> | unknown[] = Array.isArray(doc) ? [...(doc as unknown[])] : { ...rec }
  ;(copy as Record<string, unknown>)[k] = replaceAt(rec[k], steps.slice(1), value, asKey)
  return copy
}

const structural = fc
  .tuple(fc.constantFrom(...SAMPLES.map((s) => parse(s) as unknown)), fc.array(fc.nat(), { minLength: 1, maxLength: 5 }), wrongValue, fc.boolean())
  .map(([doc, steps, value, asKey]) => stringify(replaceAt(doc, steps, value, asKey)))

t.test('the samples load as they are', async (t) => {
  for (const s of SAMPLES) t.doesNotThrow(() => parseConfig(s, 'sample.yaml', ENV))
})

t.test('config loader: random text', async (t) => {
  fuzz(t, 'parseConfig(random text)', fc.string({ maxLength: 400, unit: 'grapheme' }), load, { runs: 400, hangMs: 2000 })
})

t.test('config loader: samples with broken YAML', async (t) => {
  fuzz(t, 'parseConfig(broken YAML)', textMutation, load, { runs: 200, hangMs: 2000 })
})

t.test('config loader: samples with wrong values and keys', async (t) => {
  fuzz(t, 'parseConfig(wrong values)', structural, load, { runs: 200, hangMs: 2000 })
})
