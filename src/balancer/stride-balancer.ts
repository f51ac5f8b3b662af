import type { Backend } from '../upstream/backend.js'
import type { Balancer, Exclusion, PickContext } from './types.js'
import { IndexedHeap, type HeapNode } from './indexed-heap.js'

/**
 * A backend's place in the schedule. Its next turn covers [start, finish) on the shared virtual
 * clock, one stride (1 / weight) long, and may be taken once the clock has reached `start`.
 * `start` and `finish` are `base + turns / weight` and `base + (turns + 1) / weight`, divided
 * afresh each turn rather than summed, so turns of integer weights that coincide in exact
 * arithmetic coincide in floating point too and tie-break the same way every round.
 */
export class StrideSlot implements HeapNode {
  pos = -1
  turns = 0
  start = 0
  finish = 0
  /** Which heap holds it: `ready`, or `waiting` (parked: found first before its turn had started). */
  ready = true

  constructor(
    readonly backend: Backend,
    /** The effective weight its turns are counted in (kept by `onWeightChange`). */
    public weight: number,
    public base: number,
    /** Join order: the last tie-break, so equal backends go in list order. */
    readonly order: number,
  ) {}
}

/** Among slots whose turn has started: the turn that ends first, then join order. */
export function endsFirst(a: StrideSlot, b: StrideSlot): boolean {
  return a.finish < b.finish || (a.finish === b.finish && a.order < b.order)
}

/** Among slots still waiting: the turn that starts first, then join order. */
export function startsFirst(a: StrideSlot, b: StrideSlot): boolean {
  return a.start < b.start || (a.start === b.start && a.order < b.order)
}

/** The heaps of plain round-robin. */
export class EndsFirstHeap extends IndexedHeap<StrideSlot> {
  protected less(a: StrideSlot, b: StrideSlot): boolean {
    return endsFirst(a, b)
  }
}

export class StartsFirstHeap extends IndexedHeap<StrideSlot> {
  protected less(a: StrideSlot, b: StrideSlot): boolean {
    return startsFirst(a, b)
  }
}

/**
 * Smooth weighted scheduling shared by round-robin and least-connections. A virtual clock
 * moves 1 / (total weight) per pick; each backend's turns lie one stride apart on it; a pick
 * takes, among the backends whose turn has started, the one whose turn ends first (WF²Q+:
 * Bennett and Zhang, "Hierarchical packet fair queueing algorithms", 1996). Going by the
 * ends alone, or by the midpoints as plain stride scheduling does, lets a heavy backend run
 * through several of its short turns while light ones whose turns end together wait, then
 * serves those back to back (by midpoints 5:1:1 goes a a a b c a a: 5 a's where rounds
 * meet); the start rule holds it to its share, so 5:1:1 goes a b a a c a a and never more
 * than 3 a's in a row.
 *
 * Slots sit in the `ready` heap by the end of their turn. One found on top before its turn has
 * started is parked in `waiting` (by start) until the clock reaches it, so with equal weights
 * nothing ever moves and a pick is one heap update, as plain stride scheduling. A subclass may
 * put a rule before the schedule (`lighter`: least-connections' load), which both heaps then
 * order by first. A pick is O(log n) amortized (a slot parks at most once per turn) and
 * allocates nothing; joins, leaves and weight changes are O(log n) too.
 */
export abstract class StrideBalancer implements Balancer {
  protected readonly slots = new Map<Backend, StrideSlot>()
  /** The virtual clock is clockBase + picks / total, divided afresh like the slots' turns. */
  private clockBase = 0
  private picks = 0
  private total = 0
  private clock = 0
  private nextOrder = 0

  constructor(
    members: readonly Backend[],
    /** Slots not parked: ordered by `lighter`, then `endsFirst`. */
    private readonly ready: IndexedHeap<StrideSlot>,
    /** Parked slots, whose turn had not started: ordered by `lighter`, then `startsFirst`. */
    private readonly waiting: IndexedHeap<StrideSlot>,
  ) {
    for (const b of members) this.onBackendUp(b)
  }

  /** Whether `a` goes before `b` whatever their turns; never, for plain round-robin. */
  protected abstract lighter(a: StrideSlot, b: StrideSlot): boolean

  pick(_ctx: PickContext, avoid?: Exclusion): Backend | undefined {
    let slot = this.next()
    if (slot === undefined) return undefined
    if (avoid !== undefined && avoid.has(slot.backend)) {
      slot = this.nextAllowed(avoid)
      if (slot === undefined) return undefined
    }
    this.picks++
    this.clock = this.clockBase + this.picks / this.total
    // Taken before its turn (the others were excluded, or it is lighter): the clock goes on
    // from its start, so backends that were passed over meanwhile do not fall behind the
    // clock unnoticed and then catch up in a burst (WF²Q+: V = max(V + 1/W, start)).
    if (slot.start > this.clock) this.setClock(slot.start)
    slot.turns++
    this.refile(slot)
    return slot.backend
  }

