import type { Registry } from 'prom-client'
import type { AnyListenerConfig, BackendConfig, Config } from '../config/types.js'
import type { Logger } from '../log.js'
import { Metrics } from '../metrics/metrics.js'
import { Pool } from '../upstream/pool.js'
import type { BackendState } from '../upstream/backend.js'
import { createListener, type Listener } from '../listener/listener.js'
import { TcpListener } from '../listener/tcp-listener.js'
import { planListeners, type ListenerPlan } from '../listener/listener-plan.js'
import { formatDuration } from '../config/duration.js'
import { SluiceError } from '../errors.js'
import type { SharedCounters } from '../control/shared-counters.js'
import { RelayHost } from '../proxy/relay-host.js'
import { ExhaustionGuard } from '../listener/accept-guard.js'
import { UdpListener } from '../listener/udp-listener.js'
import { SourceTables } from '../control/source-tables.js'
import { TimerWheel } from '../proxy/timer-wheel.js'
import { backendSlotKey, listenerSlotKey, type BackendShares, type BackendStateEntry, type FromWorker, type SlotTable, type WorkerSnapshot } from '../control/messages.js'

export interface DataPlaneOptions {
  /** 1-based; the one data plane of a one-worker daemon is worker 1. */
  id: number
  log: Logger
  registry: Registry
  counters: SharedCounters
  /** Several workers share each port (SO_REUSEPORT) and the balancing state. */
  shared: boolean
  /** What this data plane tells the control plane (connect failures, for passive health). */
  report(msg: FromWorker): void
  /** The daemon's per-source tables (access and limits), shared by every worker; absent: this plane's own. */
  sources?: SourceTables
}

interface Prepared {
  config: Config
  slots: SlotTable
  plan: ListenerPlan
  started: Map<AnyListenerConfig, Listener>
  newPools: Map<string, Pool>
  relay: RelayChoice
}

/** What a configuration asks of the relay: whether new connections go to it (and why it could not load). */
interface RelayChoice {
  wanted: boolean
  unavailable?: string
}

/**
 * One worker's data path: the listeners, the pools and balancers, and every session, built
 * from the configuration the control plane sends. It obeys decided state (backend states
 * arrive as messages) and reports what it sees (failed connects); it never decides health.
 * Start and reload are the same two phases: prepare (bind what is new; nothing running
 * changes), then commit or abort, so a reload that fails in any worker changes no worker.
 */
export class DataPlane {
  readonly id: number
  readonly metrics: Metrics
  readonly pools = new Map<string, Pool>()
  readonly listeners = new Map<string, Listener>()
  /** Listeners taken out by a reload, still finishing their connections. */
  private readonly retiring = new Set<Listener>()
  private cfg: Config | undefined
  private prepared: Prepared | undefined
  private stopping = false
  /** The native relay, once a configuration asked for one and it loaded. */
  private relay: RelayHost | undefined
  /** What carries established plain connections here, for the status and the log. */
  relayKind: 'native' | 'js' | undefined
  private readonly log: Logger
  private readonly counters: SharedCounters
  private readonly shared: boolean
  private readonly report: (msg: FromWorker) => void
  private readonly sources: SourceTables
  /** The deadlines of every session of this data plane (opening, queue, connect): one timer. */
  private readonly wheel = new TimerWheel()

  constructor(opts: DataPlaneOptions) {
    this.sources = opts.sources ?? SourceTables.create()
    this.id = opts.id
    this.log = opts.log
    this.counters = opts.counters
    this.shared = opts.shared
    this.report = opts.report
    this.metrics = new Metrics(opts.registry, () => this.flushCounters(), false)
    this.exhaustion = new ExhaustionGuard(this.log, () => this.tcpListeners())
  }

  /** Out of descriptors: pauses this worker's TCP listeners and retries (accept-guard.ts). */
  readonly exhaustion: ExhaustionGuard

