import t from 'tap'
import { GCProfiler, getHeapSpaceStatistics } from 'node:v8'
import type { Backend } from '../../src/upstream/backend.js'
import type { Exclusion, PickContext } from '../../src/balancer/types.js'
import { balancerNames } from '../../src/balancer/registry.js'
import { create, makeBackends } from './helpers.js'
import { Registry } from 'prom-client'
import { parseConfig } from '../../src/config/load.js'
import { Pool } from '../../src/upstream/pool.js'
import { Metrics } from '../../src/metrics/metrics.js'

/**
 * A pick must not allocate. Measured synchronously with V8's GC profiler and the young
 * generation's size: across a million picks there is no young-generation collection, and
 * the young generation grows by less than a byte per pick (one small object per pick would
 * be 16+ MB, and would force several collections).
 */
const PICKS = 1_000_000
/** Slack for what V8 itself may put in the young generation meanwhile (feedback, code). */
const SLACK_BYTES = 256 * 1024

function newSpaceUsed(): number {
  return getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')?.space_used_size ?? 0
}

function youngAllocation(fn: () => void): { collections: number; bytes: number } {
  const profiler = new GCProfiler()
  const before = newSpaceUsed()
  profiler.start()
  fn()
  const after = newSpaceUsed()
  const result = profiler.stop()
  const collections = result.statistics.filter((s) => s.gcType === 'Scavenge' || s.gcType === 'MinorMarkSweep' || s.gcType === 'MinorMarkCompact').length
  return { collections, bytes: after - before }
}

const ctxs: PickContext[] = Array.from({ length: 1024 }, (_, i) => ({ protocol: 'tcp', remoteAddress: `10.7.${i >> 8}.${i & 255}`, remotePort: 1024 + i }))
/** What the pool passes: skips full backends (none are). */
const poolLike: Exclusion = { has: (b: Backend) => b.full }

t.test('the measurement sees allocation when there is some', async (t) => {
  let sink: PickContext | undefined
  const m = youngAllocation(() => {
    for (let i = 0; i < PICKS; i++) sink = { ...(ctxs[i & 1023] as PickContext) }
  })
  t.ok(m.collections >= 1, `a loop copying a small object each turn: ${m.collections} young collections`)
  t.ok(sink !== undefined)
})

for (const name of balancerNames()) {
  t.test(`${name}: a million picks over 1000 backends allocate nothing`, async (t) => {
    const bal = create(name, makeBackends(1000))
    let sink: Backend | undefined
    for (let i = 0; i < 50_000; i++) sink = bal.pick(ctxs[i & 1023] as PickContext, poolLike) // warm up, build tables
    const m = youngAllocation(() => {
      for (let i = 0; i < PICKS; i++) sink = bal.pick(ctxs[i & 1023] as PickContext, poolLike)
    })
    t.equal(m.collections, 0, 'no young-generation collection during the picks')
    t.ok(m.bytes < SLACK_BYTES, `young generation grew by ${m.bytes} bytes over ${PICKS} picks`)
    t.ok(sink !== undefined)
  })
}

t.test('the pool around the algorithm (backup fallback, exclusion, slow-start check) allocates nothing either', async (t) => {
  const backends = Array.from({ length: 1000 }, (_, i) => `10.8.${i >> 8}.${i & 255}:80`).join(', ')
  const cfg = parseConfig(`listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]\npools: { p: { algorithm: maglev, slow_start: 30s, backends: [${backends}] } }`, 'x.yaml', {})
  const pool = new Pool(cfg.pools.get('p') as NonNullable<ReturnType<typeof cfg.pools.get>>, new Metrics(new Registry()))
  let sink: Backend | undefined
  for (let i = 0; i < 50_000; i++) sink = pool.pick(ctxs[i & 1023] as PickContext)
  const m = youngAllocation(() => {
    for (let i = 0; i < PICKS; i++) sink = pool.pick(ctxs[i & 1023] as PickContext)
  })
  t.equal(m.collections, 0, 'no young-generation collection during the picks')
  t.ok(m.bytes < SLACK_BYTES, `young generation grew by ${m.bytes} bytes over ${PICKS} picks`)
  t.ok(sink !== undefined)
})
