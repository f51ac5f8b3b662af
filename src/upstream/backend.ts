import type { BackendConfig } from '../config/types.js'
import type { SharedCounters } from '../control/shared-counters.js'

/**
 * `up`: takes new connections. `down`: failed its checks. `draining`: finishes what it has,
 * takes nothing new. `disabled`: out of rotation by an operator.
 */
export type BackendState = 'up' | 'down' | 'draining' | 'disabled'

/** One upstream server of a pool, with the counters the data path keeps for it. */
export class Backend {
  /** Stable id `host:port`: hashes, logs, metrics and the admin API use it, never a list index. */
  readonly id: string
  readonly host: string
  readonly port: number
  weight: number
  backup: boolean
  /** 0 = unlimited. */
  maxConnections: number
  state: BackendState = 'up'
  /**
   * Where `active` and `consecutiveFailures` live: a pair of slots of the daemon's shared
   * counters, so every worker (and the control plane) sees the same numbers. Unset (tests,
   * tools), they are plain fields of this object.
   */
  private shared: SharedCounters | undefined
  private slot = 0
  private localActive = 0
  private localFailures = 0
  /** `active` as this worker's balancer last heard of it (see Pool.resync). */
  seenActive = 0
  /** Connections handed to this backend since start (this worker). */
  total = 0
  /** Connections established to this backend since start (this worker), and how many of them /metrics has counted. */
  established = 0
  countedEstablished = 0
  /** Removed from its pool by a reload; its open connections finish, it takes no new ones. */
  retired = false
  /** Slow start: the share of `weight` in effect while it ramps up after joining (1 = all). */
  ramp = 1
  /** Its place in the pool's list of backends (config order), which algorithm `first` follows. */
  position = 0
  /** The active health check's view (true when the pool has none): src/health/pool-health.ts. */
  healthy = true
  /** Taken out by passive ejection (consecutive connect failures) until its ejection_time ends. */
  ejected = false

  constructor(cfg: BackendConfig) {
    this.id = cfg.address
    this.host = cfg.host
    this.port = cfg.port
    this.weight = cfg.weight
    this.backup = cfg.backup
    this.maxConnections = cfg.maxConnections
  }

  /** Counts in `counters` at slots `slot` (active) and `slot + 1` (consecutive failures) from now on. */
  bindShared(counters: SharedCounters, slot: number): void {
    this.shared = counters
    this.slot = slot
  }

  /**
   * Stops counting in the shared slot (a removed backend whose last connection ended, before
   * its slot is handed to another): from now on it reads 0.
   */
  unbindShared(): void {
    this.shared = undefined
    this.localActive = 0
    this.localFailures = 0
  }

  /** Connections open or being opened to this backend, by every worker. */
  get active(): number {
    return this.shared === undefined ? this.localActive : this.shared.load(this.slot)
  }

  /** Sets `active` outright (tests and tools; the data path counts with addActive). */
  set active(n: number) {
    if (this.shared === undefined) this.localActive = n
    else this.shared.store(this.slot, n)
  }

  /** Adds `delta` to `active` (atomically across workers). */
  addActive(delta: number): void {
    if (this.shared === undefined) this.localActive += delta
    else this.shared.add(this.slot, delta)
  }

  /**
   * Adds one to `active` unless it is already at max_connections (0 = no limit): true when
   * taken. Exact across workers: two racing for a backend's last slot cannot both get it.
   */
  tryAddActive(): boolean {
    const max = this.maxConnections
    if (this.shared === undefined) {
      if (max > 0 && this.localActive >= max) return false
      this.localActive++
      return true
    }
    return this.shared.tryAcquire(this.slot, max)
  }

  /**
   * Consecutive failed connects, by every worker; reset by a successful one, and by a worker's
   * pool when the backend enters the rotation. Written by the data path only.
   */
  get consecutiveFailures(): number {
    return this.shared === undefined ? this.localFailures : this.shared.load(this.slot + 1)
  }

  set consecutiveFailures(n: number) {
    if (this.shared === undefined) this.localFailures = n
    else if (n === 0) this.shared.store(this.slot + 1, 0)
    else this.shared.store(this.slot + 1, n)
  }

  /** One more failed connect (atomically across workers); returns the new count. */
  failedOnce(): number {
    if (this.shared === undefined) return ++this.localFailures
    return this.shared.add(this.slot + 1, 1)
  }

  /** In rotation: may be handed new connections (capacity aside). */
  get inRotation(): boolean {
    return this.state === 'up'
  }

  /** The weight balancers use: `weight`, scaled down while slow start ramps it up. */
  get effectiveWeight(): number {
    return this.ramp === 1 ? this.weight : this.weight * this.ramp
  }

  /** The state its health says: what `enable` returns a backend to, and what checks set. */
  get healthState(): 'up' | 'down' {
    return this.healthy && !this.ejected ? 'up' : 'down'
  }

  get full(): boolean {
    return this.maxConnections > 0 && this.active >= this.maxConnections
  }
}
