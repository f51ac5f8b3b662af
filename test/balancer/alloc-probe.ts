/**
 * Measures young-generation allocation of picks, for no-alloc.test.ts. Run as its own
 * process without coverage: coverage instrumentation changes what V8 optimizes, and
 * unoptimized code boxes doubles, which is not what runs in production.
 * Prints one JSON line: { name: { collections, bytes } } for every algorithm and the pool.
 */
import { GCProfiler, getHeapSpaceStatistics } from 'node:v8'
import type { Backend } from '../../src/upstream/backend.js'
import type { Exclusion, PickContext } from '../../src/balancer/types.js'
import { balancerNames } from '../../src/balancer/registry.js'
import { create, makeBackends } from './helpers.js'
import { Registry } from 'prom-client'
import { parseConfig } from '../../src/config/load.js'
import { Pool } from '../../src/upstream/pool.js'
import { Metrics } from '../../src/metrics/metrics.js'

export const PICKS = 1_000_000

function newSpaceUsed(): number {
  return getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')?.space_used_size ?? 0
}

export interface Allocation {
  collections: number
  bytes: number
}

function youngAllocation(fn: () => void): Allocation {
  const profiler = new GCProfiler()
  const before = newSpaceUsed()
  profiler.start()
  fn()
  const after = newSpaceUsed()
  const result = profiler.stop()
  const collections = result.statistics.filter((s) => s.gcType === 'Scavenge' || s.gcType === 'MinorMarkSweep' || s.gcType === 'MinorMarkCompact').length
  return { collections, bytes: after - before }
}

/**
 * The steady state, once V8 has optimized the loop: up to eight measurements, the first
 * without a collection wins. Until the optimizing compiler (a background thread, slow on a
 * busy machine) has finished, the code that runs boxes doubles; that is warm-up, not the pick.
 */
function steadyAllocation(fn: () => void): Allocation {
  let m = youngAllocation(fn)
  for (let i = 0; i < 7 && (m.collections > 0 || m.bytes >= 256 * 1024); i++) m = youngAllocation(fn)
  return m
}

const ctxs: PickContext[] = Array.from({ length: 1024 }, (_, i) => ({ protocol: 'tcp', remoteAddress: `10.7.${i >> 8}.${i & 255}`, remotePort: 1024 + i }))
/** What the pool passes: skips full backends (none are). */
const poolLike: Exclusion = { has: (b: Backend) => b.full }
let sink: Backend | PickContext | undefined

const out: Record<string, Allocation> = {}
out['control: copying a small object per turn'] = youngAllocation(() => {
  for (let i = 0; i < PICKS; i++) sink = { ...(ctxs[i & 1023] as PickContext) }
})
for (const name of balancerNames()) {
  const bal = create(name, makeBackends(1000))
  for (let i = 0; i < 50_000; i++) sink = bal.pick(ctxs[i & 1023] as PickContext, poolLike) // warm up, build tables
  out[name] = steadyAllocation(() => {
    for (let i = 0; i < PICKS; i++) sink = bal.pick(ctxs[i & 1023] as PickContext, poolLike)
  })
}
const backends = Array.from({ length: 1000 }, (_, i) => `10.8.${i >> 8}.${i & 255}:80`).join(', ')
const cfg = parseConfig(`listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]\npools: { p: { algorithm: maglev, slow_start: 30s, backends: [${backends}] } }`, 'x.yaml', {})
const pool = new Pool(cfg.pools.get('p') as NonNullable<ReturnType<typeof cfg.pools.get>>, new Metrics(new Registry()))
for (let i = 0; i < 50_000; i++) sink = pool.pick(ctxs[i & 1023] as PickContext)
out['pool'] = steadyAllocation(() => {
  for (let i = 0; i < PICKS; i++) sink = pool.pick(ctxs[i & 1023] as PickContext)
})
if (sink === undefined) throw new Error('no pick made')
process.stdout.write(JSON.stringify(out) + '\n')
