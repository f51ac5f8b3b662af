import { Registry } from 'prom-client'
import { establishedMetric, mergeExposition } from './control/metrics-merge.js'
import type { AdminConfig, BackendConfig, Config, DemoBackendConfig } from './config/types.js'
import type { Backend } from './upstream/backend.js'
import type { Logger } from './log.js'
import { warnDescriptorLimit } from './fd-budget.js'
import { BACKEND_CONNECTIONS_TOTAL, Metrics } from './metrics/metrics.js'
import { Pool } from './upstream/pool.js'
import type { Listener } from './listener/listener.js'
import { createDemoBackend, type DemoServer } from './demo/demo-backend.js'
import { formatDuration } from './config/duration.js'
import { formatAddress } from './config/address.js'
import { PoolHealth } from './health/pool-health.js'
import { AdminServer } from './admin/admin-server.js'
import { SluiceError } from './errors.js'
import { SharedCounters, SlotAllocator } from './control/shared-counters.js'
import { SourceTables } from './control/source-tables.js'
import { backendSlotKey, listenerSlotKey, type BackendStateEntry, type FromWorker, type SlotTable, type WorkerSnapshot } from './control/messages.js'
import { InProcessWorker, ThreadWorker, type WorkerLink } from './control/worker-link.js'
import { ReloadWhileStopping, type ControlApi, type ListenerView, type WorkerView } from './control/control-api.js'
import { PoolMembers } from './control/pool-members.js'

export { ReloadWhileStopping }

export interface DaemonOptions {
  log: Logger
  /** Defaults to a fresh Registry, so several daemons can live in one process (tests). */
  registry?: Registry
  /**
   * With several workers: where the worker threads' log lines go (newline-separated JSON
   * lines): the destination of `log`, so one writer owns it. Unset: stdout.
   */
  workerLines?: (lines: string) => void
  /**
   * Run the data plane in a worker thread even with `workers: 1`, so the admin API, scrapes
   * and health checks never share its event loop (what `sluice run` does). Off, a one-worker
   * data plane runs in this thread (tests reach its listeners and pools directly).
   */
  threads?: boolean
}

type StatsReply = Extract<FromWorker, { type: 'stats' }>

/** Slots in the shared counter table: two per backend (active, consecutive failures), one per listener. */
const COUNTER_SLOTS = 1 << 17

/**
 * The control plane, and the composition of the whole daemon. It owns the configuration
 * (load, check, two-phase reload), health checking and passive ejection, backend admin state,
 * the admin API and the aggregation of metrics and status; it never touches a client byte.
 * The data plane (listeners, pools, sessions) runs in `workers` data planes: in this thread
 * for one worker, in worker threads for more, reached through the same messages either way.
 * Its pools here are the decided state: health and operators write them, and every change is
 * sent to every worker.
 */
export class Daemon implements ControlApi {
  readonly metrics: Metrics
  readonly registry: Registry
  /** The decided state of every pool: what health checks and operators write. */
  readonly pools = new Map<string, Pool>()
  private readonly demo = new Map<string, DemoServer>()
  /** Active checks and passive ejection per pool (docs/health-checks.md). */
  private readonly health = new Map<string, PoolHealth>()
  private readonly counters = SharedCounters.create(COUNTER_SLOTS)
  private readonly slots = new SlotAllocator(this.counters)
  /** Per-source counts and rates (access and limits), shared by every worker. */
  private readonly sources = SourceTables.create()
  private workers: WorkerLink[] = []
  /** Ports of listeners configured with port 0, as the first worker bound them (every worker binds the same). */
  private ports: Record<string, number> = {}
  private seq = 0
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
  private readonly workerLines: (lines: string) => void
  private threads = false
  /** Each pool's membership: `backends`, discovery sources, run-time changes (control/pool-members.ts). */
  readonly members: PoolMembers = new PoolMembers(this)

  private constructor(
    private cfg: Config,
    readonly log: Logger,
    registry: Registry,
    workerLines: ((lines: string) => void) | undefined,
  ) {
    this.registry = registry
    this.metrics = new Metrics(registry, () => this.flushCounters())
    this.workerLines = workerLines ?? ((lines) => process.stdout.write(`${lines}\n`))
  }

  get config(): Config {
    return this.cfg
  }

