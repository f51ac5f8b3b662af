import type { Backend } from '../upstream/backend.js'
import type { ConfigReader, MapView } from '../config/reader.js'
import type { Balancer, BalancerFactory, Exclusion, PickContext } from './types.js'
import { HashRing } from './hash-ring.js'
import { keyHash, parseHashKey, type HashKey } from './hash-key.js'
import { listedWeightTotal } from './option-readers.js'

export interface ConsistentHashOptions {
  key: HashKey
  /** Ring points per unit of weight. */
  vnodes: number
  /** Bounded load: no backend takes more than factor × its weighted share of the active connections. 0 = off. */
  balanceFactor: number
}

export const DEFAULT_VNODES = 160
export const MAX_VNODES = 10_000
export const MAX_BALANCE_FACTOR = 10
/** Above this many points a ring costs more memory and rebuild time than it buys balance. */
export const MAX_RING_POINTS = 4_000_000

/**
 * Consistent hashing on a ring (Karger et al.), keyed by the client's address, address and
 * port, or SNI. Each backend owns `vnodes × weight` points placed by hashing its id, so a
 * weight-90 and a weight-10 backend split keys 90/10, and taking one of N backends out moves
 * only the keys it held (≈ 1/N). With `hash_balance_factor` set, a key whose backend already
 * holds more than factor × its share of the open connections walks on round the ring to the
 * next backend under the bound (consistent hashing with bounded loads, Mirrokni et al.).
 * A pick is a binary search over a typed array: O(log points), no allocation; the ring is
 * rebuilt on the first pick after membership or weights change.
 */
export class ConsistentHash implements Balancer {
  readonly ring = new HashRing()
  private readonly members = new Set<Backend>()
  private weightTotal = 0
  private activeTotal = 0
  /** Per-pick marks of backends already looked at (by ring slot), so a walk ends after one lap of backends. */
  private seen = new Uint32Array(0)
  private epoch = 0

  constructor(members: readonly Backend[], private readonly options: ConsistentHashOptions) {
    for (const b of members) this.onBackendUp(b)
  }

  pick(ctx: PickContext, avoid?: Exclusion): Backend | undefined {
    const ring = this.ring
    ring.prepare()
    if (ring.size === 0) return undefined
    const start = ring.find(keyHash(ctx, this.options.key))
    const first = ring.ownerAt(start)
    const bounded = this.options.balanceFactor > 0
    if ((avoid === undefined || !avoid.has(first)) && (!bounded || this.underBound(first))) return first
    return this.walk(start, avoid, bounded)
  }

  /** Goes round the ring from `start` for the first backend not excluded (and under the bound). */
  private walk(start: number, avoid: Exclusion | undefined, bounded: boolean): Backend | undefined {
    const ring = this.ring
    if (this.seen.length < ring.backendCount) this.seen = new Uint32Array(ring.backendCount * 2)
    const seen = this.seen
    const epoch = (this.epoch = (this.epoch + 1) >>> 0 || 1)
    const n = ring.size
    let distinct = 0
    let fallback: Backend | undefined
    const backends = ring.backendCount
    for (let k = 0, i = start; k < n && distinct < backends; k++, i = i + 1 === n ? 0 : i + 1) {
      const rank = ring.rankAt(i)
      if (seen[rank] === epoch) continue
      seen[rank] = epoch
      distinct++
      const b = ring.ownerAt(i)
      if (avoid !== undefined && avoid.has(b)) continue
      if (!bounded || this.underBound(b)) return b
      fallback ??= b
    }
    // Everyone is at the bound (only possible when excluded backends hold connections): plain hashing.
    return fallback
  }

  private underBound(b: Backend): boolean {
    const share = ((this.activeTotal + 1) * b.effectiveWeight) / this.weightTotal
    return b.active < Math.ceil(this.options.balanceFactor * share)
  }

  onBackendUp(b: Backend): void {
    if (this.members.has(b)) return
    this.members.add(b)
    this.weightTotal += b.effectiveWeight
    this.activeTotal += b.active
    this.ring.set(b, this.pointsFor(b))
  }

  onBackendDown(b: Backend): void {
    if (!this.members.delete(b)) return
    this.ring.set(b, 0)
    this.activeTotal -= b.active
    this.reweigh()
  }

  onWeightChange(b: Backend): void {
    if (!this.members.has(b)) return
    this.ring.set(b, this.pointsFor(b))
    this.reweigh()
  }

  onConnectionOpen(b: Backend): void {
    if (this.members.has(b)) this.activeTotal++
  }

  onConnectionClose(b: Backend): void {
    if (this.members.has(b)) this.activeTotal--
  }

  private pointsFor(b: Backend): number {
    return Math.max(1, Math.round(this.options.vnodes * b.effectiveWeight))
  }

  private reweigh(): void {
    let w = 0
    for (const m of this.members) w += m.effectiveWeight
    this.weightTotal = w
  }
}

export const consistentHashFactory: BalancerFactory<ConsistentHashOptions> = {
  name: 'consistent-hash',
  needs: ['address'],
  weighted: true,
  optionKeys: ['hash_key', 'hash_vnodes', 'hash_balance_factor'],
  parseOptions(pool, reader, context) {
    const key = parseHashKey(pool, reader, context) ?? 'source-ip'
    const vnodes = pool.has('hash_vnodes') ? (reader.int(pool.get('hash_vnodes'), `${context} hash_vnodes`, 1, MAX_VNODES) ?? DEFAULT_VNODES) : DEFAULT_VNODES
    const { total } = listedWeightTotal(pool, 1)
    if (vnodes * total > MAX_RING_POINTS) {
      const at = pool.has('hash_vnodes') ? pool.get('hash_vnodes') : pool.get('backends')
      reader.report(
        at,
        `${context}: hash_vnodes ${vnodes} × total weight ${total} makes a ring of ${vnodes * total} points, more than ${MAX_RING_POINTS}; lower hash_vnodes or the weights (only their ratios matter)`,
      )
    }
    return { key, vnodes, balanceFactor: readBalanceFactor(pool, reader, context) }
  },
  create: (members, options) => new ConsistentHash(members, options),
}

/** `hash_balance_factor`: a multiple of the average load (0 when absent or invalid). */
function readBalanceFactor(pool: MapView, reader: ConfigReader, context: string): number {
  if (!pool.has('hash_balance_factor')) return 0
  const at = pool.get('hash_balance_factor')
  const f = reader.decimal(at, `${context} hash_balance_factor`, 1, 1000)
  if (f === undefined) return 0
  if (f > MAX_BALANCE_FACTOR) {
    const haproxy = f >= 100 ? ` (HAProxy's hash-balance-factor ${f} is written ${f / 100} here)` : ''
    reader.report(at, `${context} hash_balance_factor is ${f}; it is a multiple of the average load from 1 to ${MAX_BALANCE_FACTOR}, such as 1.25${haproxy}`)
    return 0
  }
  return f
}
