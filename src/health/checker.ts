import type { Counter } from 'prom-client'
import type { HealthCheckConfig } from '../config/types.js'
import type { Metrics } from '../metrics/metrics.js'
import type { Backend } from '../upstream/backend.js'
import type { Pool } from '../upstream/pool.js'
import type { Probe, ProbeResult } from './probe.js'
import { findProbe } from './registry.js'
import { RiseFall, type Transition } from './rise-fall.js'
import { localProbeFailure } from '../fd-budget.js'

/** What the checker reports to its owner, which turns it into the backend's state. */
export type HealthListener = (b: Backend, result: ProbeResult, transition: Transition, first: boolean, progress: string) => void

interface Entry {
  readonly b: Backend
  readonly rf: RiseFall
  timer: NodeJS.Timeout | undefined
  inFlight: boolean
  stopped: boolean
  /** Resolves the start-up wait once the first result is in. */
  firstDone: (() => void) | undefined
  /** When the current (or next) probe was due, on performance.now()'s clock. */
  due: number
  /** When the last probe started (same clock). */
  started: number
  /** Added once, to the wait after the first probe: moves this backend to its place in the interval. */
  phaseMs: number
  pass: Counter.Internal
  fail: Counter.Internal
}

/** The longest gap between the first probes of backends that join together. */
const FIRST_PROBE_GAP_MS = 1

/**
 * Active health checks of one pool: one timer per backend, at most one probe in flight per
 * backend, the next probe due `interval` (plus 0..jitter) after the previous one was due (at
 * once after it, when it took longer). Results go through a rise/fall state machine; changes
 * are handed to `onResult`, which owns the backend's state.
 *
 * Backends that join together (all of them at start-up) do not probe in lockstep: their first
 * probes go out `min(1ms, interval / n)` apart, so a large pool's first round runs at its
 * steady rate (n per interval) rather than all at once, while a small pool is still checked
 * within n ms (start-up waits for it). The wait after each first probe then places the
 * backend at its own share of the interval, `i * interval / n`, and the jitter keeps them
 * (and several sluice instances) from drifting back together.
 */
export class HealthChecker {
  private readonly entries = new Map<Backend, Entry>()
  private probe: Probe
  private closed = false

  constructor(
    private readonly pool: Pool,
    private cfg: HealthCheckConfig,
    private readonly metrics: Metrics,
    private readonly onResult: HealthListener,
    /** Tests inject a probe; otherwise the config's type makes it (and a reload remakes it). */
    private readonly fixedProbe?: Probe,
  ) {
    this.probe = fixedProbe ?? makeProbe(cfg)
  }

  get config(): HealthCheckConfig {
    return this.cfg
  }

  /**
   * Starts checking every backend of the pool now. The promise resolves once each has its
   * first result (each bounded by `timeout`), so the daemon can wait for it before accepting.
   */
  start(): Promise<void> {
    return this.sync()
  }

  /** Takes a new health_check of the same pool, and the pool's current members (after a reload). */
  update(cfg: HealthCheckConfig): Promise<void> {
    const timingChanged = cfg.intervalMs !== this.cfg.intervalMs || cfg.jitterMs !== this.cfg.jitterMs
    this.cfg = cfg
    this.probe = this.fixedProbe ?? makeProbe(cfg)
    const waiting: Entry[] = []
    for (const e of this.entries.values()) {
      e.rf.rise = cfg.rise
      e.rf.fall = cfg.fall
      if (timingChanged && !e.inFlight && e.timer !== undefined && e.rf.checked) waiting.push(e)
    }
    // A new interval: each waiting backend's next probe at its own share of it.
    const now = performance.now()
    waiting.forEach((e, i) => {
      clearTimeout(e.timer)
      e.due = now + Math.floor((i * cfg.intervalMs) / waiting.length)
      e.phaseMs = 0
      this.schedule(e, e.due - now)
    })
    return this.sync()
  }

  /** The check's view of `b`: undefined before its first result. */
  healthy(b: Backend): boolean | undefined {
    const e = this.entries.get(b)
    return e === undefined || !e.rf.checked ? undefined : e.rf.healthy
  }

  /** Stops every timer; probes in flight finish on their own (bounded) and are ignored. */
  close(): void {
    this.closed = true
    for (const e of this.entries.values()) this.stop(e)
    this.entries.clear()
  }

