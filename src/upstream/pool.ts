import type { PoolConfig } from '../config/types.js'
import type { Balancer, BalancerFactory, Exclusion, PickContext } from '../balancer/types.js'
import { findBalancer } from '../balancer/registry.js'
import { SlowStart } from '../balancer/slow-start.js'
import type { Metrics } from '../metrics/metrics.js'
import { Backend, type BackendState } from './backend.js'
import { BackendQueue } from './backend-queue.js'

/**
 * A named group of backends and the algorithm that spreads connections over them.
 *
 * Primary and backup backends each get their own balancer; backups are picked only when no
 * primary can take the connection (all down, draining, disabled, full, or already tried for
 * it). Capacity (`max_connections`) and the per-connection "already tried" set are filters
 * around the algorithm, not its business.
 */
export class Pool {
  readonly name: string
  private cfg: PoolConfig
  private factory: BalancerFactory
  private members: Backend[] = []
  private primary: Balancer
  private backup: Balancer
  private readonly exclusion = new PickExclusion()
  private readonly slowStart: SlowStart
  /** Backends the pool was created with that have not entered the rotation through setState yet. */
  private readonly original = new WeakSet<Backend>()
  /** Connections waiting for a slot when every usable backend is at max_connections (max_queue). */
  readonly queue = new BackendQueue()
  /** Passive health: called after each failed connect to `b` (its consecutiveFailures already counts it). */
  onConnectFailure: ((b: Backend, reason: string) => void) | undefined

  /**
   * Other workers open and close connections to these backends too (shared counters): before
   * each pick, load-ordered balancers re-key the backends whose count moved (O(n) per pick).
   */
  sharedLoad = false

  constructor(
    cfg: PoolConfig,
    private readonly metrics: Metrics,
    /** Milliseconds, for slow start's ramps (tests pass a clock of their own). */
    now: () => number = () => performance.now(),
    /**
     * Which metrics this pool keeps: `control` (the decided state: sluice_backend_up, and
     * sluice_backend_connections_active from the shared counters), `data` (what one worker
     * counts: sluice_queue_length; its per-backend counts go out in its stats snapshot), or
     * `both` in one object (sluice_backend_connections_total too).
     */
    private readonly plane: 'control' | 'data' | 'both' = 'both',
  ) {
    this.name = cfg.name
    this.cfg = cfg
    this.slowStart = new SlowStart(cfg.slowStartMs, (b) => this.balancerOf(b).onWeightChange?.(b), now)
    this.factory = factoryFor(cfg)
    this.members = cfg.backends.map((b) => new Backend(b))
    for (const b of this.members) this.original.add(b)
    this.primary = this.factory.create([], cfg.algorithmOptions)
    this.backup = this.factory.create([], cfg.algorithmOptions)
    this.rebuild()
  }

  get config(): PoolConfig {
    return this.cfg
  }

  get backends(): readonly Backend[] {
    return this.members
  }

  get connectTimeoutMs(): number {
    return this.cfg.connectTimeoutMs
  }

  get retries(): number {
    return this.cfg.retries
  }

  find(id: string): Backend | undefined {
    return this.members.find((b) => b.id === id)
  }

  /** A backend for a new connection that is not in `tried`, or undefined. Never throws. */
  pick(ctx: PickContext, tried?: ReadonlySet<Backend>): Backend | undefined {
    this.slowStart.tick()
    if (this.sharedLoad) this.resync()
    const ex = this.exclusion
    ex.tried = tried
    const b = this.primary.pick(ctx, ex) ?? this.backup.pick(ctx, ex)
    ex.tried = undefined
    return b
  }

  /** max_queue: connections that may wait for a slot (0: none wait; a full pool refuses at once). */
  get maxQueue(): number {
    return this.cfg.maxQueue ?? 0
  }

  get queueTimeoutMs(): number {
    return this.cfg.queueTimeoutMs ?? 0
  }

