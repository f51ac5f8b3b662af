import type { Counter } from 'prom-client'
import type { HealthCheckConfig } from '../config/types.js'
import type { Metrics } from '../metrics/metrics.js'
import type { Backend } from '../upstream/backend.js'
import type { Pool } from '../upstream/pool.js'
import type { Probe, ProbeResult } from './probe.js'
import { findProbe } from './registry.js'
import { RiseFall, type Transition } from './rise-fall.js'

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
  pass: Counter.Internal
  fail: Counter.Internal
}

/**
 * Active health checks of one pool: one timer per backend, at most one probe in flight per
 * backend, the next probe `interval` (plus 0..jitter) after the previous one started (or at
 * once after it, when it took longer). Results go through a rise/fall state machine; changes
 * are handed to `onResult`, which owns the backend's state.
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
    for (const e of this.entries.values()) {
      e.rf.rise = cfg.rise
      e.rf.fall = cfg.fall
      if (timingChanged && !e.inFlight && e.timer !== undefined) {
        clearTimeout(e.timer)
        this.schedule(e, this.delay())
      }
    }
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
    const firsts: Promise<void>[] = []
    for (const b of members) {
      if (this.entries.has(b)) continue
      const labels = { pool: this.pool.name, backend: b.id }
      const e: Entry = {
        b,
        rf: new RiseFall(this.cfg.rise, this.cfg.fall),
        timer: undefined,
        inFlight: false,
        stopped: false,
        firstDone: undefined,
        pass: this.metrics.healthChecksTotal.labels({ ...labels, result: 'success' }),
        fail: this.metrics.healthChecksTotal.labels({ ...labels, result: 'failure' }),
      }
      this.entries.set(b, e)
      firsts.push(new Promise<void>((resolve) => (e.firstDone = resolve)))
      this.run(e)
    }
    return Promise.all(firsts).then(() => undefined)
  }

  private run(e: Entry): void {
    e.timer = undefined
    if (e.stopped || e.inFlight || this.closed) return
    e.inFlight = true
    const started = performance.now()
    const cfg = this.cfg
    this.probe.check({ host: e.b.host, port: cfg.port === 0 ? e.b.port : cfg.port, timeoutMs: cfg.timeoutMs }).then((r) => {
      e.inFlight = false
      if (e.stopped) return
      this.record(e, r)
      this.schedule(e, Math.max(0, this.delay() - (performance.now() - started)))
    }, () => {
      // Probes never reject; keep checking if one ever does.
      e.inFlight = false
      if (!e.stopped) this.schedule(e, this.delay())
    })
  }

  private record(e: Entry, r: ProbeResult): void {
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
