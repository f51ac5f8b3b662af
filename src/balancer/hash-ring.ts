import type { Backend } from '../upstream/backend.js'
import { hashInt, hashString } from './murmur3.js'

/** Seed of ring points; independent of the seed that hashes connection keys. */
const RING_SEED = 0x2f6b1d3d
/** Ring points are sorted as one number: hash × 2^21 + the owner's rank by id (< 2^53). */
const RANK_SPACE = 2 ** 21

/**
 * A consistent-hash ring: each backend owns `count` points at hash(id, i), i = 0…count-1,
 * kept sorted in two typed arrays (point hash, owner). A key belongs to the first point at or
 * after its hash, wrapping around. Points depend only on the backend's id and ties are broken
 * by id, so the ring is the same whatever order backends join in, in every sluice process.
 * Growing a backend's count adds points and keeps the ones it had, so slow start only ever
 * pulls keys towards the backend that ramps.
 *
 * Changes are recorded by `set` and applied by `prepare` (once, however many came in a
 * batch, e.g. a whole pool at start-up): a rebuild sorts all points, O(points log points).
 */
export class HashRing {
  private hashes = new Uint32Array(0)
  private owners = new Int32Array(0)
  /** Backends in id order; `owners` holds indexes into it. */
  private ranked: Backend[] = []
  private readonly counts = new Map<Backend, number>()
  private dirty = false

  /** Gives `backend` exactly `count` points (0 takes it off the ring). Applied by `prepare`. */
  set(backend: Backend, count: number): void {
    if ((this.counts.get(backend) ?? 0) === count) return
    if (count > 0) this.counts.set(backend, count)
    else this.counts.delete(backend)
    this.dirty = true
  }

  /** How many points `backend` owns (0 when it is not on the ring). */
  pointsOf(backend: Backend): number {
    return this.counts.get(backend) ?? 0
  }

  /** Applies pending changes. Call before `size`, `find` and the accessors. */
  prepare(): void {
    if (this.dirty) this.build()
  }

  /** Number of points on the ring. */
  get size(): number {
    return this.hashes.length
  }

  /** Number of backends on the ring; `rankAt` is below it. */
  get backendCount(): number {
    return this.ranked.length
  }

  /** Index of the point that owns hash `h`: the first at or after it, wrapping. Ring must not be empty. */
  find(h: number): number {
    const hashes = this.hashes
    let lo = 0
    let hi = hashes.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if ((hashes[mid] as number) < h) lo = mid + 1
      else hi = mid
    }
    return lo === hashes.length ? 0 : lo
  }

  /** The backend owning point `i`. */
  ownerAt(i: number): Backend {
    return this.ranked[this.owners[i] as number] as Backend
  }

  /** The rank (by id) of point `i`'s owner: a small integer per backend, for per-pick marks. */
  rankAt(i: number): number {
    return this.owners[i] as number
  }

  /** The hash of point `i` (for tests and measurements). */
  hashAt(i: number): number {
    return this.hashes[i] as number
  }

  private build(): void {
    this.dirty = false
    const ranked = [...this.counts.keys()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
    if (ranked.length >= RANK_SPACE) throw new TypeError(`a hash ring holds at most ${RANK_SPACE - 1} backends`)
    let total = 0
    for (const b of ranked) total += this.counts.get(b) ?? 0
    const keys = new Float64Array(total)
    let k = 0
    for (let r = 0; r < ranked.length; r++) {
      const b = ranked[r] as Backend
      const base = hashString(b.id, RING_SEED)
      const count = this.counts.get(b) ?? 0
      for (let i = 0; i < count; i++) keys[k++] = hashInt(i, base) * RANK_SPACE + r
    }
    keys.sort()
    const hashes = new Uint32Array(total)
    const owners = new Int32Array(total)
    for (let i = 0; i < total; i++) {
      const key = keys[i] as number
      const rank = key % RANK_SPACE
      owners[i] = rank
      hashes[i] = (key - rank) / RANK_SPACE
    }
    this.ranked = ranked
    this.hashes = hashes
    this.owners = owners
  }
}
