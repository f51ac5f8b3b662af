// Measures young-generation allocation of picks, for no-alloc.test.ts, on the compiled code
// in dist/ (what production runs; `npm test` builds it first), in a process of its own
// without coverage: instrumentation and the TypeScript loader change what V8 optimizes.
// Prints one JSON line: { name: { collections, bytes } } for every algorithm and the pool.
import { GCProfiler, getHeapSpaceStatistics } from 'node:v8'
import { Registry } from 'prom-client'
import { balancerNames, findBalancer } from '../../dist/balancer/registry.js'
import { Backend } from '../../dist/upstream/backend.js'
import { parseConfig } from '../../dist/config/load.js'
import { Pool } from '../../dist/upstream/pool.js'
import { Metrics } from '../../dist/metrics/metrics.js'

const PICKS = 1_000_000
const SLACK_BYTES = 256 * 1024

const newSpaceUsed = () => getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')?.space_used_size ?? 0

function youngAllocation(fn) {
  // Start from an empty young generation (the child runs with --expose-gc), so a collection
  // during the measurement can only come from what the measured loop allocates.
  globalThis.gc?.()
  const profiler = new GCProfiler()
  const before = newSpaceUsed()
  profiler.start()
  fn()
  const after = newSpaceUsed()
  const result = profiler.stop()
  const collections = result.statistics.filter((s) => s.gcType === 'Scavenge' || s.gcType === 'MinorMarkSweep' || s.gcType === 'MinorMarkCompact').length
  return { collections, bytes: after - before }
}

// The steady state, once V8 has optimized the loop: up to eight measurements, the first
// without a collection wins. Until the optimizing compiler (a background thread, slow on a
// busy machine) has finished, the code that runs boxes doubles; that is warm-up, not the pick.
function steadyAllocation(fn) {
  let m = youngAllocation(fn)
  for (let i = 0; i < 7 && (m.collections > 0 || m.bytes >= SLACK_BYTES); i++) m = youngAllocation(fn)
  return m
}

function pool(algorithm, extra = '') {
  const backends = Array.from({ length: 1000 }, (_, i) => `10.8.${i >> 8}.${i & 255}:80`).join(', ')
  const cfg = parseConfig(`listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]\npools: { p: { algorithm: ${algorithm}, ${extra} backends: [${backends}] } }`, 'x.yaml', {})
  return cfg.pools.get('p')
}

const ctxs = Array.from({ length: 1024 }, (_, i) => ({ protocol: 'tcp', remoteAddress: `10.7.${i >> 8}.${i & 255}`, remotePort: 1024 + i }))
/** What the pool passes: skips full backends (none are). */
const poolLike = { has: (b) => b.full }
let sink

const out = {}
out['control: copying a small object per turn'] = youngAllocation(() => {
  for (let i = 0; i < PICKS; i++) sink = { ...ctxs[i & 1023] }
})
for (const name of balancerNames()) {
  const pc = pool(name)
  const members = pc.backends.map((b, i) => Object.assign(new Backend(b), { position: i }))
  const bal = findBalancer(name).create(members, pc.algorithmOptions)
  for (let i = 0; i < 50_000; i++) sink = bal.pick(ctxs[i & 1023], poolLike) // warm up, build tables
  out[name] = steadyAllocation(() => {
    for (let i = 0; i < PICKS; i++) sink = bal.pick(ctxs[i & 1023], poolLike)
  })
}
const p = new Pool(pool('maglev', 'slow_start: 30s,'), new Metrics(new Registry()))
for (let i = 0; i < 50_000; i++) sink = p.pick(ctxs[i & 1023])
out['pool'] = steadyAllocation(() => {
  for (let i = 0; i < PICKS; i++) sink = p.pick(ctxs[i & 1023])
})
if (sink === undefined) throw new Error('no pick made')
process.stdout.write(JSON.stringify(out) + '\n')