  private *tcpListeners(): Iterable<TcpListener> {
    for (const l of this.listeners.values()) if (l instanceof TcpListener) yield l
  }

  get config(): Config | undefined {
    return this.cfg
  }

  /**
   * Phase one: builds the pools this configuration adds and binds the listeners it needs
   * (`ports` fixes the port of listeners configured with port 0, so every worker binds the
   * same one). Returns every listener's bound port. Nothing that runs changes.
   */
  async prepare(config: Config, slots: SlotTable, ports: Record<string, number>): Promise<Record<string, number>> {
    this.abort()
    const relay = this.relayFor(config)
    const listeners = config.listeners.map((lc) => (lc.port === 0 && ports[lc.name] !== undefined ? { ...lc, port: ports[lc.name] as number } : lc))
    const wanted: Config = { ...config, listeners }
    const plan = planListeners(this.listeners.values(), listeners)
    const p: Prepared = { config: wanted, slots, plan, started: new Map(), newPools: new Map(), relay }
    this.prepared = p
    try {
      for (const pc of wanted.pools.values()) {
        if (!this.pools.has(pc.name)) {
          const pool = this.makePool(pc.name, wanted, slots)
          p.newPools.set(pc.name, pool)
        }
      }
      for (const lc of plan.bind) {
        const pool = this.pools.get(lc.pool) ?? (p.newPools.get(lc.pool) as Pool)
        const l = createListener(lc, pool, this.log, this.metrics, wanted.log.accessLog, this.sources, this.wheel)
        if (l instanceof TcpListener || l instanceof UdpListener) l.exhaustion = this.exhaustion
        if (l instanceof UdpListener) l.nativeDnsAllowed = relay.wanted
        if (l instanceof TcpListener) {
          l.relay = relay.wanted ? this.relay : undefined
          l.poolLookup = (name) => this.pools.get(name) ?? p.newPools.get(name)
          const slot = slots[listenerSlotKey(lc.name)]
          if (slot !== undefined) l.admission = admissionAt(this.counters, slot)
        }
        // Recorded before it binds, so a failed bind still closes what the listener holds.
        p.started.set(lc, l)
        await l.listen(this.shared)
        // Aborted (a stop, or another worker failed) while this one was binding.
        if (this.prepared !== p) throw new SluiceError('SLUICE_ERR_RELOAD', 'the reload was called off while its listeners were being bound')
      }
    } catch (err) {
      if (this.prepared === p) this.prepared = undefined
      for (const l of p.started.values()) l.destroy()
      throw err
    }
    const bound: Record<string, number> = {}
    for (const lc of listeners) {
      const l = plan.keep.get(lc) ?? p.started.get(lc)
      if (l !== undefined) bound[lc.name] = l.address().port
    }
    return bound
  }

  /** Phase two: every worker prepared; switch over to the prepared configuration. */
  commit(): void {
    const p = this.prepared
    if (p === undefined) return
    this.prepared = undefined
    const next = p.config
    this.log.level = next.log.level
    this.applyRelay(p.relay)
    for (const pc of next.pools.values()) {
      const existing = this.pools.get(pc.name)
      if (existing !== undefined) {
        existing.update(pc)
        this.bindSlots(existing, p.slots)
      } else {
        this.pools.set(pc.name, p.newPools.get(pc.name) as Pool)
      }
    }
    for (const name of [...this.pools.keys()]) if (!next.pools.has(name)) this.pools.delete(name)
    this.listeners.clear()
    for (const lc of next.listeners) {
      const kept = p.plan.keep.get(lc)
      if (kept instanceof UdpListener) kept.nativeDnsAllowed = this.relayWanted
      if (kept !== undefined) kept.update(lc, this.pools.get(lc.pool) as Pool, next.log.accessLog)
      const l = kept ?? (p.started.get(lc) as Listener)
      if (l instanceof TcpListener) {
        l.poolLookup = (name) => this.pools.get(name)
        l.relay = this.activeRelay
        l.syncAcceptMode()
      }
      this.listeners.set(lc.name, l)
    }
    for (const l of p.plan.retire) this.retire(l)
    this.cfg = next
  }

