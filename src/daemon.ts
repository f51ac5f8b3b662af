import { Registry } from 'prom-client'
import type { AdminConfig, AnyListenerConfig, Config, DemoBackendConfig } from './config/types.js'
import type { Logger } from './log.js'
import { Metrics } from './metrics/metrics.js'
import { Pool } from './upstream/pool.js'
import { createListener, type Listener } from './listener/listener.js'
import { TcpListener } from './listener/tcp-listener.js'
import { createDemoBackend, type DemoServer } from './demo/demo-backend.js'
import { formatDuration } from './config/duration.js'
import { PoolHealth } from './health/pool-health.js'
import { AdminServer } from './admin/admin-server.js'
import { planListeners } from './listener/listener-plan.js'
import { SluiceError } from './errors.js'

export interface DaemonOptions {
  log: Logger
  /** Defaults to a fresh Registry, so several daemons can live in one process (tests). */
  registry?: Registry
}

/**
 * The running load balancer: pools, listeners and demo backends built from a Config.
 * Starts in order (demo backends, pools, listeners) and stops in reverse. A reload applies
 * a new Config as a diff and never cuts an open connection.
 */
export class Daemon {
  readonly metrics: Metrics
  readonly registry: Registry
  readonly pools = new Map<string, Pool>()
  readonly listeners = new Map<string, Listener>()
  private readonly demo = new Map<string, DemoServer>()
  /** Active checks and passive ejection per pool (docs/health-checks.md). */
  private readonly health = new Map<string, PoolHealth>()
  /** Listeners taken out by a reload, still finishing their connections. */
  private readonly retiring = new Set<Listener>()
  /** Set by the first stop() or destroy(): from then on no reload is taken. */
  private stopRequested = false
  private stopRun: Promise<void> | undefined
  /** Reloads being applied: a stop lets them finish (or give up) before it reports "sluice stopped". */
  private readonly applying = new Set<Promise<void>>()
  /**
   * The admin HTTP API, when the configuration has `admin`. Started last; on stop it keeps
   * answering (503 on /readyz) until the listeners have drained, then closes.
   */
  private admin: AdminServer | undefined
  readonly startedAt = Date.now()

  private constructor(
    private cfg: Config,
    readonly log: Logger,
    registry: Registry,
  ) {
    this.registry = registry
    this.metrics = new Metrics(registry, () => this.flushCounters())
  }

  get config(): Config {
    return this.cfg
  }

  /** Builds and binds everything; on failure closes what it opened and rethrows. */
  static async start(config: Config, opts: DaemonOptions): Promise<Daemon> {
    const d = new Daemon(config, opts.log, opts.registry ?? new Registry())
    try {
      for (const dc of config.demoBackends) await d.startDemo(demoKey(dc), createDemoBackend(dc))
      for (const pc of config.pools.values()) d.pools.set(pc.name, new Pool(pc, d.metrics))
      // Every checked backend gets its first probe (bounded by its timeout) before any listener accepts.
      await d.syncHealth()
      for (const lc of config.listeners) {
        const l = d.makeListener(lc)
        await l.listen()
        d.listeners.set(lc.name, l)
      }
      if (config.admin !== undefined) {
        const admin = new AdminServer(config.admin, d)
        await admin.listen()
        d.admin = admin
      }
    } catch (err) {
      d.destroy()
      throw err
    }
    d.logSummary('sluice started')
    return d
  }

  /** The bound address of a listener (its real port when configured with port 0). */
  listenerAddress(name: string): { host: string; port: number } {
    const l = this.listeners.get(name)
    if (l === undefined) throw new TypeError(`no listener named ${name}`)
    return l.address()
  }

  /** The admin API's bound address, when it runs. */
  adminAddress(): { host: string; port: number; text: string } | undefined {
    return this.admin?.address()
  }

  /** True from the first stop() (or destroy()) on: the daemon drains and takes no reload. */
  get stopping(): boolean {
    return this.stopRequested
  }

  /** Listeners bound, configuration loaded, not stopping: what GET /readyz reports. */
  get ready(): boolean {
    if (this.stopRequested) return false
    for (const l of this.listeners.values()) if (!l.listening) return false
    return true
  }