  onBackendUp(backend: Backend): void {
    if (this.slots.has(backend)) return
    const slot = new StrideSlot(backend, backend.effectiveWeight, this.clock, this.nextOrder++)
    this.slots.set(backend, slot)
    this.retotal(slot.weight)
    this.times(slot)
    this.ready.push(slot)
  }

  onBackendDown(backend: Backend): void {
    const slot = this.slots.get(backend)
    if (slot === undefined) return
    this.slots.delete(backend)
    this.heapOf(slot).remove(slot)
    this.retotal(-slot.weight)
  }

  /**
   * The next turn moves to where the new weight would have put it: one new stride after the
   * start of the last turn (a backend that has had no turn yet keeps its start).
   */
  onWeightChange(backend: Backend): void {
    const slot = this.slots.get(backend)
    if (slot === undefined) return
    const weight = backend.effectiveWeight
    if (weight === slot.weight) return
    this.retotal(weight - slot.weight)
    if (slot.turns > 0) {
      slot.base += (slot.turns - 1) / slot.weight
      slot.turns = 1
    }
    slot.weight = weight
    this.refile(slot)
  }

  /** `slot`'s place under `lighter` changed (least-connections: a connection opened or closed). */
  protected reorder(slot: StrideSlot): void {
    this.heapOf(slot).update(slot)
  }

  /** The slot to take: the lightest, and among those the first in the schedule. */
  private next(): StrideSlot | undefined {
    const ready = this.ready
    const waiting = this.waiting
    for (;;) {
      // Parked slots whose turn has started go back, as far as they can matter now: one
      // heavier than the ready top cannot be picked, and goes back when it can.
      for (let w = waiting.peek(); w !== undefined && w.start <= this.clock; w = waiting.peek()) {
        const r = ready.peek()
        if (r !== undefined && this.lighter(r, w)) break
        this.move(w, ready)
      }
      const r = ready.peek()
      const w = waiting.peek()
      if (r === undefined) return w
      // A parked slot lighter than any ready one: none that light has a turn started, so it
      // takes its turn early.
      if (w !== undefined && this.lighter(w, r)) return w
      if (r.start <= this.clock) return r
      this.move(r, waiting)
    }
  }

  /** Like `next`, among slots `avoid` lets through (a linear scan, for the rare excluded case). */
  private nextAllowed(avoid: Exclusion): StrideSlot | undefined {
    let best: StrideSlot | undefined
    for (const s of this.ready.items) {
      if (!avoid.has(s.backend) && (best === undefined || this.before(s, best))) best = s
    }
    for (const s of this.waiting.items) {
      if (!avoid.has(s.backend) && (best === undefined || this.before(s, best))) best = s
    }
    return best
  }

  private before(a: StrideSlot, b: StrideSlot): boolean {
    if (this.lighter(a, b)) return true
    if (this.lighter(b, a)) return false
    const ra = a.start <= this.clock
    const rb = b.start <= this.clock
    if (ra !== rb) return ra
    return ra ? endsFirst(a, b) : startsFirst(a, b)
  }

  /** Recomputes `slot`'s turn after a change and restores its heap's order. */
  private refile(slot: StrideSlot): void {
    this.times(slot)
    if (slot.finish < this.clock) {
      // More than a whole turn behind (it was passed over, e.g. while full): no catching up.
      slot.base = this.clock
      slot.turns = 0
      this.times(slot)
    }
    this.heapOf(slot).update(slot)
  }

  private move(slot: StrideSlot, to: IndexedHeap<StrideSlot>): void {
    this.heapOf(slot).remove(slot)
    slot.ready = to === this.ready
    to.push(slot)
  }

  private times(slot: StrideSlot): void {
    slot.start = slot.base + slot.turns / slot.weight
    slot.finish = slot.base + (slot.turns + 1) / slot.weight
  }

  private heapOf(slot: StrideSlot): IndexedHeap<StrideSlot> {
    return slot.ready ? this.ready : this.waiting
  }

  /** The total weight changes by `delta`: the clock goes on from where it is, at the new rate. */
  private retotal(delta: number): void {
    this.setClock(this.clock)
    this.total = this.slots.size === 0 ? 0 : this.total + delta
  }

  private setClock(at: number): void {
    this.clockBase = at
    this.clock = at
    this.picks = 0
  }
}
