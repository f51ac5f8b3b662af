import type { Logger } from '../log.js'
import type { Metrics } from '../metrics/metrics.js'
import { LogThrottle } from '../log-throttle.js'
import { FdReserve, HEADROOM_DESCRIPTORS } from '../fd-budget.js'
import { formatDuration } from '../config/duration.js'

/** What runs out: descriptors (EMFILE, ENFILE, ENOBUFS, ENOMEM) or a UDP listener's session table. */
export type Resource = 'fd' | 'udp_sessions'

/** Where descriptors were found missing. */
export type ExhaustedAt = 'accept' | 'connect' | 'udp_socket'

/** A listener that can stop accepting and start again without losing its socket or backlog. */
export interface Pausable {
  readonly name: string
  /** Stops accepting; false when it cannot (it then accepts on, and refuses what it cannot serve). */
  pauseAccepting(): boolean
  resumeAccepting(): void
}

export interface GuardOptions {
  /** First pause; each pause that follows soon after a resume is twice as long, up to maxBackoffMs. */
  initialBackoffMs?: number
  maxBackoffMs?: number
  /** Descriptors held in reserve (let go while paused); 0 holds none. */
  reserve?: number
  /** Descriptors that must be free beyond the reserve before accepting again. */
  headroom?: number
  /** Interval of the exhaustion warning (once per interval per resource). */
  logIntervalMs?: number
}

interface Waiter {
  deadline: number
  cb: (ok: boolean) => void
}

/**
 * One data plane's answer to running out of descriptors. The first EMFILE (or ENFILE,
 * ENOBUFS, ENOMEM) seen on an accept, a backend connect or a UDP socket pauses every TCP
 * listener (the kernel keeps their backlog: nothing queued is dropped), lets the reserve go
 * (so the admin API and the connections already open have room), and retries with backoff:
 * the listeners accept again once the whole reserve can be taken back with room to spare
 * (HEADROOM_DESCRIPTORS). Connects that failed
 * for want of a descriptor wait for that (within their connect_timeout) instead of failing
 * against a backend. Counted in sluice_resource_exhausted_total; one warning per interval.
 */
export class ExhaustionGuard {
  private readonly throttle: LogThrottle
  private readonly reserve: FdReserve
  private readonly initialBackoffMs: number
  private readonly maxBackoffMs: number
  private readonly headroom: number
  private backoffMs: number
  private timer: NodeJS.Timeout | undefined
  private pausedAt = 0
  private resumedAt = 0
  private pausedListeners: Pausable[] = []
  private waiters: Waiter[] = []
  private closed = false
  /** Plain counts by `resource listener`, moved into the metric when /metrics is read. */
  private readonly counts = new Map<string, { resource: Resource; listener: string; n: number; flushed: number }>()
  /** Times descriptors ran out since the last pause began (for the recovery line). */
  private events = 0

  constructor(
    private readonly log: Logger,
    private readonly listeners: () => Iterable<Pausable>,
    opts: GuardOptions = {},
  ) {
    this.initialBackoffMs = opts.initialBackoffMs ?? 100
    this.maxBackoffMs = opts.maxBackoffMs ?? 2000
    this.backoffMs = this.initialBackoffMs
    this.headroom = opts.headroom ?? HEADROOM_DESCRIPTORS
    this.throttle = new LogThrottle(opts.logIntervalMs ?? 1000)
    this.reserve = new FdReserve(opts.reserve)
  }

  /** True while descriptors are out: listeners are paused, new UDP clients are dropped. */
  get paused(): boolean {
    return this.timer !== undefined
  }

  /** Descriptors held in reserve now (none while paused). */
  get reserved(): number {
    return this.reserve.held
  }

  /** Counts one refusal for `resource` on `listener` (plain numbers; no label lookup here). */
  count(resource: Resource, listener: string, n = 1): void {
    const key = resource + ' ' + listener
    const c = this.counts.get(key)
    if (c === undefined) this.counts.set(key, { resource, listener, n, flushed: 0 })
    else c.n += n
  }