  /**
   * Applies `next` as a diff. New listeners are bound first; if any cannot bind, nothing
   * changes and the error is thrown. Then pools update in place (backends that stay keep
   * their counters and open connections), listeners keep their socket by address (protocol,
   * host, port: a renamed listener keeps its socket and its connections, see planListeners)
   * and switch to the new settings, and the listeners no one takes over stop accepting and
   * drain. Once stop() has begun a reload is refused with ReloadWhileStopping, also when the
   * stop begins while the new sockets are being bound: those are closed again.
   */
  reload(next: Config): Promise<void> {
    if (this.stopRequested) return Promise.reject(new ReloadWhileStopping())
    const run = this.applyReload(next)
    const settled = run.then(
      () => undefined,
      () => undefined,
    )
    this.applying.add(settled)
    void settled.then(() => this.applying.delete(settled))
    return run
  }

  private async applyReload(next: Config): Promise<void> {
    const plan = planListeners(this.listeners.values(), next.listeners)
    const started = new Map<AnyListenerConfig, Listener>()
    const startedDemo: [string, DemoServer][] = []
    const newPools = new Map<string, Pool>()
    let newAdmin: AdminServer | undefined
    const stillRunning = (): void => {
      if (this.stopRequested) throw new ReloadWhileStopping()
    }
    try {
      for (const dc of next.demoBackends) {
        if (!this.demo.has(demoKey(dc))) {
          const db = createDemoBackend(dc)
          await db.listen()
          startedDemo.push([demoKey(dc), db])
          stillRunning()
        }
      }
      for (const pc of next.pools.values()) {
        if (!this.pools.has(pc.name)) newPools.set(pc.name, new Pool(pc, this.metrics))
      }
      for (const lc of plan.bind) {
        const l = createListener(lc, this.pools.get(lc.pool) ?? (newPools.get(lc.pool) as Pool), this.log, this.metrics, next.log.accessLog)
        // Until the switch-over below, a route may name a pool that only this reload creates.
        if (l instanceof TcpListener) l.poolLookup = (name) => this.pools.get(name) ?? newPools.get(name)
        // Recorded before it binds, so a failed bind still closes what the listener holds.
        started.set(lc, l)
        await l.listen()
        stillRunning()
      }
      if (next.admin !== undefined && (this.admin === undefined || !sameAdminAddress(this.admin.config, next.admin))) {
        newAdmin = new AdminServer(next.admin, this)
        await newAdmin.listen()
        stillRunning()
      }
    } catch (err) {
      newAdmin?.destroy()
      for (const l of started.values()) l.destroy()
      for (const [, db] of startedDemo) db.close()
      throw err
    }

    // Everything that can fail has succeeded, and no stop has begun: switch over.
    this.log.level = next.log.level
    for (const [listen, db] of startedDemo) this.demo.set(listen, db)
    const wantedDemo = new Set(next.demoBackends.map(demoKey))
    for (const [listen, db] of this.demo) {
      if (!wantedDemo.has(listen)) {
        db.close()
        this.demo.delete(listen)
      }
    }
    for (const pc of next.pools.values()) {
      const existing = this.pools.get(pc.name)
      if (existing !== undefined) existing.update(pc)
      else this.pools.set(pc.name, newPools.get(pc.name) as Pool)
    }
    for (const name of [...this.pools.keys()]) if (!next.pools.has(name)) this.pools.delete(name)

    this.listeners.clear()
    for (const lc of next.listeners) {
      const kept = plan.keep.get(lc)
      if (kept !== undefined) kept.update(lc, this.pools.get(lc.pool) as Pool, next.log.accessLog)
      this.listeners.set(lc.name, kept ?? (started.get(lc) as Listener))
    }
    for (const l of plan.retire) this.retire(l)
    if (newAdmin !== undefined) {
      // The old server finishes the request in flight (perhaps this very POST /api/reload).
      void this.admin?.close()
      this.admin = newAdmin
    } else if (next.admin === undefined) {
      void this.admin?.close()
      this.admin = undefined
    } else {
      this.admin?.update(next.admin)
    }
    this.cfg = next
    await this.syncHealth()
    this.logSummary('configuration reloaded')
  }

  /**
   * Graceful stop: stop accepting everywhere, let open connections finish for up to
   * shutdown_timeout, then close what is left. Calling it again returns the same promise.
   */
  stop(): Promise<void> {
    this.stopRequested = true
    this.stopRun ??= this.gracefulStop()
    return this.stopRun
  }

  /** Closes everything now. A destroyed daemon takes no reload either. */
  destroy(): void {
    this.stopRequested = true
    for (const h of this.health.values()) h.close()
    this.health.clear()
    this.admin?.destroy()
    this.admin = undefined
    for (const l of [...this.listeners.values(), ...this.retiring]) l.destroy()
    for (const db of this.demo.values()) db.close()
    this.listeners.clear()
    this.retiring.clear()
    this.demo.clear()
  }