  /**
   * Whether a new connection should wait in the queue: every usable backend, backups
   * included, is at its max_connections (and there is at least one usable backend).
   */
  allFull(): boolean {
    let usable = false
    for (const b of this.members) {
      if (!b.inRotation || b.retired) continue
      if (!b.full) return false
      usable = true
    }
    return usable
  }

  /**
   * Opens a connection to `b` (picked) if it still has a slot: the count and the check are one
   * atomic step, so max_connections holds exactly across workers. False when another
   * connection (of any worker) took the last slot since the pick.
   */
  tryAcquire(b: Backend): boolean {
    if (!b.tryAddActive()) return false
    this.acquired(b)
    return true
  }

  /** A connection to `b` is being opened. */
  acquire(b: Backend): void {
    b.addActive(1)
    this.acquired(b)
  }

  private acquired(b: Backend): void {
    b.seenActive = b.active
    b.total++
    this.balancerOf(b).onConnectionOpen?.(b)
  }

  /**
   * Picks a backend not in `tried` and takes its slot atomically (tryAcquire); a backend whose
   * last slot another connection (of any worker) took since the pick is passed over. Undefined
   * when none has room.
   */
  take(ctx: PickContext, tried?: ReadonlySet<Backend>): Backend | undefined {
    for (let i = 0; i < 16; i++) {
      const b = this.pick(ctx, tried)
      if (b === undefined) return undefined
      if (this.tryAcquire(b)) return b
    }
    return undefined
  }

  /** A connection to `b` (opened with acquire) is over, whether it ever connected or not. */
  release(b: Backend): void {
    b.addActive(-1)
    b.seenActive = b.active
    // The freed slot goes to the head of the queue before any new connection.
    this.queue.kick()
    if (b.retired) return
    this.balancerOf(b).onConnectionClose?.(b)
  }

  private resync(): void {
    for (const b of this.members) {
      const a = b.active
      if (a === b.seenActive) continue
      b.seenActive = a
      if (!b.retired) this.balancerOf(b).onLoadChanged?.(b)
    }
  }

  /**
   * Brings the per-backend connection metrics up to date from the plain counters the data
   * path keeps (called when /metrics is read, so a connection costs no label lookups). A
   * worker's pool (`data`) keeps no per-backend series: its counts go in its stats snapshot
   * and the control plane exposes their sums (control/metrics-merge.ts).
   */
  flushCounters(): void {
    const m = this.metrics
    if (this.plane !== 'control') m.queueLength.set({ pool: this.name }, this.queue.length)
    if (this.plane === 'data') return
    for (const b of this.members) {
      const labels = { pool: this.name, backend: b.id }
      m.backendConnectionsActive.set(labels, b.active)
      if (this.plane === 'control') continue
      if (b.established > b.countedEstablished) {
        m.backendConnectionsTotal.inc(labels, b.established - b.countedEstablished)
        b.countedEstablished = b.established
      }
    }
  }

  /** A connection to `b` was established `ms` after it was started (for latency-aware algorithms). */
  observeConnect(b: Backend, ms: number): void {
    if (!b.retired) this.balancerOf(b).onConnectLatency?.(b, ms)
  }

  /**
   * Moves `b` to `state`. A backend entering the rotation slow-starts (when the pool has
   * `slow_start`): it came back up, was enabled, or was added by a reload. The one exception is
   * `firstCheck`, the health owner saying this is the backend's first verdict: a backend the
   * pool was created with, entering the rotation for the first time, is then starting along
   * with the pool and takes its full weight. (One whose first check failed ramps when a later
   * check brings it up.)
   */
  setState(b: Backend, state: BackendState, firstCheck = false, decidedAt?: number): void {
    if (b.state === state) return
    const was = b.inRotation
    b.state = state
    if (was && !b.inRotation) this.balancerOf(b).onBackendDown(b)
    if (!was && b.inRotation) {
      // Entering the rotation starts a new run of consecutive failures (after an ejection, say).
      // The data path owns that count: the control plane's pool only reads it.
      if (this.plane !== 'control' && b.consecutiveFailures !== 0) b.consecutiveFailures = 0
      const starting = this.original.delete(b) && firstCheck
      // decidedAt (epoch ms): the control plane's moment, so every worker ramps from it.
      if (!starting) this.slowStart.join(b, decidedAt === undefined ? 0 : Date.now() - decidedAt)
      this.balancerOf(b).onBackendUp(b)
    }
    if (this.plane !== 'data') this.metrics.backendUp.set({ pool: this.name, backend: b.id }, b.inRotation ? 1 : 0)
    if (b.inRotation) this.queue.kick()
    this.onStateChange?.(b, firstCheck)
    this.changed()
  }

