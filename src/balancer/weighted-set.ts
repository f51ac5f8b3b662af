import type { Backend } from '../upstream/backend.js'
import type { Exclusion } from './types.js'

/** A source of uniform numbers in [0, 1); Math.random unless a test injects its own. */
export type Random = () => number

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
  private prob = new Float64Array(0)
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

  /** Index of a member drawn with probability proportional to its weight, for r in [0, 1). Set must not be empty. */
  draw(r: number): number {
    if (this.dirty) this.build()
    const x = r * this.items.length
    const i = Math.floor(x)
    return x - i < (this.prob[i] as number) ? i : (this.alias[i] as number)
  }

  /** Like `draw`, among members not in `avoid` (a linear scan, for the rare excluded case); -1 if none. */
  drawExcluding(avoid: Exclusion, r: number): number {
    const items = this.items
    let total = 0
    for (let i = 0; i < items.length; i++) {
      const b = items[i] as Backend
      if (!avoid.has(b)) total += b.effectiveWeight
    }
    if (total === 0) return -1
    let x = r * total
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
    this.prob = prob
    this.alias = alias
  }
}
