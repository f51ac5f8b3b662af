import type { Backend } from '../upstream/backend.js'
import type { Exclusion } from './types.js'
import { RANDOM_RANGE, type RandomSource } from './rng.js'

/** Alias-method thresholds are kept as integers out of 2^30 (compared with 30 random bits). */
const COIN_RANGE = 2 ** 30

/**
 * The backends in rotation with O(1) weighted random draws (Vose's alias method). The alias
 * table is rebuilt once on the first draw after membership or weights change, in O(n);
 * a draw reads two typed arrays and allocates nothing. `data` holds per-backend state of the
 * algorithm using the set, kept beside its backend.
 */
export class WeightedSet<T = undefined> {
  readonly items: Backend[] = []
  readonly data: T[] = []
  private readonly index = new Map<Backend, number>()
  /** Per column: keep the column when 30 random bits fall below this, else take its alias. */
  private threshold = new Int32Array(0)
  private alias = new Int32Array(0)
  private dirty = false

  constructor(private readonly init: (b: Backend) => T) {}

  get size(): number {
    return this.items.length
  }

  has(b: Backend): boolean {
    return this.index.has(b)
  }

  /** Per-backend state of `b`, or undefined when it is not in the set. */
  dataOf(b: Backend): T | undefined {
    const i = this.index.get(b)
    return i === undefined ? undefined : this.data[i]
  }

  add(b: Backend): void {
    if (this.index.has(b)) return
    this.index.set(b, this.items.length)
    this.items.push(b)
    this.data.push(this.init(b))
    this.dirty = true
  }

  remove(b: Backend): void {
    const i = this.index.get(b)
    if (i === undefined) return
    const last = this.items.length - 1
    if (i !== last) {
      const moved = this.items[last] as Backend
      this.items[i] = moved
      this.data[i] = this.data[last] as T
      this.index.set(moved, i)
    }
    this.items.pop()
    this.data.pop()
    this.index.delete(b)
    this.dirty = true
  }

  /** A member's effective weight changed. */
  reweigh(b: Backend): void {
    if (this.index.has(b)) this.dirty = true
  }

  /** Index of a member drawn with probability proportional to its weight. Set must not be empty. */
  draw(random: RandomSource): number {
    if (this.dirty) this.build()
    const i = random.next() % this.items.length
    return (random.next() & (COIN_RANGE - 1)) < (this.threshold[i] as number) ? i : (this.alias[i] as number)
  }

  /**
   * A second draw, different from member `first` (set of 2 or more): a few weighted redraws,
   * then any other member uniformly, so two choices are always two backends.
   */
  drawOther(first: number, random: RandomSource): number {
    for (let k = 0; k < 3; k++) {
      const j = this.draw(random)
      if (j !== first) return j
    }
    const n = this.items.length
    return (first + 1 + (random.next() % (n - 1))) % n
  }

  /** Like `draw`, among members not in `avoid` (a linear scan, for the rare excluded case); -1 if none. */
  drawExcluding(avoid: Exclusion, random: RandomSource): number {
    const items = this.items
    let total = 0
    for (let i = 0; i < items.length; i++) {
      const b = items[i] as Backend
      if (!avoid.has(b)) total += b.effectiveWeight
    }
    if (total === 0) return -1
    let x = (random.next() / RANDOM_RANGE) * total
    let last = -1
    for (let i = 0; i < items.length; i++) {
      const b = items[i] as Backend
      if (avoid.has(b)) continue
      last = i
      x -= b.effectiveWeight
      if (x < 0) return i
    }
    return last
  }

  private build(): void {
    this.dirty = false
    const n = this.items.length
    const prob = new Float64Array(n)
    const alias = new Int32Array(n)
    let total = 0
    for (const b of this.items) total += b.effectiveWeight
    const scaled = new Float64Array(n)
    const small: number[] = []
    const large: number[] = []
    for (let i = 0; i < n; i++) {
      scaled[i] = ((this.items[i] as Backend).effectiveWeight * n) / total
      if ((scaled[i] as number) < 1) small.push(i)
      else large.push(i)
    }
    while (small.length > 0 && large.length > 0) {
      const s = small.pop() as number
      const l = large[large.length - 1] as number
      prob[s] = scaled[s] as number
      alias[s] = l
      scaled[l] = (scaled[l] as number) + (scaled[s] as number) - 1
      if ((scaled[l] as number) < 1) {
        large.pop()
        small.push(l)
      }
    }
    for (const i of large) prob[i] = 1
    for (const i of small) prob[i] = 1
    const threshold = new Int32Array(n)
    for (let i = 0; i < n; i++) threshold[i] = (prob[i] as number) >= 1 ? COIN_RANGE : Math.round((prob[i] as number) * COIN_RANGE)
    this.threshold = threshold
    this.alias = alias
  }
}
