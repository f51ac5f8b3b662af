/**
 * Counters that every worker thread reads and writes in one SharedArrayBuffer, with Atomics:
 * the per-backend active connections (so least-connections and a backend's max_connections
 * count the connections of all workers) and the per-listener open connections (so a
 * listener's max_connections is for the whole daemon). A fixed number of slots, each an
 * Int32; the control plane hands out slots (SlotAllocator) and workers only count in them.
 * No message between threads per connection: a connection costs one atomic add to open and
 * one to close.
 */
export class SharedCounters {
  private readonly cells: Int32Array

  constructor(readonly buffer: SharedArrayBuffer) {
    this.cells = new Int32Array(buffer)
  }

  /** A zeroed table of `slots` counters. */
  static create(slots: number): SharedCounters {
    return new SharedCounters(new SharedArrayBuffer(slots * Int32Array.BYTES_PER_ELEMENT))
  }

  get size(): number {
    return this.cells.length
  }

  load(slot: number): number {
    return Atomics.load(this.cells, slot)
  }

  /** Adds `delta`; returns the new value. */
  add(slot: number, delta: number): number {
    return Atomics.add(this.cells, slot, delta) + delta
  }

  store(slot: number, value: number): void {
    Atomics.store(this.cells, slot, value)
  }

  /**
   * Adds one unless the counter is already at `max` (0 = no limit); true when it was taken.
   * Exact across threads: two workers racing for the last place cannot both get it.
   */
  tryAcquire(slot: number, max: number): boolean {
    const cells = this.cells
    if (max <= 0) {
      Atomics.add(cells, slot, 1)
      return true
    }
    for (;;) {
      const v = Atomics.load(cells, slot)
      if (v >= max) return false
      if (Atomics.compareExchange(cells, slot, v, v + 1) === v) return true
    }
  }
}

/**
 * Hands out the slots of a SharedCounters table by key (`pool/backend`, `listener:name`), in
 * the control plane only. Each key gets a pair of counters, `slot` and `slot + 1` (a backend's
 * active connections and its consecutive failures). A key keeps its slot for as long as it is
 * held; a released slot is reused only once both counters are back to zero, so a retired
 * backend's draining connections are never mixed with a new backend's.
 */
export class SlotAllocator {
  private readonly byKey = new Map<string, number>()
  private readonly released: number[] = []
  private next = 0

  constructor(private readonly counters: SharedCounters) {}

  slotOf(key: string): number {
    const have = this.byKey.get(key)
    if (have !== undefined) return have
    const counters = this.counters
    let slot: number | undefined
    for (let i = 0; i < this.released.length; i++) {
      const s = this.released[i]!
      if (counters.load(s) === 0 && counters.load(s + 1) === 0) {
        this.released.splice(i, 1)
        slot = s
        break
      }
    }
    if (slot === undefined) {
      if (this.next + 2 > counters.size) throw new RangeError(`shared counter table full (${counters.size / 2} keys): too many backends and listeners`)
      slot = this.next
      this.next += 2
    }
    this.byKey.set(key, slot)
    return slot
  }

  /** Whether `key` holds a slot now. */
  has(key: string): boolean {
    return this.byKey.has(key)
  }

  /** The key is gone (a backend removed, a listener closed): its slot may be reused once idle. */
  release(key: string): void {
    const slot = this.byKey.get(key)
    if (slot === undefined) return
    this.byKey.delete(key)
    this.released.push(slot)
  }

  get used(): number {
    return this.byKey.size
  }
}