  /** Some worker could not prepare: close what this one bound for the reload. */
  abort(): void {
    const p = this.prepared
    if (p === undefined) return
    this.prepared = undefined
    for (const l of p.started.values()) l.destroy()
  }

  /** The control plane decided a backend's state (health, ejection, an operator's action). */
  backendState(poolName: string, id: string, state: BackendState, firstCheck: boolean, at?: number): void {
    const pool = this.pools.get(poolName) ?? this.prepared?.newPools.get(poolName)
    const b = pool?.find(id)
    if (pool === undefined || b === undefined) return
    pool.setState(b, state, firstCheck, at)
  }

  /**
   * A pool's new membership (discovery, an admin change), as one diff: backends that stay keep
   * their state and counters, removed ones drain, balancers rebuild once; then every member's
   * decided state.
   */
  membership(poolName: string, backends: BackendConfig[], slots: SlotTable, states: readonly BackendStateEntry[]): void {
    const pool = this.pools.get(poolName)
    if (pool === undefined) return
    pool.update({ ...pool.config, backends })
    this.bindSlots(pool, slots)
    for (const s of states) if (s.pool === poolName) this.backendState(s.pool, s.backend, s.state, false)
  }

  /** This worker's share of the counters, for /api/status and /metrics. */
  snapshot(): WorkerSnapshot {
    const all = [...this.listeners.values(), ...this.retiring]
    const listeners = [...this.listeners.values()].map((l) => ({
      name: l.name,
      protocol: l.protocol,
      listen: l.address().text,
      pool: l.config.pool,
      listening: l.listening,
      active: l.sessions.size,
      ...(l instanceof UdpListener && l.dnsRelay !== undefined ? { dnsRelay: l.dnsRelay } : {}),
    }))
    const backends: BackendShares[] = []
    for (const p of this.pools.values()) {
      const share: BackendShares = { pool: p.name, backends: [], totals: [], established: [] }
      for (const b of p.backends) {
        if (b.total === 0 && b.established === 0) continue
        share.backends.push(b.id)
        share.totals.push(b.total)
        share.established.push(b.established)
      }
      if (share.backends.length > 0) backends.push(share)
    }
    let total = 0
    for (const l of all) total += l.accepted
    const queues: Record<string, number> = {}
    for (const p of this.pools.values()) if (p.queue.length > 0) queues[p.name] = p.queue.length
    return { relay: this.activeRelay === undefined ? 'js' : 'native', listeners, backends, activeConnections: all.reduce((n, l) => n + l.sessions.size, 0), connectionsTotal: total, queues }
  }

  get openConnections(): number {
    let n = 0
    for (const l of [...this.listeners.values(), ...this.retiring]) n += l.sessions.size
    return n
  }

