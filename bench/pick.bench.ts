import { GCProfiler, getHeapSpaceStatistics } from 'node:v8'
import { cpus } from 'node:os'
import type { Backend } from '../src/upstream/backend.js'
import type { Balancer, BalancerFactory, Exclusion, PickContext } from '../src/balancer/types.js'
import { balancerNames, findBalancer } from '../src/balancer/registry.js'
import { parseConfig } from '../src/config/load.js'
import { HashRing } from '../src/balancer/hash-ring.js'
import { MaglevTable } from '../src/balancer/maglev-table.js'
import { DEFAULT_VNODES } from '../src/balancer/consistent-hash.js'
import { imbalance, makeBackends, movement, samplingFloor } from './hash-quality.js'

/**
 * Nanoseconds per pick for every algorithm at 3, 100 and 1000 backends, with proof that picks
 * do not allocate (young-generation collections and growth while timing), then the hashing
 * algorithms' measured quality. Prints markdown.
 *
 *   npm run bench:pick            (builds with tsconfig.bench.json, runs dist-bench/bench/pick.bench.js)
 */
const SIZES = [3, 100, 1000]
const BATCH = 200_000
const RUNS = 7

const ctxs: PickContext[] = Array.from({ length: 1024 }, (_, i) => ({ protocol: 'tcp', remoteAddress: `10.7.${i >> 8}.${i & 255}`, remotePort: 1024 + i }))
/** What the pool passes on every pick: skip full backends (none are here). */
const poolLike: Exclusion = { has: (b: Backend) => b.full }

function optionsFor(algorithm: string): unknown {
  const yaml = `listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]\npools: { p: { algorithm: ${algorithm}, backends: [10.0.0.1:80] } }`
  return parseConfig(yaml, 'bench.yaml', {}).pools.get('p')?.algorithmOptions
}

function newSpaceUsed(): number {
  return getHeapSpaceStatistics().find((s) => s.space_name === 'new_space')?.space_used_size ?? 0
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)] as number
}

interface PickResult {
  ns: number
  collections: number
  bytesPerPick: number
}

function timePicks(bal: Balancer): PickResult {
  let sink: Backend | undefined
  for (let i = 0; i < BATCH; i++) sink = bal.pick(ctxs[i & 1023] as PickContext, poolLike)
  const times: number[] = []
  const profiler = new GCProfiler()
  const before = newSpaceUsed()
  profiler.start()
  for (let r = 0; r < RUNS; r++) {
    const t0 = process.hrtime.bigint()
    for (let i = 0; i < BATCH; i++) sink = bal.pick(ctxs[i & 1023] as PickContext, poolLike)
    times.push(Number(process.hrtime.bigint() - t0) / BATCH)
  }
  const after = newSpaceUsed()
  const collections = profiler.stop().statistics.filter((s) => s.gcType === 'Scavenge' || s.gcType.startsWith('Minor')).length
  if (sink === undefined) throw new TypeError('a pick returned nothing')
  return { ns: median(times), collections, bytesPerPick: Math.max(0, after - before) / (BATCH * RUNS) }
}

function pickTable(): string[] {
  const lines = [
    `| algorithm | ${SIZES.map((n) => `${n} backends, ns/pick`).join(' | ')} | young GCs while timing | bytes/pick |`,
    `|---|${SIZES.map(() => '---:').join('|')}|---:|---:|`,
  ]
  for (const name of balancerNames()) {
    const f = findBalancer(name) as BalancerFactory
    const options = optionsFor(name)
    const cells: string[] = []
    let gcs = 0
    let bytes = 0
    for (const n of SIZES) {
      const r = timePicks(f.create(makeBackends(n), options))
      cells.push(r.ns.toFixed(1))
      gcs += r.collections
      bytes = Math.max(bytes, r.bytesPerPick)
    }
    lines.push(`| ${name} | ${cells.join(' | ')} | ${gcs} | ${bytes.toFixed(3)} |`)
  }
  // The smooth schedule parks a backend whose turn has not started; equal weights never do.
  for (const name of ['round-robin', 'least-connections']) {
    const f = findBalancer(name) as BalancerFactory
    const cells: string[] = []
    let gcs = 0
    let bytes = 0
    for (const n of SIZES) {
      const members = makeBackends(n)
      members.forEach((b, i) => (b.weight = 1 + ((i * 7919) % 100)))
      const r = timePicks(f.create(members, optionsFor(name)))
      cells.push(r.ns.toFixed(1))
      gcs += r.collections
      bytes = Math.max(bytes, r.bytesPerPick)
    }
    lines.push(`| ${name}, weights 1–100 | ${cells.join(' | ')} | ${gcs} | ${bytes.toFixed(3)} |`)
  }
  return lines
}

