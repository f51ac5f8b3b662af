import fc from 'fast-check'
import type { Test } from 'tap'
import { SluiceError } from '../../src/errors.js'

/**
 * Property-based fuzzing with fast-check, replayable: every run prints its seed, and
 * SLUICE_FUZZ_SEED=N replays it (SLUICE_FUZZ_RUNS=N runs more or fewer cases; a failure also
 * prints fast-check's `path` to shrink straight to the failing case with SLUICE_FUZZ_PATH).
 * The default run count keeps each target to about a second inside `npm test`.
 */
export interface FuzzSettings {
  seed: number
  numRuns: number
  path?: string
}

export function fuzzSettings(defaultRuns: number): FuzzSettings {
  const env = process.env.SLUICE_FUZZ_SEED
  const seed = env !== undefined && env !== '' ? Number(env) : (Date.now() ^ (Math.random() * 0x100000000)) | 0
  if (!Number.isInteger(seed)) throw new TypeError(`SLUICE_FUZZ_SEED must be an integer, not ${env}`)
  const runs = process.env.SLUICE_FUZZ_RUNS
  const numRuns = runs !== undefined && runs !== '' ? Number(runs) : defaultRuns
  const path = process.env.SLUICE_FUZZ_PATH
  return { seed, numRuns, ...(path !== undefined && path !== '' ? { path } : {}) }
}

/** The longest a single call may take before it counts as a hang (a target may allow more). */
export const HANG_MS = 1000

/**
 * Runs `body` on `numRuns` inputs from `arb`: it must return, or throw a SluiceError (a coded
 * error), within HANG_MS. Anything else (TypeError, RangeError, a hang) fails the test with
 * the seed and the shrunk input. Heap growth over the whole run is reported and bounded.
 */
export function fuzz<T>(t: Test, name: string, arb: fc.Arbitrary<T>, body: (input: T) => void, opts: { runs?: number; hangMs?: number } = {}): void {
  const settings = fuzzSettings(opts.runs ?? 2000)
  const hangMs = opts.hangMs ?? HANG_MS
  t.comment(`fuzz ${name}: seed ${settings.seed}, ${settings.numRuns} runs (replay: SLUICE_FUZZ_SEED=${settings.seed})`)
  const heapBefore = process.memoryUsage().heapUsed
  let slowest = 0
  let coded = 0
  const property = fc.property(arb, (input) => {
    const started = performance.now()
    try {
      body(input)
    } catch (err) {
      if (!(err instanceof SluiceError)) throw err
      coded++
    } finally {
      const took = performance.now() - started
      slowest = Math.max(slowest, took)
      if (took > hangMs) throw new Error(`took ${took.toFixed(0)} ms (a hang: more than ${hangMs} ms)`)
    }
  })
  const result = fc.check(property, settings)
  if (result.failed) {
    const thrown = result.errorInstance instanceof Error ? `${result.errorInstance.name}: ${result.errorInstance.message}\n${result.errorInstance.stack ?? ''}` : String(result.errorInstance)
    t.fail(`${name}: threw ${thrown}\n${fc.defaultReportMessage(result) ?? 'failed'}\nreplay: SLUICE_FUZZ_SEED=${settings.seed} SLUICE_FUZZ_PATH=${result.counterexamplePath ?? ''}`)
    return
  }
  const grown = process.memoryUsage().heapUsed - heapBefore
  t.ok(grown < 64 * 1024 * 1024, `${name}: ${result.numRuns} inputs, ${coded} coded errors, slowest ${slowest.toFixed(1)} ms, heap ${(grown / 1048576).toFixed(1)} MiB`)
}

/** Bytes built from a valid sample: cut short, bytes replaced, bytes inserted, or random. */
export function mutated(samples: readonly Buffer[], maxExtra = 64): fc.Arbitrary<Buffer> {
  const sample = fc.constantFrom(...samples)
  const patch = fc.record({ at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) })
  const patched = fc.tuple(sample, fc.array(patch, { maxLength: 8 })).map(([s, ps]) => {
    const b = Buffer.from(s)
    for (const p of ps) if (b.length > 0) b[p.at % b.length] = p.byte
    return b
  })
  const cut = fc.tuple(sample, fc.nat()).map(([s, n]) => s.subarray(0, s.length === 0 ? 0 : n % (s.length + 1)))
  const spliced = fc.tuple(sample, fc.nat(), fc.uint8Array({ maxLength: maxExtra })).map(([s, at, extra]) => {
    const i = s.length === 0 ? 0 : at % s.length
    return Buffer.concat([s.subarray(0, i), extra, s.subarray(i)])
  })
  const random = fc.uint8Array({ maxLength: 512 }).map((a) => Buffer.from(a))
  return fc.oneof(patched, cut, spliced, random)
}
