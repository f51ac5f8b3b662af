/** A connection waiting for a backend slot: its own list links, and its try at a slot. */
export interface QueueWaiter {
  queuePrev: QueueWaiter | undefined
  queueNext: QueueWaiter | undefined
  /** In a queue now. */
  queued: boolean
  /**
   * A slot may have freed: take it (pick and acquire) and go on, returning true; false when
   * there is still none (the waiter stays at the head).
   */
  trySlot(): boolean
}

/** How often a queue that is not empty looks for slots freed by another worker. */
export const QUEUE_POLL_MS = 25

/**
 * A pool's FIFO of connections waiting for a backend slot when every usable backend is at its
 * max_connections (`max_queue`, `queue_timeout`). A slot freed in this worker goes to the
 * head at once (before any new connection: the queue is drained from a microtask queued by
 * the release, and new connections arrive as I/O events after it). A slot freed in another
 * worker is found by a poll every QUEUE_POLL_MS while the queue is not empty: one timer per
 * pool, none per connection. The deadline of each waiter is the session's (the data plane's
 * timer wheel).
 */
export class BackendQueue {
  private head: QueueWaiter | undefined
  private tail: QueueWaiter | undefined
  private count = 0
  private draining = false
  private scheduled = false
  private poll: NodeJS.Timeout | undefined

  get length(): number {
    return this.count
  }

  push(w: QueueWaiter): void {
    w.queuePrev = this.tail
    w.queueNext = undefined
    if (this.tail !== undefined) this.tail.queueNext = w
    else this.head = w
    this.tail = w
    w.queued = true
    if (this.count++ === 0) {
      this.poll = setInterval(this.drain, QUEUE_POLL_MS)
      this.poll.unref()
    }
  }

  /** Takes `w` out (it left, timed out, or got its slot). */
  remove(w: QueueWaiter): void {
    if (!w.queued) return
    const { queuePrev: prev, queueNext: next } = w
    if (prev !== undefined) prev.queueNext = next
    else this.head = next
    if (next !== undefined) next.queuePrev = prev
    else this.tail = prev
    w.queuePrev = w.queueNext = undefined
    w.queued = false
    if (--this.count === 0) {
      clearInterval(this.poll)
      this.poll = undefined
    }
  }

  /** A slot may have freed (a release, a backend back in rotation, a new max_connections): drain before any new connection. */
  kick(): void {
    if (this.count === 0 || this.scheduled) return
    this.scheduled = true
    queueMicrotask(this.drain)
  }

  /** Hands slots to the head of the queue for as long as it gets one. */
  readonly drain = (): void => {
    this.scheduled = false
    if (this.draining) return
    this.draining = true
    try {
      for (let w = this.head; w !== undefined; w = this.head) {
        // Out of the queue first: what it does with its slot may end it (and it must not be found here then).
        this.remove(w)
        if (!w.trySlot()) {
          // Still no slot: back at the head, in its place.
          this.unshift(w)
          break
        }
      }
    } finally {
      this.draining = false
    }
  }

  /** Everything waiting, for a shutdown; the queue is empty after. */
  takeAll(): QueueWaiter[] {
    const out: QueueWaiter[] = []
    for (let w = this.head; w !== undefined; w = this.head) {
      this.remove(w)
      out.push(w)
    }
    return out
  }

  private unshift(w: QueueWaiter): void {
    w.queuePrev = undefined
    w.queueNext = this.head
    if (this.head !== undefined) this.head.queuePrev = w
    else this.tail = w
    this.head = w
    w.queued = true
    if (this.count++ === 0) {
      this.poll = setInterval(this.drain, QUEUE_POLL_MS)
      this.poll.unref()
    }
  }
}