  get openConnections(): number {
    let n = 0
    for (const l of [...this.listeners.values(), ...this.retiring]) n += l.sessions.size
    return n
  }

  private async gracefulStop(): Promise<void> {
    const all = [...this.listeners.values(), ...this.retiring]
    const open = this.openConnections
    const limit = this.cfg.shutdownTimeoutMs
    this.log.info({ open_connections: open, shutdown_timeout: formatDuration(limit) }, 'sluice stopping: no new connections; open ones may finish')
    const drained = Promise.all(all.map((l) => l.close()))
    let timer: NodeJS.Timeout | undefined
    const deadline = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), limit)
    })
    const outcome = await Promise.race([drained.then(() => 'drained' as const), deadline])
    clearTimeout(timer)
    if (outcome === 'timeout') {
      this.log.warn({ open_connections: this.openConnections }, 'shutdown_timeout reached: closing the connections still open')
      for (const l of all) l.destroy()
      // Destroyed sockets close on the next turns of the loop; wait (briefly) so each one
      // still gets its access-log line.
      await Promise.race([drained, new Promise((resolve) => setTimeout(resolve, 1000).unref())])
    }
    // A reload that switched over just before the stop may still wait for its new backends'
    // first probes: stopping the checks ends that wait, so it reports before "sluice stopped".
    for (const h of this.health.values()) h.close()
    await Promise.all(this.applying)
    // The admin API answered until now (503 on /readyz): the listeners are closed.
    const admin = this.admin
    this.admin = undefined
    await admin?.close()
    this.destroy()
    this.log.info('sluice stopped')
  }

  private makeListener(lc: AnyListenerConfig): Listener {
    const pool = this.pools.get(lc.pool)
    if (pool === undefined) throw new TypeError(`listener ${lc.name}: pool ${lc.pool} passed validation but does not exist`)
    const l = createListener(lc, pool, this.log, this.metrics, this.cfg.log.accessLog)
    // Routes find their pools in the daemon's live map (reloads update it in place).
    if (l instanceof TcpListener) l.poolLookup = (name) => this.pools.get(name)
    return l
  }

  /** Starts, updates or stops each pool's health checking to match the pools; resolves after new backends' first probes. */
  private syncHealth(): Promise<void> {
    for (const [name, h] of this.health) {
      if (!this.pools.has(name)) {
        h.close()
        this.health.delete(name)
      }
    }
    const firsts: Promise<void>[] = []
    for (const pool of this.pools.values()) {
      const h = this.health.get(pool.name)
      if (h !== undefined) {
        firsts.push(h.update())
        continue
      }
      const fresh = new PoolHealth(pool, this.log, this.metrics)
      this.health.set(pool.name, fresh)
      firsts.push(fresh.start())
    }
    return Promise.all(firsts).then(() => undefined)
  }

  private async startDemo(listen: string, db: DemoServer): Promise<void> {
    await db.listen()
    this.demo.set(listen, db)
  }

  private retire(l: Listener): void {
    this.retiring.add(l)
    void l.close().then(() => this.retiring.delete(l))
  }

  private flushCounters(): void {
    for (const l of this.listeners.values()) l.flushCounters()
    for (const l of this.retiring) l.flushCounters()
    for (const p of this.pools.values()) p.flushCounters()
  }

  private logSummary(msg: string): void {
    const listeners = [...this.listeners.values()].map((l) => ({
      name: l.name,
      listen: l.address().text,
      pool: l.config.pool,
    }))
    const pools = [...this.pools.values()].map((p) => ({
      name: p.name,
      algorithm: p.config.algorithm,
      backends: p.backends.map((b) => b.id),
    }))
    const demo = [...this.demo.values()].map((d) => `${d.config.protocol} ${d.config.listen}`)
    const admin = this.admin?.address().text
    this.log.info({ file: this.cfg.file, listeners, pools, demo_backends: demo.length > 0 ? demo : undefined, admin }, msg)
  }
}

function sameAdminAddress(a: AdminConfig, b: AdminConfig): boolean {
  return a.host === b.host && a.port === b.port
}

function demoKey(d: DemoBackendConfig): string {
  return `${d.protocol}:${d.listen}`
}

/** A reload asked of a daemon that is stopping: it is refused, nothing changes. */
export class ReloadWhileStopping extends SluiceError {
  constructor() {
    super('SLUICE_ERR_RELOAD', 'reload refused: sluice is stopping (open connections are draining); nothing was changed')
    this.name = 'ReloadWhileStopping'
  }
}
