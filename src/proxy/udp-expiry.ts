/** What the wheel needs of an item: when it was last active, and its own list links. */
export interface Expiring {
  /** Milliseconds (Date.now()) of the last datagram either way; the data path only writes this. */
  lastSeen: number
  expiryPrev: Expiring | undefined
  expiryNext: Expiring | undefined
  /** The slot the item is filed in, or -1 when it is not in the wheel. */
  expirySlot: number
}

/**
 * Idle expiry for UDP sessions without a timer per datagram or per session: a timing wheel
 * of coarse slots with one interval timer per listener.
 *
 * An item is filed in the slot of the tick when it would expire if nothing more happened.
 * A datagram only writes `lastSeen`. When the wheel reaches a slot it looks at each item
 * there once: an item idle for the whole timeout expires; one that was active since it was
 * filed moves to the slot of its new deadline. So each item costs O(1) per timeout period
 * however busy it is, removal is O(1) (doubly linked), and expiry is late by at most a tick.
 */
export class ExpiryWheel<T extends Expiring> {
  private slots: (Expiring | undefined)[] = []
  private tickMs = 1000
  private timeoutMs = 0
  /** The last tick (now / tickMs) the wheel has processed. */
  private doneTick = 0
  private timer: NodeJS.Timeout | undefined
  private count = 0

  constructor(timeoutMs: number, private readonly onExpire: (item: T) => void) {
    this.configure(timeoutMs)
  }

  get size(): number {
    return this.count
  }

  get timeout(): number {
    return this.timeoutMs
  }

  /** Changes the timeout; items already filed are re-filed against the new one. */
  configure(timeoutMs: number): void {
    if (timeoutMs === this.timeoutMs) return
    const items: Expiring[] = []
    for (const head of this.slots) for (let i = head; i !== undefined; i = i.expiryNext) items.push(i)
    this.timeoutMs = timeoutMs
    // About 16 ticks per timeout, at most a second apart (coarser only for timeouts of hours).
    this.tickMs = Math.max(10, Math.min(Math.max(1000, Math.ceil(timeoutMs / 4096)), Math.ceil(timeoutMs / 16)))
    this.slots = new Array<Expiring | undefined>(Math.ceil(timeoutMs / this.tickMs) + 2).fill(undefined)
    this.doneTick = Math.floor(Date.now() / this.tickMs)
    this.count = 0
    for (const item of items) {
      item.expirySlot = -1
      this.file(item)
    }
    if (this.timer !== undefined) {
      this.stop()
      this.ensureTimer()
    }
  }

  add(item: T): void {
    if (item.expirySlot !== -1) return
    this.file(item)
    this.ensureTimer()
  }

  remove(item: T): void {
    const slot = item.expirySlot
    if (slot === -1) return
    const prev = item.expiryPrev
    const next = item.expiryNext
    if (prev !== undefined) prev.expiryNext = next
    else this.slots[slot] = next
    if (next !== undefined) next.expiryPrev = prev
    item.expiryPrev = item.expiryNext = undefined
    item.expirySlot = -1
    this.count--
  }

  /** Expires what is due at `now`. The timer calls it; tests may too. */
  advance(now: number): void {
    const nowTick = Math.floor(now / this.tickMs)
    const n = this.slots.length
    let tick = Math.max(this.doneTick + 1, nowTick - n + 1)
    this.doneTick = nowTick
    for (; tick <= nowTick; tick++) {
      const slot = tick % n
      // Detach the chain first: items re-filed into this same slot wait for its next turn.
      let item = this.slots[slot]
      this.slots[slot] = undefined
      while (item !== undefined) {
        const next = item.expiryNext
        item.expiryPrev = item.expiryNext = undefined
        item.expirySlot = -1
        this.count--
        if (this.dueTick(item) <= nowTick) this.onExpire(item as T)
        else this.file(item)
        item = next
      }
    }
    if (this.count === 0) this.stop()
  }

  /** Stops the timer; items stay filed (a later add restarts it). */
  stop(): void {
    clearInterval(this.timer)
    this.timer = undefined
  }

  private dueTick(item: Expiring): number {
    return Math.ceil((item.lastSeen + this.timeoutMs) / this.tickMs)
  }

  private file(item: Expiring): void {
    const slot = this.dueTick(item) % this.slots.length
    const head = this.slots[slot]
    item.expiryPrev = undefined
    item.expiryNext = head
    if (head !== undefined) head.expiryPrev = item
    this.slots[slot] = item
    item.expirySlot = slot
    this.count++
  }

  private ensureTimer(): void {
    if (this.timer !== undefined) return
    // Ticks missed while the wheel was idle hold nothing: start from now.
    this.doneTick = Math.floor(Date.now() / this.tickMs)
    this.timer = setInterval(this.onTick, this.tickMs)
    // The listener's socket keeps the process alive, not this timer.
    this.timer.unref()
  }

  private readonly onTick = (): void => {
    this.advance(Date.now())
  }
}
