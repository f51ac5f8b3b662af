import { Backend } from '../src/upstream/backend.js'
import type { Balancer, PickContext } from '../src/balancer/types.js'
import { ConsistentHash, DEFAULT_VNODES } from '../src/balancer/consistent-hash.js'
import { Maglev } from '../src/balancer/maglev.js'
import { DEFAULT_TABLE_SIZE } from '../src/balancer/maglev-table.js'
import { Rng } from '../src/balancer/rng.js'

/**
 * Measurements of the hashing algorithms' quality, shared by bench/pick.bench.ts (which
 * prints them) and test/balancer/hash-quality.test.ts (which asserts on them).
 */
export type HashAlgorithm = 'consistent-hash' | 'maglev'

export interface HashParams {
  vnodes?: number
  tableSize?: number
}

export function makeBackend(id: string, weight = 1): Backend {
  const [host, port] = [id.slice(0, id.lastIndexOf(':')), Number(id.slice(id.lastIndexOf(':') + 1))]
  return new Backend({ address: id, host, port, weight, backup: false, maxConnections: 0 })
}

/** `n` backends 10.1.x.y:5432, in id order, each with its list `position` set as a pool would. */
export function makeBackends(n: number, weight = 1): Backend[] {
  return Array.from({ length: n }, (_, i) => {
    const b = makeBackend(`10.1.${(i >> 8) & 255}.${i & 255}:5432`, weight)
    b.position = i
    return b
  })
}

export function hashBalancer(alg: HashAlgorithm, members: readonly Backend[], p: HashParams = {}): Balancer {
  return alg === 'consistent-hash'
    ? new ConsistentHash(members, { key: 'source-ip', vnodes: p.vnodes ?? DEFAULT_VNODES, balanceFactor: 0 })
    : new Maglev(members, { key: 'source-ip', tableSize: p.tableSize ?? DEFAULT_TABLE_SIZE })
}

/** A reusable context whose address is the i-th client (192.x.y.z). */
export function clientCtx(): PickContext & { set(i: number): PickContext } {
  const ctx = {
    protocol: 'tcp' as const,
    remoteAddress: '',
    remotePort: 40000,
    set(i: number): PickContext {
      ctx.remoteAddress = `192.${(i >>> 16) & 255}.${(i >>> 8) & 255}.${i & 255}`
      return ctx
    },
  }
  return ctx
}

/** Index (in `members`) of the backend each of `keys` clients maps to. */
export function assign(balancer: Balancer, members: readonly Backend[], keys: number): Int32Array {
  const index = new Map(members.map((b, i) => [b, i]))
  const out = new Int32Array(keys)
  const ctx = clientCtx()
  for (let k = 0; k < keys; k++) {
    const b = balancer.pick(ctx.set(k))
    out[k] = b === undefined ? -1 : (index.get(b) ?? -1)
  }
  return out
}

export interface Movement {
  n: number
  keys: number
  /** Share of all keys that changed backend when one of n backends was removed. */
  moved: number
  /** 1/n: the share the removed backend held in theory. */
  ideal: number
  /** Share of the keys whose backend stayed that moved anyway. */
  extra: number
}

/** Removes one of `n` backends and reports how many of `keys` clients change backend. */
export function movement(alg: HashAlgorithm, n: number, keys: number, p: HashParams = {}): Movement {
  const members = makeBackends(n)
  const bal = hashBalancer(alg, members, p)
  const before = assign(bal, members, keys)
  const gone = Math.floor(n / 2)
  bal.onBackendDown(members[gone] as Backend)
  const after = assign(bal, members, keys)
  let moved = 0
  let stayedTotal = 0
  let stayedMoved = 0
  for (let k = 0; k < keys; k++) {
    if (before[k] !== after[k]) moved++
    if (before[k] !== gone) {
      stayedTotal++
      if (before[k] !== after[k]) stayedMoved++
    }
  }
  return { n, keys, moved: moved / keys, ideal: 1 / n, extra: stayedMoved / stayedTotal }
}

/** Max over mean of the keys per backend (1 = perfect), for `keys` clients over `n` equal backends. */
export function imbalance(alg: HashAlgorithm, n: number, keys: number, p: HashParams = {}): number {
  const members = makeBackends(n)
  const counts = new Float64Array(n)
  for (const i of assign(hashBalancer(alg, members, p), members, keys)) counts[i] = (counts[i] as number) + 1
  let max = 0
  for (const c of counts) max = Math.max(max, c)
  return max / (keys / n)
}

/**
 * The same max/mean for keys thrown uniformly at random: the sampling floor that no table can
 * beat with this many keys (at N = 1000, 1M keys are only 1000 per backend).
 */
export function samplingFloor(n: number, keys: number, seed = 1): number {
  const rng = new Rng(seed)
  const counts = new Float64Array(n)
  for (let k = 0; k < keys; k++) {
    const i = rng.next() % n
    counts[i] = (counts[i] as number) + 1
  }
  let max = 0
  for (const c of counts) max = Math.max(max, c)
  return max / (keys / n)
}