  /** Called after every change of a backend's state (the control plane tells the workers). */
  onStateChange: ((b: Backend, firstCheck: boolean) => void) | undefined

  private readonly watchers = new Set<() => void>()

  /**
   * Calls `fn` after every change of membership or of a backend's state (what a copy of the
   * pool kept elsewhere, the native DNS relay's, follows). Returns the call that stops it.
   */
  watch(fn: () => void): () => void {
    const w = (): void => fn()
    this.watchers.add(w)
    return () => {
      this.watchers.delete(w)
    }
  }

  private changed(): void {
    for (const w of this.watchers) w()
  }

  /**
   * Takes a new configuration of this pool in place: backends whose address stays keep their
   * state and counters (open connections are untouched); removed ones leave the rotation and
   * finish what they have; a new algorithm starts fresh.
   */
  update(cfg: PoolConfig): Backend[] {
    const old = new Map(this.members.map((b) => [b.id, b]))
    const removed: Backend[] = []
    this.slowStart.configure(cfg.slowStartMs)
    const next = cfg.backends.map((bc) => {
      const b = old.get(bc.address)
      if (b === undefined) return this.slowStart.join(new Backend(bc))
      old.delete(bc.address)
      b.weight = bc.weight
      b.backup = bc.backup
      b.maxConnections = bc.maxConnections
      return b
    })
    for (const b of old.values()) {
      b.retired = true
      // It finishes its open connections and takes no new ones: as the status shows it.
      b.state = 'draining'
      this.leavingMembers.push(b)
      removed.push(b)
      if (this.plane !== 'data') {
        this.metrics.backendUp.remove({ pool: this.name, backend: b.id })
        this.metrics.backendConnectionsActive.remove({ pool: this.name, backend: b.id })
      }
    }
    this.cfg = cfg
    this.factory = factoryFor(cfg)
    this.members = next
    this.primary = this.factory.create([], cfg.algorithmOptions)
    this.backup = this.factory.create([], cfg.algorithmOptions)
    this.rebuild()
    // New backends or a higher max_connections may have room for what waits.
    this.queue.kick()
    this.changed()
    return removed
  }

  /** Removed backends still finishing connections (shown as draining until their last one ends). */
  private leavingMembers: Backend[] = []

  get leaving(): readonly Backend[] {
    const ids = new Set(this.members.map((b) => b.id))
    this.leavingMembers = this.leavingMembers.filter((b) => b.active > 0 && !ids.has(b.id))
    return this.leavingMembers
  }

  private rebuild(): void {
    this.members.forEach((b, i) => (b.position = i))
    for (const b of this.members) {
      if (b.inRotation) this.balancerOf(b).onBackendUp(b)
      if (this.plane !== 'data') this.metrics.backendUp.set({ pool: this.name, backend: b.id }, b.inRotation ? 1 : 0)
    }
  }

  private balancerOf(b: Backend): Balancer {
    return b.backup ? this.backup : this.primary
  }
}

/** Skips backends already tried for this connection and backends at max_connections. */
class PickExclusion implements Exclusion {
  tried: ReadonlySet<Backend> | undefined

  has(b: Backend): boolean {
    return b.full || (this.tried !== undefined && this.tried.has(b))
  }
}

function factoryFor(cfg: PoolConfig): BalancerFactory {
  const f = findBalancer(cfg.algorithm)
  if (f === undefined) throw new TypeError(`pool ${cfg.name}: unknown algorithm ${cfg.algorithm} passed validation`)
  return f
}