  /** Builds and binds everything; on failure closes what it opened and rethrows. */
  static async start(config: Config, opts: DaemonOptions): Promise<Daemon> {
    const d = new Daemon(config, opts.log, opts.registry ?? new Registry(), opts.workerLines)
    d.threads = opts.threads ?? false
    try {
      for (const dc of config.demoBackends) {
        const db = createDemoBackend(dc)
        await db.listen()
        d.demo.set(demoKey(dc), db)
      }
      // Each pool's discovery sources give their first sets (bounded) before the pools are built.
      await d.members.sync(config)
      const effective = d.members.effective(config)
      for (const pc of effective.pools.values()) d.pools.set(pc.name, d.makePool(pc.name, effective))
      d.members.started = true
      // Every checked backend gets its first probe (bounded by its timeout) before any listener accepts.
      await d.syncHealth()
      d.workers = Array.from({ length: config.workers }, (_, i) => d.makeWorker(i + 1))
      // A membership change during the first prepare/commit would reach no worker's pool yet: it waits.
      d.members.hold()
      try {
        await d.prepareAndCommit(config, d.workers)
      } finally {
        d.members.release()
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
    // After the summary: the open-files limit cannot hold what max_connections and udp.max_sessions allow.
    warnDescriptorLimit(config, d.log)
    return d
  }

  /** The in-process data plane (one worker), if that is how this daemon runs. */
  private get local(): InProcessWorker | undefined {
    const w = this.workers[0]
    return w instanceof InProcessWorker ? w : undefined
  }

  /** The listeners of the in-process data plane (one worker); empty with worker threads. */
  get listeners(): ReadonlyMap<string, Listener> {
    return this.local?.plane.listeners ?? new Map()
  }

  /** Makes worker `id` exit at once, as a crash would (fault injection for tests). */
  crashWorker(id: number): void {
    this.workers.find((w) => w.id === id)?.send({ type: 'exit', code: 1 })
  }

  /** The pools of the in-process data plane (one worker), which carry the traffic; empty with worker threads. */
  get dataPools(): ReadonlyMap<string, Pool> {
    return this.local?.plane.pools ?? new Map()
  }

  /** The bound address of a listener (its real port when configured with port 0). */
  listenerAddress(name: string): { host: string; port: number } {
    const l = this.local?.plane.listeners.get(name)
    if (l !== undefined) return l.address()
    const lc = this.cfg.listeners.find((x) => x.name === name)
    if (lc === undefined) throw new TypeError(`no listener named ${name}`)
    return { host: lc.host, port: lc.port === 0 ? (this.ports[name] ?? 0) : lc.port }
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
    const local = this.local
    if (local !== undefined) for (const l of local.plane.listeners.values()) if (!l.listening) return false
    return this.workers.length > 0
  }

  /** Connections open now, over every worker (exact only for the in-process data plane). */
  get openConnections(): number {
    return this.local?.plane.openConnections ?? 0
  }

  /**
   * Applies `next` as a diff, in two phases across the workers: each prepares (builds new
   * pools, binds the listeners it needs; a listener keeps its socket by address), and only
   * when all have succeeded do they all switch over; a failure anywhere changes nothing
   * anywhere and is thrown. Once stop() has begun a reload is refused with
   * ReloadWhileStopping, also when the stop begins while the new sockets are being bound.
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

  private async applyReload(file: Config): Promise<void> {
    // Membership changes that come while a reload is applied wait for it (they would race its commit).
    this.members.hold()
    try {
      await this.applyReloadHeld(file)
    } finally {
      this.members.release()
    }
  }

  private async applyReloadHeld(file: Config): Promise<void> {
    const next = this.members.effective(file)
    const startedDemo: [string, DemoServer][] = []
    let newAdmin: AdminServer | undefined
    let prepared: { slots: SlotTable; fresh: string[] } | undefined
    try {
      for (const dc of next.demoBackends) {
        if (!this.demo.has(demoKey(dc))) {
          const db = createDemoBackend(dc)
          await db.listen()
          startedDemo.push([demoKey(dc), db])
          this.stillRunning()
        }
      }
      prepared = await this.prepare(next, this.workers)
      this.stillRunning()
      if (next.admin !== undefined && (this.admin === undefined || !sameAdminAddress(this.admin.config, next.admin))) {
        newAdmin = new AdminServer(next.admin, this)
        await newAdmin.listen()
        this.stillRunning()
      }
    } catch (err) {
      newAdmin?.destroy()
      if (prepared !== undefined) {
        for (const w of this.workers) w.send({ type: 'abort', seq: ++this.seq })
        this.releaseSlots(prepared.fresh)
      }
      for (const [, db] of startedDemo) db.close()
      throw err
    }

    // Every worker prepared, and no stop has begun: switch over, here and then in the workers.
    this.log.level = next.log.level
    for (const [listen, db] of startedDemo) this.demo.set(listen, db)
    const wantedDemo = new Set(next.demoBackends.map(demoKey))
    for (const [listen, db] of this.demo) {
      if (!wantedDemo.has(listen)) {
        db.close()
        this.demo.delete(listen)
      }
    }
    const gone: [string, Backend][] = []
    for (const pc of next.pools.values()) {
      const existing = this.pools.get(pc.name)
      if (existing === undefined) {
        this.pools.set(pc.name, this.makePool(pc.name, next))
        continue
      }
      for (const b of existing.update(pc)) gone.push([backendSlotKey(pc.name, b.id), b])
      this.bindSlots(existing)
    }
    for (const [name, pool] of [...this.pools]) {
      if (next.pools.has(name)) continue
      this.pools.delete(name)
      for (const b of pool.backends) gone.push([backendSlotKey(name, b.id), b])
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
    const previous = this.cfg
    this.cfg = file
    // New backends are marked down until their first probe before the workers switch over.
    const firstProbes = this.syncHealth()
    await this.commit(this.workers)
    for (const [key, b] of gone) this.retireSlot(key, b)
    for (const lc of previous.listeners) if (!next.listeners.some((x) => x.name === lc.name)) this.slots.release(listenerSlotKey(lc.name))
    // Sources added or changed by the reload start now; their sets come as membership changes.
    void this.members.sync(file)
    await firstProbes
    this.logSummary('configuration reloaded')
  }

  private stillRunning(): void {
    if (this.stopRequested) throw new ReloadWhileStopping()
  }

  /**
   * Phase one in `workers`: the first binds (so listeners on port 0 get their port), then the
   * others bind the same ports. Returns the slot table sent and the keys it newly allocated.
   * Throws (after aborting the workers that prepared, and releasing those keys) when any fails.
   */
  private async prepare(file: Config, workers: readonly WorkerLink[]): Promise<{ slots: SlotTable; fresh: string[] }> {
    // Each pool's members as merged here (discovery, run-time changes); a worker parses only the file.
    const config = this.members.effective(file)
    const members: Record<string, BackendConfig[]> = {}
    for (const pc of config.pools.values()) members[pc.name] = pc.backends
    const fresh: string[] = []
    const slots = this.slotTable(config, fresh)
    const source = { text: config.source?.text ?? '', file: config.file, env: config.source?.env ?? {} }
    const done: WorkerLink[] = []
    const one = async (w: WorkerLink, ports: Record<string, number>): Promise<Record<string, number>> => {
      const r = await w.request({ type: 'prepare', seq: ++this.seq, source, slots, ports, members }, config)
      if (!r.ok) throw new SluiceError(r.code === 'SLUICE_ERR_LISTEN' ? 'SLUICE_ERR_LISTEN' : 'SLUICE_ERR_RELOAD', workers.length > 1 ? `worker ${w.id}: ${r.message}` : r.message)
      done.push(w)
      return r.ports
    }
    try {
      const [first, ...rest] = workers
      if (first === undefined) return { slots, fresh }
      const ports = { ...this.ports, ...(await one(first, this.ports)) }
      await Promise.all(rest.map((w) => one(w, ports)))
      this.ports = ports
    } catch (err) {
      for (const w of done) w.send({ type: 'abort', seq: ++this.seq })
      this.releaseSlots(fresh)
      throw err
    }
    return { slots, fresh }
  }

  /** Slots handed out for a configuration that was not applied (no pool or listener holds them). */
  private releaseSlots(keys: readonly string[]): void {
    for (const k of keys) this.slots.release(k)
  }

  /** Phase two in `workers`, with the decided state of every backend. */
  private async commit(workers: readonly WorkerLink[]): Promise<void> {
    const states = this.states()
    await Promise.all(workers.map((w) => w.request({ type: 'commit', seq: ++this.seq, states }).catch(() => undefined)))
  }

  private async prepareAndCommit(config: Config, workers: readonly WorkerLink[]): Promise<void> {
    await this.prepare(config, workers)
    await this.commit(workers)
  }

  private states(): BackendStateEntry[] {
    const out: BackendStateEntry[] = []
    for (const p of this.pools.values()) for (const b of p.backends) out.push({ pool: p.name, backend: b.id, state: b.state })
    return out
  }

  /**
   * The shared-counter slots of `config`'s backends and listeners (allocated as needed); the
   * keys allocated here go in `fresh`, to be released if the configuration is not applied.
   */
  private slotTable(config: Config, fresh: string[]): SlotTable {
    const slots: SlotTable = {}
    const slotOf = (key: string): number => {
      if (!this.slots.has(key)) fresh.push(key)
      return this.slots.slotOf(key)
    }
    for (const pc of config.pools.values()) for (const b of pc.backends) slots[backendSlotKey(pc.name, b.address)] = slotOf(backendSlotKey(pc.name, b.address))
    for (const lc of config.listeners) slots[listenerSlotKey(lc.name)] = slotOf(listenerSlotKey(lc.name))
    return slots
  }

  /** Keys holding a slot of the shared counters (backends and listeners). */
  get sharedSlotsInUse(): number {
    return this.slots.used
  }

  private makePool(name: string, config: Config): Pool {
    const pool = new Pool(config.pools.get(name)!, this.metrics, undefined, 'control')
    this.bindSlots(pool)
    pool.onStateChange = (b, firstCheck) => {
      const at = Date.now()
      for (const w of this.workers) w.send({ type: 'backend-state', pool: pool.name, backend: b.id, state: b.state, firstCheck, at })
    }
    return pool
  }

  private bindSlots(pool: Pool): void {
    for (const b of pool.backends) b.bindShared(this.counters, this.slots.slotOf(backendSlotKey(pool.name, b.id)))
  }

  private makeWorker(id: number): WorkerLink {
    const onEvent = (link: WorkerLink, m: FromWorker): void => this.onWorkerEvent(link, m)
    if (this.cfg.workers <= 1 && !this.threads) return new InProcessWorker(id, this.log, this.counters, onEvent, this.sources)
    return new ThreadWorker(id, this.counters, this.cfg.log.level, this.cfg.workers > 1, onEvent, this.sources)
  }

  private onWorkerEvent(link: WorkerLink, m: FromWorker): void {
    if (m.type === 'connect-failed') {
      // Passive health: the shared consecutive-failure count already includes this one.
      const pool = this.pools.get(m.pool)
      const b = pool?.find(m.backend)
      if (pool !== undefined && b !== undefined) pool.onConnectFailure?.(b, m.reason)
      return
    }
    if (m.type === 'log') {
      this.workerLines(m.line)
      return
    }
    if (m.type === 'fatal') void this.workerDied(link, m.message)
  }

  /** A worker thread died: log it, count it, and start another in its place with the running configuration. */
  private async workerDied(link: WorkerLink, message: string): Promise<void> {
    const i = this.workers.indexOf(link)
    if (i < 0 || this.stopRequested) return
    this.metrics.workerRestartsTotal.inc()
    this.log.error({ code: 'SLUICE_ERR_WORKER', worker: link.id, error: message }, `worker ${link.id} died; its open connections are lost; starting it again`)
    void link.terminate()
    const fresh = this.makeWorker(link.id)
    this.workers[i] = fresh
    this.members.hold()
    try {
      await this.prepare(this.cfg, [fresh])
      await this.commit([fresh])
      this.log.info({ worker: fresh.id }, `worker ${fresh.id} started again`)
    } catch (err) {
      this.log.error({ code: 'SLUICE_ERR_WORKER', worker: fresh.id, error: err instanceof Error ? err.message : String(err) }, `worker ${fresh.id} could not be started again`)
    } finally {
      this.members.release()
    }
  }

  /**
   * Graceful stop: every worker stops accepting and lets open connections finish for up to
   * shutdown_timeout, then closes what is left. Calling it again returns the same promise.
   */
  stop(): Promise<void> {
    this.stopRequested = true
    this.stopRun ??= this.gracefulStop()
    return this.stopRun
  }

  /** Closes everything now. A destroyed daemon takes no reload either. */
  destroy(): void {
    this.stopRequested = true
    this.members.close()
    for (const h of this.health.values()) h.close()
    this.health.clear()
    this.admin?.destroy()
    this.admin = undefined
    for (const w of this.workers) void w.terminate()
    this.workers = []
    for (const db of this.demo.values()) db.close()
    this.demo.clear()
  }

  private async gracefulStop(): Promise<void> {
    const limit = this.cfg.shutdownTimeoutMs
    // Every worker stops accepting first; the count of what is left open comes after.
    const stopped = Promise.all(this.workers.map((w) => w.request({ type: 'stop', seq: ++this.seq, timeoutMs: limit }).catch(() => undefined)))
    const views = await this.workerSnapshots()
    const open = views.reduce((n, s) => n + s.activeConnections, 0)
    this.log.info({ open_connections: open, shutdown_timeout: formatDuration(limit) }, 'sluice stopping: no new connections; open ones may finish')
    await stopped
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

  private async workerSnapshots(): Promise<WorkerSnapshot[]> {
    const out: WorkerSnapshot[] = []
    for (const r of await this.workerStats()) out.push(r.snapshot)
    return out
  }

  /**
   * Every worker's snapshot and metrics. A request that comes while a round is under way
   * shares it instead of starting another: however many scrapes and status calls come in at
   * once, one round of collection (and one exposition) runs at a time.
   */
  private workerStats(): Promise<StatsReply[]> {
    this.collecting ??= Promise.all(this.workers.map((w) => w.request({ type: 'stats', seq: ++this.seq }).catch(() => undefined)))
      .then((rs) => rs.filter((r) => r !== undefined))
      .finally(() => (this.collecting = undefined))
    return this.collecting
  }

  private collecting: Promise<StatsReply[]> | undefined
  private exposing: Promise<string> | undefined

  async listenerViews(): Promise<ListenerView[]> {
    const shares = await this.workerSnapshots()
    const by = new Map<string, { name: string; protocol: 'tcp' | 'udp'; listen: string; pool: string; listening: boolean; activeConnections: number; dnsRelay?: 'native' | 'js' }>()
    for (const s of shares) {
      for (const l of s.listeners) {
        const v = by.get(l.name)
        if (v === undefined) by.set(l.name, { name: l.name, protocol: l.protocol, listen: l.listen, pool: l.pool, listening: l.listening, activeConnections: l.active, ...(l.dnsRelay !== undefined ? { dnsRelay: l.dnsRelay } : {}) })
        else {
          v.activeConnections += l.active
          v.listening = v.listening && l.listening
          if (l.dnsRelay === 'js' || (v.dnsRelay !== undefined && l.dnsRelay === undefined)) v.dnsRelay = 'js'
        }
      }
    }
    return this.cfg.listeners.map((lc) => by.get(lc.name)).filter((v) => v !== undefined)
  }

  async workerViews(): Promise<WorkerView[]> {
    const stats = await this.workerStats()
    return stats.map((r, i) => ({ id: this.workers[i]?.id ?? i + 1, relay: r.snapshot.relay, activeConnections: r.snapshot.activeConnections, connectionsTotal: r.snapshot.connectionsTotal }))
  }

  /** Connections handed to each backend since start, summed over the workers (`pool\nbackend` → n). */
  async backendTotals(): Promise<Map<string, number>> {
    const totals = new Map<string, number>()
    for (const s of await this.workerSnapshots()) {
      for (const share of s.backends) {
        share.backends.forEach((id, i) => {
          const key = backendSlotKey(share.pool, id)
          totals.set(key, (totals.get(key) ?? 0) + (share.totals[i] ?? 0))
        })
      }
    }
    return totals
  }

  /** Connections waiting in each pool's queue, summed over the workers. */
  async queueLengths(): Promise<Map<string, number>> {
    const out = new Map<string, number>()
    for (const s of await this.workerSnapshots()) for (const [pool, n] of Object.entries(s.queues ?? {})) out.set(pool, (out.get(pool) ?? 0) + n)
    return out
  }

  readonly metricsContentType = Registry.PROMETHEUS_CONTENT_TYPE

  metricsText(): Promise<string> {
    this.exposing ??= (async (): Promise<string> => {
      const stats = await this.workerStats()
      const own = await this.registry.getMetricsAsJSON()
      // Each worker's per-backend connection counts come in its snapshot, not as series.
      const template = own.find((m) => m.name === BACKEND_CONNECTIONS_TOTAL)
      const fromWorkers = stats.map((r) => (template === undefined ? r.metrics : [...r.metrics, establishedMetric(template, r.snapshot.backends)]))
      return mergeExposition([own, ...fromWorkers])
    })().finally(() => (this.exposing = undefined))
    return this.exposing
  }


  private flushCounters(): void {
    this.sweepSlots()
    for (const p of this.pools.values()) p.flushCounters()
  }

  putBackend(pool: string, address: string, host: string, port: number, settings: { weight?: number; backup?: boolean; maxConnections?: number }): void {
    this.members.put(pool, address, host, port, settings)
  }

  deleteBackend(pool: string, address: string): void {
    this.members.delete(pool, address)
  }

  private retirements = 0
  /** Removed backends whose slots wait for their last connection (then the slot may be reused). */
  private readonly retiredSlots = new Map<string, Backend>()

  /** `b` (key `key`) left its pool: its slot is released once its draining connections are over. */
  private retireSlot(key: string, b: Backend): void {
    this.retiredSlots.set(`${key}\n${++this.retirements}`, b)
    this.sweepSlots()
  }

  private sweepSlots(): void {
    for (const [k, b] of this.retiredSlots) {
      if (b.active > 0) continue
      this.retiredSlots.delete(k)
      b.unbindShared()
      const key = k.slice(0, k.lastIndexOf('\n'))
      // Not when the same address is a member again (removed and added back): it kept the key.
      const [pool = '', id = ''] = key.split('\n')
      if (this.pools.get(pool)?.find(id) === undefined) this.slots.release(key)
    }
  }

  /**
   * Applies pool `name`'s new membership (merged from its sources) as one diff, here and in
   * every worker: backends that stay keep state, counters and connections; new ones are
   * checked before they take traffic (when the pool has health checks); removed ones drain.
   * Returns what changed, or undefined when nothing did.
   */
  applyMembership(name: string, backends: BackendConfig[]): { added: string[]; removed: string[]; changed: string[] } | undefined {
    const pool = this.pools.get(name)
    if (pool === undefined) return undefined
    const before = new Map(pool.config.backends.map((b) => [b.address, b]))
    const added: string[] = []
    const changed: string[] = []
    for (const b of backends) {
      const o = before.get(b.address)
      if (o === undefined) added.push(b.address)
      else if (o.weight !== b.weight || o.backup !== b.backup || o.maxConnections !== b.maxConnections) changed.push(b.address)
      before.delete(b.address)
    }
    const removed = [...before.keys()]
    if (added.length === 0 && removed.length === 0 && changed.length === 0) return undefined
    const gone = pool.update({ ...pool.config, backends })
    this.bindSlots(pool)
    // New backends are marked down until their first probe before any worker hears of them.
    void this.health.get(name)?.update()
    const slots: SlotTable = {}
    for (const b of pool.backends) slots[backendSlotKey(name, b.id)] = this.slots.slotOf(backendSlotKey(name, b.id))
    const states = pool.backends.map((b) => ({ pool: name, backend: b.id, state: b.state }))
    for (const w of this.workers) w.send({ type: 'membership', pool: name, backends, slots, states })
    for (const b of gone) this.retireSlot(backendSlotKey(name, b.id), b)
    return { added, removed, changed }
  }

  private logSummary(msg: string): void {
    const local = this.local?.plane.listeners
    const listeners = this.cfg.listeners.map((lc) => ({ name: lc.name, listen: local?.get(lc.name)?.address().text ?? formatAddress(lc.host === '' ? '0.0.0.0' : lc.host, this.listenerAddress(lc.name).port), pool: lc.pool }))
    const pools = [...this.pools.values()].map((p) => ({
      name: p.name,
      algorithm: p.config.algorithm,
      backends: p.backends.map((b) => b.id),
    }))
    const demo = [...this.demo.values()].map((d) => `${d.config.protocol} ${d.config.listen}`)
    const admin = this.admin?.address().text
    this.log.info({ file: this.cfg.file, workers: this.cfg.workers, listeners, pools, demo_backends: demo.length > 0 ? demo : undefined, admin }, msg)
  }
}

function sameAdminAddress(a: AdminConfig, b: AdminConfig): boolean {
  return a.host === b.host && a.port === b.port
}

function demoKey(d: DemoBackendConfig): string {
  return `${d.protocol}:${d.listen}`
}
