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
  private stopping: Promise<void> | undefined
  /** The admin HTTP API, when the configuration has `admin`. Started last, closed first. */
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

  /** Listeners bound, configuration loaded, not stopping: what GET /readyz reports. */
  get ready(): boolean {
    if (this.stopping !== undefined) return false
    for (const l of this.listeners.values()) if (!l.listening) return false
    return true
  }

  /**
   * Applies `next` as a diff. New listeners are bound first; if any cannot bind, nothing
   * changes and the error is thrown. Then pools update in place (backends that stay keep
   * their counters and open connections), listeners whose address is unchanged keep their
   * socket and switch to the new settings, and removed listeners stop accepting and drain.
   */
  async reload(next: Config): Promise<void> {
    const started: Listener[] = []
    const startedDemo: [string, DemoServer][] = []
    const newPools = new Map<string, Pool>()
    let newAdmin: AdminServer | undefined
    try {
      for (const dc of next.demoBackends) {
        if (!this.demo.has(demoKey(dc))) {
          const db = createDemoBackend(dc)
          await db.listen()
          startedDemo.push([demoKey(dc), db])
        }
      }
      for (const pc of next.pools.values()) {
        if (!this.pools.has(pc.name)) newPools.set(pc.name, new Pool(pc, this.metrics))
      }
      for (const lc of next.listeners) {
        const old = this.listeners.get(lc.name)
        if (old !== undefined && sameAddress(old.config, lc)) continue
        const l = createListener(lc, this.pools.get(lc.pool) ?? (newPools.get(lc.pool) as Pool), this.log, this.metrics, next.log.accessLog)
        // Until the switch-over below, a route may name a pool that only this reload creates.
        if (l instanceof TcpListener) l.poolLookup = (name) => this.pools.get(name) ?? newPools.get(name)
        await l.listen()
        started.push(l)
      }
      if (next.admin !== undefined && (this.admin === undefined || !sameAdminAddress(this.admin.config, next.admin))) {
        newAdmin = new AdminServer(next.admin, this)
        await newAdmin.listen()
      }
    } catch (err) {
      newAdmin?.destroy()
      for (const l of started) l.destroy()
      for (const [, db] of startedDemo) db.close()
      throw err
    }

    // Everything that can fail has succeeded: switch over.
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

    const startedByName = new Map(started.map((l) => [l.config.name, l]))
    const wanted = new Set(next.listeners.map((l) => l.name))
    for (const lc of next.listeners) {
      const fresh = startedByName.get(lc.name)
      const old = this.listeners.get(lc.name)
      if (fresh !== undefined) {
        if (old !== undefined) this.retire(old)
        this.listeners.set(lc.name, fresh)
      } else if (old !== undefined) {
        old.update(lc, this.pools.get(lc.pool) as Pool, next.log.accessLog)
      }
    }
    for (const [name, l] of this.listeners) {
      if (!wanted.has(name)) {
        this.listeners.delete(name)
        this.retire(l)
      }
    }
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
    this.stopping ??= this.gracefulStop()
    return this.stopping
  }

  /** Closes everything now. */
  destroy(): void {
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
    const admin = this.admin
    this.admin = undefined
    await admin?.close()
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

function sameAddress(a: AnyListenerConfig, b: AnyListenerConfig): boolean {
  return a.host === b.host && a.port === b.port && a.protocol === b.protocol
}

function demoKey(d: DemoBackendConfig): string {
  return `${d.protocol}:${d.listen}`
}
