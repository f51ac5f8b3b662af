import { Registry } from 'prom-client'
import { parseConfig } from '../src/config/load.js'
import type { PoolConfig } from '../src/config/types.js'
import type { PickContext } from '../src/balancer/types.js'
import { hashString } from '../src/balancer/murmur3.js'
import { Metrics } from '../src/metrics/metrics.js'
import type { Backend } from '../src/upstream/backend.js'
import { Pool } from '../src/upstream/pool.js'

/**
 * Which share of client flows move to another backend when a sluice instance or a backend
 * fails, for several sluice instances behind ECMP (or keepalived) sharing one membership.
 * A simulation with the real balancers and pools (no sockets): CLIENTS clients, each with
 * one long-lived connection, spread over INSTANCES instances by the router's flow hash
 * (rendezvous hashing, so a failed instance's flows alone move, as resilient ECMP does),
 * each instance with its own pool of BACKENDS backends and its own connection counts (as
 * separate processes have).
 *
 * - "none": nothing fails (the baseline: how sticky the algorithm is by itself).
 * - "backend fails": one backend leaves every instance's pool; its clients reconnect.
 * - "instance fails": one instance stops; its clients' connections are reset and the
 *   router sends their reconnects to the other instances.
 *
 * Then every client's next connection is picked, and compared with where its first went:
 * "moved" is the share of clients whose backend changed (the ones the failure forces, plus
 * any others the algorithm moves). Prints a markdown table (docs/scaling.md has it).
 *
 *   npx tsc -p tsconfig.bench.json && node dist-bench/bench/flow-moves.js
 */
const CLIENTS = 30_000
const BACKENDS = 10
const INSTANCES = 3

const ALGORITHMS: { label: string; yaml: string }[] = [
  { label: 'maglev', yaml: 'algorithm: maglev' },
  { label: 'consistent-hash', yaml: 'algorithm: consistent-hash' },
  { label: 'consistent-hash, hash_balance_factor 1.25', yaml: 'algorithm: consistent-hash, hash_balance_factor: 1.25' },
  { label: 'consistent-hash, hash_balance_factor 1.05', yaml: 'algorithm: consistent-hash, hash_balance_factor: 1.05' },
  { label: 'round-robin', yaml: 'algorithm: round-robin' },
]

function poolConfig(algorithm: string): PoolConfig {
  const backends = Array.from({ length: BACKENDS }, (_, i) => `"10.2.0.${i + 1}:5432"`).join(', ')
  const yaml = `listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]\npools: { p: { ${algorithm}, backends: [${backends}] } }`
  return parseConfig(yaml, 'bench.yaml', {}).pools.get('p')!
}

function ctxOf(c: number): PickContext {
  return { protocol: 'tcp', remoteAddress: `172.${16 + ((c >>> 16) & 15)}.${(c >>> 8) & 255}.${c & 255}`, remotePort: 40_000 + (c % 20_000) }
}

/** The router's choice among the instances still up: highest random weight of (flow, instance). */
function route(c: number, up: readonly number[]): number {
  let best = -1
  let bestScore = -1
  for (const i of up) {
    const s = hashString(`${c}/${i}`, 0x5eed) >>> 0
    if (s > bestScore) {
      bestScore = s
      best = i
    }
  }
  return best
}

interface Outcome {
  moved: number
  forced: number
  reset: number
}

function simulate(algorithm: string, failure: 'none' | 'backend' | 'instance'): Outcome {
  const cfg = poolConfig(algorithm)
  const pools = Array.from({ length: INSTANCES }, () => new Pool(cfg, new Metrics(new Registry(), () => {}, false), undefined, 'data'))
  const ctxs = Array.from({ length: CLIENTS }, (_, c) => ctxOf(c))
  let up = pools.map((_, i) => i)
  const at = new Int32Array(CLIENTS)
  const conn: (Backend | undefined)[] = new Array<Backend | undefined>(CLIENTS)
  const first: string[] = new Array<string>(CLIENTS)
  const open = (c: number): Backend => {
    const i = route(c, up)
    const pool = pools[i]!
    const b = pool.pick(ctxs[c]!)!
    pool.acquire(b)
    at[c] = i
    conn[c] = b
    return b
  }
  for (let c = 0; c < CLIENTS; c++) first[c] = open(c).id

  let forced = 0
  let reset = 0
  if (failure === 'backend') {
    const gone = first[0]!
    const next = { ...cfg, backends: cfg.backends.filter((b) => b.address !== gone) }
    for (const p of pools) p.update(next)
    for (let c = 0; c < CLIENTS; c++) {
      if (conn[c]!.id !== gone) continue
      pools[at[c]!]!.release(conn[c]!)
      forced++
      reset++
      open(c)
    }
  } else if (failure === 'instance') {
    const failed = 0
    up = up.filter((i) => i !== failed)
    for (let c = 0; c < CLIENTS; c++) {
      if (at[c] !== failed) continue
      pools[failed]!.release(conn[c]!)
      reset++
      open(c)
    }
  }
  // Each client's next connection, with its first still open (as a client with a pool of connections would).
  let moved = 0
  for (let c = 0; c < CLIENTS; c++) {
    const pool = pools[route(c, up)]!
    const b = pool.pick(ctxs[c]!)
    if (b?.id !== first[c]) moved++
  }
  return { moved, forced, reset }
}

const pct = (n: number): string => `${((100 * n) / CLIENTS).toFixed(1)}%`
const lines: string[] = []
lines.push(`${CLIENTS.toLocaleString('en')} clients, ${BACKENDS} backends, ${INSTANCES} sluice instances behind a flow-hashing router.`)
lines.push('')
lines.push('| algorithm | failure | connections reset | clients whose next connection goes to another backend | of which forced (their backend is gone) |')
lines.push('|---|---|---:|---:|---:|')
for (const a of ALGORITHMS) {
  for (const failure of ['none', 'backend', 'instance'] as const) {
    const r = simulate(a.yaml, failure)
    const what = failure === 'none' ? 'none' : `one ${failure} of ${failure === 'backend' ? BACKENDS : INSTANCES}`
    lines.push(`| ${a.label} | ${what} | ${pct(r.reset)} | ${pct(r.moved)} | ${pct(r.forced)} |`)
  }
}
process.stdout.write(`${lines.join('\n')}\n`)