  /** A UDP listener's session table is full: counted, one warning per interval (its own, see UdpListener). */
  sessionsFull(listener: string): void {
    this.count('udp_sessions', listener)
  }

  /** Descriptors ran out at `at` on `listener` (errno EMFILE, ...): count, warn once per interval, pause. */
  exhausted(listener: string, at: ExhaustedAt, errno: string): void {
    if (this.closed) return
    this.count('fd', listener)
    this.events++
    const suppressed = this.throttle.take('fd')
    if (suppressed !== false) {
      this.log.warn(
        { code: 'SLUICE_ERR_RESOURCE_EXHAUSTED', resource: 'fd', listener, at, errno, suppressed, pause: formatDuration(this.backoffMs) },
        `out of file descriptors (${errno} on ${at}, listener ${listener}): accepting paused, retrying in ${formatDuration(this.backoffMs)}; open connections are still served`,
      )
    }
    if (this.paused) return
    const now = Date.now()
    // Out again soon after a resume: wait longer this time.
    if (this.resumedAt !== 0 && now - this.resumedAt < 5 * this.maxBackoffMs) this.backoffMs = Math.min(this.maxBackoffMs, this.backoffMs * 2)
    else this.backoffMs = this.initialBackoffMs
    this.pausedAt = now
    this.reserve.release()
    this.pausedListeners = []
    for (const l of this.listeners()) if (l.pauseAccepting()) this.pausedListeners.push(l)
    this.schedule()
  }

  /**
   * Calls `cb(true)` once descriptors are back (at once when they are not out now), or
   * `cb(false)` when `timeoutMs` passes first.
   */
  whenAvailable(cb: (ok: boolean) => void, timeoutMs: number): void {
    if (!this.paused) {
      setImmediate(cb, true)
      return
    }
    this.waiters.push({ deadline: Date.now() + timeoutMs, cb })
  }

  /** Adds what was counted since the last call to sluice_resource_exhausted_total. */
  flush(metrics: Metrics): void {
    for (const c of this.counts.values()) {
      if (c.n !== c.flushed) metrics.resourceExhaustedTotal.inc({ resource: c.resource, listener: c.listener }, c.n - c.flushed)
      c.flushed = c.n
    }
  }

  close(): void {
    this.closed = true
    clearTimeout(this.timer)
    this.timer = undefined
    this.reserve.close()
    const waiters = this.waiters
    this.waiters = []
    for (const w of waiters) w.cb(false)
  }

  private schedule(): void {
    this.timer = setTimeout(this.retry, this.backoffMs)
  }

  private readonly retry = (): void => {
    this.timer = undefined
    if (this.closed) return
    if (!this.reserve.refill() || !this.reserve.headroom(this.headroom)) {
      // Still out: the reserve stays free for the admin API; wait longer, tell the waiters whose time is up.
      this.reserve.release()
      this.backoffMs = Math.min(this.maxBackoffMs, this.backoffMs * 2)
      this.expireWaiters()
      this.schedule()
      return
    }
    const pausedMs = Date.now() - this.pausedAt
    this.resumedAt = Date.now()
    const listeners = this.pausedListeners
    this.pausedListeners = []
    for (const l of listeners) l.resumeAccepting()
    this.log.info(
      { resource: 'fd', paused_ms: pausedMs, exhausted: this.events },
      `file descriptors are free again: accepting again after ${formatDuration(pausedMs)} (${this.events} times out of descriptors)`,
    )
    this.events = 0
    const waiters = this.waiters
    this.waiters = []
    for (const w of waiters) w.cb(true)
  }

  private expireWaiters(): void {
    const now = Date.now()
    const keep: Waiter[] = []
    for (const w of this.waiters) {
      if (w.deadline <= now) w.cb(false)
      else keep.push(w)
    }
    this.waiters = keep
  }
}