function qualityTables(): string[] {
  const lines = ['', `### Keys moved when 1 of N backends is removed (100,000 keys)`, '', '| algorithm | N | moved | 1/N | keys of remaining backends that moved |', '|---|---:|---:|---:|---:|']
  for (const alg of ['consistent-hash', 'maglev'] as const) {
    for (const n of [5, 10, 100]) {
      const m = movement(alg, n, 100_000)
      lines.push(`| ${alg} | ${n} | ${pct(m.moved)} | ${pct(m.ideal)} | ${pct(m.extra, 3)} |`)
    }
  }
  lines.push('', '### Imbalance: max/mean keys per backend (1,000,000 keys, equal weights)', '', '| algorithm | N = 10 | N = 100 | N = 1000 |', '|---|---:|---:|---:|')
  const rows: [string, (n: number) => number][] = [
    [`consistent-hash, ${DEFAULT_VNODES} vnodes (default)`, (n) => imbalance('consistent-hash', n, 1_000_000)],
    ['consistent-hash, 1000 vnodes', (n) => imbalance('consistent-hash', n, 1_000_000, { vnodes: 1000 })],
    ['maglev, M = 65537 (default)', (n) => imbalance('maglev', n, 1_000_000)],
    ['maglev, M = 655373', (n) => imbalance('maglev', n, 1_000_000, { tableSize: 655_373 })],
    ['keys thrown at random (sampling floor)', (n) => samplingFloor(n, 1_000_000)],
  ]
  for (const [label, f] of rows) lines.push(`| ${label} | ${[10, 100, 1000].map((n) => f(n).toFixed(3)).join(' | ')} |`)
  lines.push('', '### Build time of a table after a membership change (ms, median of 5)', '', '| structure | 3 | 100 | 1000 |', '|---|---:|---:|---:|')
  lines.push(`| ring, ${DEFAULT_VNODES} vnodes | ${[3, 100, 1000].map((n) => buildMs(() => ringBuild(n)).toFixed(2)).join(' | ')} |`)
  lines.push(`| maglev, M = 65537 | ${[3, 100, 1000].map((n) => buildMs(() => maglevBuild(n)).toFixed(2)).join(' | ')} |`)
  return lines
}

function ringBuild(n: number): () => void {
  const members = makeBackends(n)
  return () => {
    const ring = new HashRing()
    for (const b of members) ring.set(b, DEFAULT_VNODES)
    ring.prepare()
  }
}

function maglevBuild(n: number): () => void {
  const members = makeBackends(n)
  const table = new MaglevTable()
  return () => table.build(members)
}

function buildMs(make: () => () => void): number {
  const run = make()
  run()
  const times: number[] = []
  for (let i = 0; i < 5; i++) {
    const t0 = process.hrtime.bigint()
    run()
    times.push(Number(process.hrtime.bigint() - t0) / 1e6)
  }
  return median(times)
}

function pct(x: number, digits = 2): string {
  return `${(x * 100).toFixed(digits)}%`
}

const cpu = cpus()[0]?.model ?? 'unknown CPU'
console.log(`## Balancer picks — Node ${process.version}, ${cpu}, ${cpus().length} CPUs`)
console.log('')
console.log(`Median of ${RUNS} runs of ${BATCH.toLocaleString('en')} picks, 1024 distinct client addresses, with the pool's exclusion check.`)
console.log('')
for (const l of pickTable()) console.log(l)
for (const l of qualityTables()) console.log(l)
