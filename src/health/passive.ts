import type { PassiveConfig } from '../config/types.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics/metrics.js'
import type { Backend } from '../upstream/backend.js'
import type { Pool } from '../upstream/pool.js'
import { formatDuration } from '../config/duration.js'

/**
 * Passive ejection: `max_failures` consecutive failed connects by real client connections
 * (counted in `Backend.consecutiveFailures`, reset by any successful connect) take a backend
 * out for `ejection_time`; then it is tried again, its count started anew by the data plane
 * as it re-enters the rotation (Pool.setState: the count is the data path's to write, this
 * only reads it). Only a backend that is up is ejected; `onChange` recomputes its state (see
 * PoolHealth).
 */
export class PassiveEjector {
  private readonly timers = new Map<Backend, NodeJS.Timeout>()

  constructor(
    private readonly pool: Pool,
    private cfg: PassiveConfig,
    private readonly log: Logger,
    private readonly metrics: Metrics,
    private readonly onChange: (b: Backend) => void,
  ) {}

  get config(): PassiveConfig {
    return this.cfg
  }

  update(cfg: PassiveConfig): void {
    this.cfg = cfg
    // Backends that left the pool come back from ejection now (they take no traffic anyway).
    const members = new Set(this.pool.backends)
    for (const b of [...this.timers.keys()]) if (!members.has(b)) this.readmit(b, false)
  }

  /** A connect to `b` failed (`reason`: errno or "timeout"); its consecutiveFailures already counts it. */
  connectFailed(b: Backend, reason: string): void {
    if (b.ejected || b.retired || b.state !== 'up' || b.consecutiveFailures < this.cfg.maxFailures) return
    b.ejected = true
    const timer = setTimeout(() => this.readmit(b, true), this.cfg.ejectionTimeMs)
    timer.unref()
    this.timers.set(b, timer)
    this.metrics.backendEjectionsTotal.inc({ pool: this.pool.name, backend: b.id })
    this.log.warn(
      { code: 'SLUICE_ERR_BACKEND_EJECTED', pool: this.pool.name, backend: b.id, failures: b.consecutiveFailures, ejection_time: formatDuration(this.cfg.ejectionTimeMs), reason },
      `backend ${b.id} ejected for ${formatDuration(this.cfg.ejectionTimeMs)}: ${b.consecutiveFailures} consecutive connect failures (last: ${reason})`,
    )
    this.onChange(b)
  }

  /** Ends every ejection now (the pool's passive setting was removed, or the daemon stops). */
  close(): void {
    for (const b of [...this.timers.keys()]) this.readmit(b, false)
  }

  private readmit(b: Backend, log: boolean): void {
    clearTimeout(this.timers.get(b))
    this.timers.delete(b)
    b.ejected = false
    if (log && !b.retired) this.log.info({ pool: this.pool.name, backend: b.id }, `backend ${b.id}: ejection over, trying it again`)
    if (!b.retired) this.onChange(b)
  }
}
