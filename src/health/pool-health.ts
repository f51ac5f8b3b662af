import type { Logger } from '../log.js'
import type { Metrics } from '../metrics/metrics.js'
import type { Backend } from '../upstream/backend.js'
import type { Pool } from '../upstream/pool.js'
import { HealthChecker } from './checker.js'
import { PassiveEjector } from './passive.js'
import type { ProbeResult } from './probe.js'
import type { Transition } from './rise-fall.js'

/**
 * Everything that decides whether one pool's backends are healthy: the active checker
 * (`health_check`) and passive ejection (`passive`). A backend is up when its active check
 * passes (or it has none) and it is not ejected; `draining` and `disabled` are an operator's
 * word and are never changed here (see Backend.healthState for what `enable` returns to).
 * This is the one owner of health state; with several workers it runs in the primary.
 */
export class PoolHealth {
  private checker: HealthChecker | undefined
  private passive: PassiveEjector | undefined
  /** Members seen before: a backend new to the pool takes no traffic until its first probe. */
  private readonly known = new WeakSet<Backend>()

  constructor(
    private readonly pool: Pool,
    private readonly log: Logger,
    private readonly metrics: Metrics,
  ) {}

  /** Starts checks per the pool's config; resolves when every backend has its first result. */
  start(): Promise<void> {
    return this.apply()
  }

  /** Follows the pool's new config and members after `pool.update`. New backends wait for their first probe. */
  update(): Promise<void> {
    return this.apply()
  }

  close(): void {
    this.checker?.close()
    this.checker = undefined
    this.pool.onConnectFailure = undefined
    this.passive?.close()
    this.passive = undefined
  }

  private apply(): Promise<void> {
    const done = this.applyConfig()
    for (const b of this.pool.backends) this.known.add(b)
    return done
  }

  private applyConfig(): Promise<void> {
    const cfg = this.pool.config
    let first: Promise<void> = Promise.resolve()
    if (cfg.passive === undefined) {
      this.passive?.close()
      this.passive = undefined
      this.pool.onConnectFailure = undefined
    } else if (this.passive === undefined) {
      const passive = new PassiveEjector(this.pool, cfg.passive, this.log, this.metrics, (b) => this.refresh(b))
      this.passive = passive
      this.pool.onConnectFailure = (b, reason) => passive.connectFailed(b, reason)
    } else {
      this.passive.update(cfg.passive)
    }
    if (cfg.healthCheck === undefined) {
      if (this.checker !== undefined) {
        this.checker.close()
        this.checker = undefined
        for (const b of this.pool.backends) {
          b.healthy = true
          this.refresh(b)
        }
      }
      return first
    }
    // A backend new to the pool (all of them at start-up) takes no traffic until its first
    // probe passes. One that was serving when checks were added keeps serving until then.
    for (const b of this.pool.backends) {
      if (!this.known.has(b) && this.checker?.healthy(b) === undefined) {
        b.healthy = false
        this.refresh(b)
      }
    }
    if (this.checker === undefined) {
      this.checker = new HealthChecker(this.pool, cfg.healthCheck, this.metrics, (b, r, t, f, p) => this.onResult(b, r, t, f, p))
      first = this.checker.start()
    } else {
      first = this.checker.update(cfg.healthCheck)
    }
    return first
  }

  private onResult(b: Backend, r: ProbeResult, t: Transition, first: boolean, progress: string): void {
    const type = this.checker?.config.type
    const fields = { pool: this.pool.name, backend: b.id, check: type, detail: r.detail }
    if (t === 'pending') {
      this.log.debug(fields, `backend ${b.id} check ${r.ok ? 'passed' : 'failed'} (${progress}): ${r.detail}`)
      return
    }
    if (t === 'unchanged' && !first) {
      // Nothing new, but put the state right if something outside moved it (e.g. `enable`).
      this.refresh(b)
      return
    }
    b.healthy = r.ok
    this.refresh(b, first)
    const why = first ? `first check ${r.ok ? 'passed' : 'failed'}` : progress
    const extra = b.state === 'draining' || b.state === 'disabled' ? ` (it stays ${b.state})` : b.ejected && r.ok ? ' (it stays down while ejected)' : ''
    if (r.ok) this.log.info(fields, `backend ${b.id} is up: ${why}: ${r.detail}${extra}`)
    else this.log.warn({ code: 'SLUICE_ERR_HEALTH_CHECK', ...fields }, `backend ${b.id} is down: ${why}: ${r.detail}${extra}`)
  }

  /**
   * Puts `b` in the state its health says, unless an operator drained or disabled it.
   * `firstCheck`: this is its first verdict (the pool then starts a backend it began with at
   * full weight instead of slow-starting it).
   */
  private refresh(b: Backend, firstCheck = false): void {
    if (b.retired || (b.state !== 'up' && b.state !== 'down')) return
    this.pool.setState(b, b.healthState, firstCheck)
  }
}
