/** What the wheel needs of an item: its deadline, its own list links, and what to do when it passes. */
export interface Deadline {
  /** Milliseconds (performance.now()) when it is due; written by schedule. */
  deadlineAt: number
  deadlinePrev: Deadline | undefined
  deadlineNext: Deadline | undefined
  /** The slot it is filed in, or -1 when it is not scheduled. */
  deadlineSlot: number
  onDeadline(): void
}

/**
 * The deadlines of a data plane's connections (the opening, the backend connect, the wait in
 * a pool's queue) without a timer per connection: a hashed timing wheel of `slots` slots of
 * `tickMs`, turned by one interval timer that runs only while something is scheduled.
 *
 * An item is filed in the slot of its deadline's tick; scheduling, rescheduling and
 * cancelling are O(1) (an intrusive doubly-linked list, no allocation). Each tick looks at
 * one slot: what is due fires, what is due a later turn of the wheel (a deadline further
 * away than slots × tickMs) stays for it. A deadline fires late by at most one tick.
 */
export class TimerWheel {
  private readonly slots: (Deadline | undefined)[]
  private timer: NodeJS.Timeout | undefined
  private count = 0
  /** The last tick processed. */
  private doneTick: number

  constructor(
    readonly tickMs = 10,
    slotCount = 1024,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.slots = new Array<Deadline | undefined>(slotCount).fill(undefined)
    this.doneTick = Math.floor(now() / tickMs)
  }

  get size(): number {
    return this.count
  }

  /** Files `item` to fire at `at` (performance.now() milliseconds), moving it if it was filed. */
  schedule(item: Deadline, at: number): void {
    if (item.deadlineSlot !== -1) this.unlink(item)
    item.deadlineAt = at
    // Never in a slot already passed: a deadline in the past fires on the next tick.
    const tick = Math.max(Math.ceil(at / this.tickMs), this.doneTick + 1)
    const slot = tick % this.slots.length
    const head = this.slots[slot]
    item.deadlinePrev = undefined
    item.deadlineNext = head
    if (head !== undefined) head.deadlinePrev = item
    this.slots[slot] = item
    item.deadlineSlot = slot
    if (this.count++ === 0) this.start()
  }

  cancel(item: Deadline): void {
    if (item.deadlineSlot === -1) return
    this.unlink(item)
    if (this.count === 0) this.stop()
  }

  /** Fires what is due at `now`. The timer calls it; tests may too. */
  advance(now: number): void {
    const nowTick = Math.floor(now / this.tickMs)
    const n = this.slots.length
    let tick = Math.max(this.doneTick + 1, nowTick - n + 1)
    this.doneTick = nowTick
    for (; tick <= nowTick; tick++) {
      const slot = tick % n
      let item = this.slots[slot]
      while (item !== undefined) {
        const next = item.deadlineNext
        if (item.deadlineAt <= now) {
          this.unlink(item)
          // A handler may schedule or cancel others (even `next`): it is read again below.
          item.onDeadline()
          item = next !== undefined && next.deadlineSlot === slot ? next : this.slots[slot]
          // Items left in the slot are due on a later turn; restart only over those still due.
          while (item !== undefined && item.deadlineAt > now) item = item.deadlineNext
          continue
        }
        item = next
      }
    }
    if (this.count === 0) this.stop()
  }

  /** Stops the timer (everything scheduled stays filed; a later schedule restarts it). */
  stop(): void {
    clearInterval(this.timer)
    this.timer = undefined
  }

  private unlink(item: Deadline): void {
    const prev = item.deadlinePrev
    const next = item.deadlineNext
    if (prev !== undefined) prev.deadlineNext = next
    else this.slots[item.deadlineSlot] = next
    if (next !== undefined) next.deadlinePrev = prev
    item.deadlinePrev = item.deadlineNext = undefined
    item.deadlineSlot = -1
    this.count--
  }

  private start(): void {
    if (this.timer !== undefined) return
    this.doneTick = Math.max(this.doneTick, Math.floor(this.now() / this.tickMs) - 1)
    this.timer = setInterval(this.onTick, this.tickMs)
    // Sockets keep the process alive, not this timer.
    this.timer.unref()
  }

  private readonly onTick = (): void => {
    this.advance(this.now())
  }
}
