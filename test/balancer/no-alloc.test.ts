import t from 'tap'
import { execFileSync } from 'node:child_process'
import { join } from 'node:path'
import { balancerNames } from '../../src/balancer/registry.js'

/**
 * A pick must not allocate. Measured with V8's GC profiler and the young generation's size
 * across a million picks of the compiled code, in a separate process without coverage
 * (alloc-probe.mjs): no young-generation collection, and growth under a byte per pick (one
 * small object per pick would be 16+ MB and force several collections, as the control shows).
 */
const PICKS = 1_000_000
/** Slack for what V8 itself may put in the young generation meanwhile (feedback, code). */
const SLACK_BYTES = 256 * 1024

const here = import.meta.dirname ?? new URL('.', import.meta.url).pathname
// A plain process: none of the test runner's coverage or loader settings.
const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(TAP_|_TAPJS_|NODE_OPTIONS$|NODE_V8_COVERAGE$)/.test(k)))
// Coverage instrumentation (npm run coverage) reaches child processes too and changes what
// V8 optimizes: unoptimized code boxes doubles. The property is about the code that runs in
// production, so it is measured only in runs without coverage (npm test).
const covered = process.env._TAPJS_PROCESSINFO_COVERAGE_ === '1'
const out = covered ? '{}' : execFileSync(process.execPath, ['--expose-gc', join(here, 'alloc-probe.mjs')], { env, encoding: 'utf8', timeout: 120_000 })
interface Allocation {
  collections: number
  bytes: number
}
const results = JSON.parse(out.trim().split('\n').at(-1) ?? '{}') as Record<string, Allocation>

if (covered) t.skip('allocation is not measured under coverage instrumentation; npm test measures it', () => {})

if (!covered) t.test('the measurement sees allocation when there is some', async (t) => {
  const m = results['control: copying a small object per turn']
  t.ok(m !== undefined && m.collections >= 1, `a loop copying a small object each turn: ${m?.collections} young collections`)
})

for (const name of covered ? [] : [...balancerNames(), 'pool']) {
  const what = name === 'pool' ? 'the pool around the algorithm (backup fallback, exclusion, slow-start check)' : name
  t.test(`${what}: a million picks over 1000 backends allocate nothing`, async (t) => {
    const m = results[name]
    t.ok(m !== undefined, 'measured')
    t.equal(m?.collections, 0, 'no young-generation collection during the picks')
    t.ok((m?.bytes ?? Infinity) < SLACK_BYTES, `young generation grew by ${m?.bytes} bytes over ${PICKS} picks`)
  })
}