  /**
   * Stops accepting everywhere, lets open connections finish for up to `timeoutMs`, then
   * closes what is left.
   */
  async stop(timeoutMs: number): Promise<void> {
    this.stopping = true
    this.abort()
    const all = [...this.listeners.values(), ...this.retiring]
    const drained = Promise.all(all.map((l) => l.close()))
    let timer: NodeJS.Timeout | undefined
    const deadline = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), timeoutMs)
    })
    const outcome = await Promise.race([drained.then(() => 'drained' as const), deadline])
    clearTimeout(timer)
    if (outcome === 'timeout') {
      this.log.warn({ open_connections: this.openConnections, shutdown_timeout: formatDuration(timeoutMs) }, 'shutdown_timeout reached: closing the connections still open')
      for (const l of all) l.destroy()
      // Destroyed sockets close on the next turns of the loop; wait (briefly) so each one
      // still gets its access-log line.
      await Promise.race([drained, new Promise((resolve) => setTimeout(resolve, 1000).unref())])
    }
    this.destroy()
  }

  destroy(): void {
    this.stopping = true
    this.abort()
    for (const l of [...this.listeners.values(), ...this.retiring]) l.destroy()
    this.relay?.close()
    this.exhaustion.close()
    this.listeners.clear()
    this.retiring.clear()
  }

  /**
   * Phase one's part of the relay: opens the native relay when the configuration wants it
   * (`relay: auto` when it loads, `native` always; an error when it does not load). A relay,
   * once open, stays for the life of the data plane; `relay: js` in a later reload only stops
   * new connections from being handed to it. Changes nothing else: the choice takes effect
   * at commit (applyRelay).
   */
  private relayFor(config: Config): RelayChoice {
    if (config.relay === 'js') return { wanted: false }
    if (this.relay === undefined) {
      const opened = RelayHost.open(config.relay)
      if (opened instanceof RelayHost) this.relay = opened
      else if (config.relay === 'native') throw new SluiceError('SLUICE_ERR_RELAY', `relay: native, but the native relay cannot be used: ${opened.reason}; build it with npm run build:native, or write relay: auto or js`)
      else return { wanted: true, unavailable: opened.reason }
    }
    return { wanted: true }
  }

  /** Commit: new connections go to the relay the configuration chose; says once which relay carries them. */
  private applyRelay(choice: RelayChoice): void {
    this.relayWanted = choice.wanted
    if (!choice.wanted) {
      if (this.relayKind !== 'js') this.log.info({ relay: 'js' }, 'established plain TCP connections are relayed by the JS relay (relay: js)')
      this.relayKind = 'js'
      return
    }
    if (this.relay === undefined) {
      if (this.relayKind !== 'js') {
        const reason = choice.unavailable ?? 'not loaded'
        this.log.warn({ code: 'SLUICE_ERR_RELAY', relay: 'js', reason }, `the native relay cannot be used (${reason}): the JS relay carries the connections`)
      }
      this.relayKind = 'js'
      return
    }
    if (this.relayKind !== 'native') {
      this.log.info({ relay: 'native' }, 'established plain TCP connections are relayed by the native relay')
      this.relayKind = 'native'
    }
  }

  private relayWanted = true

  /** The relay new connections are handed to: none under relay: js. */
  private get activeRelay(): RelayHost | undefined {
    return this.relayWanted ? this.relay : undefined
  }

  get isStopping(): boolean {
    return this.stopping
  }

  private makePool(name: string, config: Config, slots: SlotTable): Pool {
    const pool = new Pool(config.pools.get(name)!, this.metrics, undefined, 'data')
    pool.sharedLoad = this.shared
    this.bindSlots(pool, slots)
    pool.onConnectFailure = (b, reason) => this.report({ type: 'connect-failed', pool: name, backend: b.id, reason })
    return pool
  }

  private bindSlots(pool: Pool, slots: SlotTable): void {
    for (const b of pool.backends) {
      const slot = slots[backendSlotKey(pool.name, b.id)]
      if (slot !== undefined) b.bindShared(this.counters, slot)
    }
  }

  private retire(l: Listener): void {
    this.retiring.add(l)
    void l.close().then(() => this.retiring.delete(l))
  }

  private flushCounters(): void {
    if (this.relay !== undefined) this.relay.flush(this.metrics)
    this.exhaustion.flush(this.metrics)
    for (const l of this.listeners.values()) l.flushCounters()
    for (const l of this.retiring) l.flushCounters()
    for (const p of this.pools.values()) p.flushCounters()
  }
}

function admissionAt(counters: SharedCounters, slot: number): { tryAcquire(max: number): boolean; release(): void } {
  return {
    tryAcquire: (max) => counters.tryAcquire(slot, max),
    release: () => {
      counters.add(slot, -1)
    },
  }
}