  /** Starts entries for new members, stops those of members that left. */
  private sync(): Promise<void> {
    const members = new Set(this.pool.backends)
    for (const [b, e] of this.entries) {
      if (!members.has(b)) {
        this.stop(e)
        this.entries.delete(b)
        for (const result of ['success', 'failure']) this.metrics.healthChecksTotal.remove({ pool: this.pool.name, backend: b.id, result })
      }
    }
    const joining = [...members].filter((b) => !this.entries.has(b))
    const n = joining.length
    const interval = this.cfg.intervalMs
    const gap = Math.min(FIRST_PROBE_GAP_MS, interval / Math.max(1, n))
    const firsts: Promise<void>[] = []
    const now = performance.now()
    joining.forEach((b, i) => {
      const labels = { pool: this.pool.name, backend: b.id }
      const startMs = Math.floor(i * gap)
      const e: Entry = {
        b,
        rf: new RiseFall(this.cfg.rise, this.cfg.fall),
        timer: undefined,
        inFlight: false,
        stopped: false,
        firstDone: undefined,
        due: now + startMs,
        started: now,
        phaseMs: Math.max(0, Math.floor((i * interval) / n) - startMs),
        pass: this.metrics.healthChecksTotal.labels({ ...labels, result: 'success' }),
        fail: this.metrics.healthChecksTotal.labels({ ...labels, result: 'failure' }),
      }
      this.entries.set(b, e)
      firsts.push(new Promise<void>((resolve) => (e.firstDone = resolve)))
      if (startMs === 0) this.run(e)
      // Referenced, unlike the steady timers: start-up waits on this probe, so it must happen.
      else e.timer = setTimeout(() => this.run(e), startMs)
    })
    return Promise.all(firsts).then(() => undefined)
  }

  private run(e: Entry): void {
    e.timer = undefined
    if (e.stopped || e.inFlight || this.closed) return
    e.inFlight = true
    e.started = performance.now()
    const cfg = this.cfg
    const target = { host: e.b.host, port: cfg.port === 0 ? e.b.port : cfg.port, timeoutMs: cfg.timeoutMs, ...(cfg.sendProxy !== undefined ? { proxy: cfg.sendProxy } : {}) }
    this.probe.check(target).then((r) => {
      e.inFlight = false
      if (e.stopped) return
      this.record(e, r)
      this.next(e)
    }, () => {
      // Probes never reject; keep checking if one ever does.
      e.inFlight = false
      if (!e.stopped) this.next(e)
    })
  }

  /**
   * Schedules the next probe of `e`: due one interval (plus jitter) after the last one was
   * due, so each backend keeps its place in the interval even when the process or the probe
   * ran late. A slot is skipped when it comes sooner than half an interval after the last
   * probe started (that probe ran late) or half an interval ago (it was missed); a slot just
   * passed (the probe took longer than expected) runs at once.
   */
  private next(e: Entry): void {
    const now = performance.now()
    const interval = this.cfg.intervalMs
    let due = e.due + this.delay() + e.phaseMs
    e.phaseMs = 0
    const earliest = Math.max(e.started + interval / 2, now - interval / 2)
    if (due < earliest) due += Math.ceil((earliest - due) / interval) * interval
    e.due = due
    this.schedule(e, Math.max(0, due - now))
  }

  private record(e: Entry, r: ProbeResult): void {
    // No descriptor for the probe's socket here says nothing about the backend: not counted.
    if (!r.ok && e.rf.checked && localProbeFailure(r.detail)) return
    ;(r.ok ? e.pass : e.fail).inc()
    const first = !e.rf.checked
    const transition = e.rf.observe(r.ok)
    this.onResult(e.b, r, transition, first, e.rf.progress(r.ok))
    const done = e.firstDone
    e.firstDone = undefined
    done?.()
  }

  private schedule(e: Entry, ms: number): void {
    if (e.stopped) return
    e.timer = setTimeout(() => this.run(e), ms)
    e.timer.unref()
  }

  private delay(): number {
    const j = this.cfg.jitterMs
    return this.cfg.intervalMs + (j > 0 ? Math.floor(Math.random() * (j + 1)) : 0)
  }

  private stop(e: Entry): void {
    e.stopped = true
    clearTimeout(e.timer)
    e.timer = undefined
    const done = e.firstDone
    e.firstDone = undefined
    done?.()
  }
}

function makeProbe(cfg: HealthCheckConfig): Probe {
  const f = findProbe(cfg.type)
  if (f === undefined) throw new TypeError(`health_check type ${cfg.type} passed validation but has no probe`)
  return f.create(cfg.options)
}
