import { Socket, createServer, type Server } from 'node:net'
import { closeSync as closeFd } from 'node:fs'
import type { AnyListenerConfig, ListenerConfig } from '../config/types.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics/metrics.js'
import type { Pool } from '../upstream/pool.js'
import { LogThrottle } from '../log-throttle.js'
import { errnoCode, errorMessage } from '../errors.js'
import { setInheritedOptions } from './listen-options.js'
import { bindError } from './bind-error.js'
import { formatAddress } from '../config/address.js'
import { KEEPALIVE_INITIAL_DELAY_MS, STREAM_BUFFER_BYTES, TcpSession, type OpenSession, type SessionOwner } from '../proxy/tcp-session.js'
import { admit } from './admission.js'
import type { AdmissionCounter, Listener, ListenerAddress } from './listener.js'
import type { RelayAcceptor, RelayHost } from '../proxy/relay-host.js'
import type { RelayAccept, RelayAcceptError } from '../proxy/native-relay.js'
import { NativeSession } from '../proxy/native-session.js'
import { isPlainPool } from '../proxy/upstream-secure.js'
import { OpeningStage } from '../proxy/proxy-opening.js'
import { TlsTerminator } from '../proxy/tls.js'
import { localExhaustion } from '../fd-budget.js'
import type { ExhaustionGuard } from './accept-guard.js'
import { dropHeld, holdListening, listenBacklog, listenHeld, type HeldSocket } from './accept-pause.js'
import { SourceGate, type SourceHolder, type SourceRefusal } from './source-gate.js'
import { SourceTables } from '../control/source-tables.js'
import { TimerWheel } from '../proxy/timer-wheel.js'
import { reportSourceRefusal } from './source-report.js'

/**
 * A TCP listener: accepts client connections, admits or refuses them, and hands each to a
 * TcpSession bound to the listener's pool. `close()` stops accepting and resolves when the
 * last session has ended; `destroy()` ends every session now.
 *
 * A plain listener (no TLS, PROXY header, SNI or routes) whose pool is plain too, in a data
 * plane with the native relay, gives its listening socket to the relay (syncAcceptMode): the
 * relay accepts, connects and relays each connection itself (NativeSession), with no Node
 * socket per connection. A reload that makes it need Node (TLS added, say) takes the socket
 * back, its backlog intact.
 */
export class TcpListener implements SessionOwner, Listener, RelayAcceptor {
  readonly protocol = 'tcp'
  readonly sessions = new Set<OpenSession>()
  /** Connections accepted, and how many of them /metrics has counted (see flushCounters). */
  accepted = 0
  private countedAccepted = 0
  readonly uncountedBytes = { in: 0, out: 0 }
  readonly throttle = new LogThrottle()
  private server: Server
  private closing = false
  private idleWaiters: (() => void)[] = []
  /** PROXY header in, SNI peek or TLS, routes; undefined on a plain listener (sessions skip it). */
  opening: OpeningStage | undefined
  private tls: TlsTerminator | undefined
  /** Where route pools are found: the daemon's live pools (set by the daemon). */
  poolLookup: ((name: string) => Pool | undefined) | undefined
  /**
   * Open connections of this listener in every worker (shared counters), so max_connections
   * is for the whole daemon; unset, this listener's own sessions are the count.
   */
  admission: AdmissionCounter | undefined
  /** The data plane's native relay for established plain connections (set by the data plane). */
  relay: RelayHost | undefined
  /** The relay accepting on this listener's socket, and its id there; undefined while Node accepts. */
  private native: { host: RelayHost; id: number } | undefined
  /** The listening socket has TCP_NODELAY and keepalive, which accepted sockets inherit (Linux). */
  private optionsInherited = false
  /** The address bound, kept for while Node's server is closed (the relay accepts). */
  private bound: ListenerAddress | undefined
  /** The data plane's answer to running out of descriptors (set by the data plane). */
  exhaustion: ExhaustionGuard | undefined
  /** The listening socket while accepting is paused (out of descriptors). */
  private paused: HeldSocket | undefined
  /** The relay holds its socket (pauseAccepting while the relay accepts). */
  private nativeHeld = false
  /** `access` and `limits`; undefined when the listener has neither. Applied at accept, or after the PROXY header. */
  gate: SourceGate | undefined
  /** What the gate counted for the connection being accepted, handed to its session. */
  private readonly held: SourceHolder = { sourceKey: undefined }

  constructor(
    public config: ListenerConfig,
    public pool: Pool,
    readonly log: Logger,
    readonly metrics: Metrics,
    public accessLog: boolean,
    /** The daemon's per-source tables (shared by every worker); a listener of its own in tests. */
    readonly sources: SourceTables = SourceTables.create(16_384),
    /** The data plane's timer wheel (the deadlines of every session); a listener of its own in tests. */
    readonly wheel: TimerWheel = new TimerWheel(),
  ) {
    this.server = this.newServer()
    this.configureOpening(config)
  }

  private newServer(): Server {
    const server = createServer({
      allowHalfOpen: true,
      // Not pauseOnConnect: while the backend connect is in flight the socket keeps reading
      // into its bounded stream buffer (highWaterMark, then TCP backpressure), so a client
      // that resets in the meantime is noticed at once and releases its backend slot.
      // No noDelay / keepAlive here: the listening socket carries them (listen-options.ts).
      highWaterMark: STREAM_BUFFER_BYTES,
    })
    server.on('connection', this.onConnection)
    server.on('error', (err) => {
      const local = localExhaustion(err)
      // Out of descriptors on accept: sluice's own condition, paused and retried (accept-guard.ts).
      if (local !== undefined && this.exhaustion !== undefined) this.exhaustion.exhausted(this.config.name, 'accept', local)
      else this.log.error({ code: 'SLUICE_ERR_LISTEN', listener: this.config.name, errno: errnoCode(err) }, `listener error: ${errorMessage(err)}`)
    })
    return server
  }

  /**
   * Gives the listening socket to the native relay when this listener and its pool are plain
   * and a relay is there, and takes it back when not (called when a configuration is
   * committed). Either way the socket stays bound and its backlog is kept.
   */
  syncAcceptMode(): void {
    const relay = this.relay
    const want = relay !== undefined && !this.closing && this.opening === undefined && isPlainPool(this.pool.config)
    if (this.native !== undefined && (!want || this.native.host !== relay)) this.acceptWithNode()
    if (want && this.native === undefined && this.server.listening) this.acceptWithRelay(relay)
  }

  private acceptWithRelay(host: RelayHost): void {
    const fd = serverFd(this.server)
    if (fd === undefined) return
    const bound = this.address()
    let id: number
    try {
      id = host.listen(fd, this.config.name, this)
    } catch (err) {
      this.log.warn({ code: 'SLUICE_ERR_RELAY', listener: this.config.name, errno: errnoCode(err) }, `the native relay cannot accept on ${bound.text} (${errorMessage(err)}): Node accepts`)
      return
    }
    this.bound = bound
    this.native = { host, id }
    // The relay holds its own descriptor of the socket: closing Node's server leaves it bound.
    const old = this.server
    this.server = this.newServer()
    old.close()
  }

  /** Takes the listening socket back from the relay (its backlog kept): Node accepts again. */
  private acceptWithNode(): void {
    const native = this.native
    if (native === undefined) return
    this.native = undefined
    // Stopping: the socket stops listening now, as a closed server's would.
    const fd = native.host.unlisten(native.id, this.closing)
    if (fd < 0 || this.closing) {
      if (fd >= 0) closeFd(fd)
      return
    }
    this.server.listen({ fd, backlog: listenBacklog(this.config.maxConnections) })
  }

  onRelayAccept(a: RelayAccept, host: RelayHost): void {
    if (this.closing) {
      this.accepted++
      this.refuseRelayed(host, a.id, 'shutdown')
      return
    }
    if (this.native?.host !== host) {
      // Accepted by the relay in the instant before a reload gave the socket back to Node:
      // Node takes this connection too, with the listener's new settings.
      host.release(a.id, { onRelayEnd: () => {}, onRelayReleased: (fd) => this.onConnection(new Socket({ fd, readable: true, writable: true, allowHalfOpen: true })) })
      return
    }
    this.accepted++
    const refusal = this.admitOne()
    if (refusal !== undefined) {
      this.refuseRelayed(host, a.id, refusal)
      return
    }
    const refused = this.gateAtAccept(a.address)
    if (refused !== undefined) {
      reportSourceRefusal(this, refused, a.address)
      this.refuseRelayed(host, a.id, refused)
      return
    }
    const session = new NativeSession(a.id, a.address, a.port, this, this.pool, host)
    session.sourceKey = this.held.sourceKey
    this.sessions.add(session)
    session.start()
  }

  private refuseRelayed(host: RelayHost, id: number, reason: string): void {
    this.metrics.rejectedConnectionsTotal.inc({ listener: this.config.name, reason })
    host.destroy(id, true)
  }

  onRelayAcceptError(e: RelayAcceptError): void {
    // Out of descriptors: sluice's own condition, counted and logged once per interval by the
    // data plane's guard (the relay has paused this listener already, and resumes by itself).
    if (this.exhaustion !== undefined && localExhaustion({ code: e.code }) !== undefined) {
      // Held before the guard lets its reserve go, so the relay cannot take those descriptors.
      if (!this.exhaustion.paused) this.pauseAccepting()
      this.exhaustion.exhausted(this.config.name, 'accept', e.code)
      return
    }
    const suppressed = this.throttle.take(`accept:${e.code}`)
    if (suppressed === false) return
    this.log.error(
      { code: 'SLUICE_ERR_ACCEPT', listener: this.config.name, errno: e.code, pause_ms: e.pauseMs, suppressed },
      `listener ${this.config.name} cannot accept connections (${e.code}): pausing ${e.pauseMs}ms; open connections are served meanwhile`,
    )
  }

  /**
   * Stops accepting while descriptors are out, keeping the listening socket and its backlog
   * (accept-pause.ts); false when it cannot (no native addon), then it accepts on.
   */
  pauseAccepting(): boolean {
    // The relay holds the socket (its backlog waits) until resumeAccepting.
    if (this.native !== undefined) {
      this.native.host.hold(this.native.id, true)
      this.nativeHeld = true
      return true
    }
    if (this.paused !== undefined || this.closing) return this.paused !== undefined
    this.paused = holdListening(this.server, this.address())
    return this.paused !== undefined
  }

  /** Accepts again on the socket held by pauseAccepting. */
  resumeAccepting(): void {
    if (this.nativeHeld) {
      this.nativeHeld = false
      if (this.native !== undefined) this.native.host.hold(this.native.id, false)
    }
    const held = this.paused
    if (held === undefined) return
    this.paused = undefined
    if (this.closing) {
      dropHeld(held)
      return
    }
    this.server = this.newServer()
    listenHeld(this.server, held, listenBacklog(this.config.maxConnections))
  }

  get name(): string {
    return this.config.name
  }

  /** Binds the listen address; rejects with SLUICE_ERR_LISTEN and a reason an operator can act on. */
  listen(shared = false): Promise<void> {
    const { host, port, name, listen } = this.config
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => {
        this.server.off('listening', onListening)
        reject(bindError('SLUICE_ERR_LISTEN', `listener "${name}"`, listen, err))
      }
      const onListening = (): void => {
        this.server.off('error', onError)
        this.optionsInherited = setInheritedOptions(this.server, KEEPALIVE_INITIAL_DELAY_MS)
        resolve()
      }
      this.server.once('error', onError)
      this.server.once('listening', onListening)
      // reusePort (Node 22.12+) is in the typings of newer @types/node only.
      const opts: { host: string | undefined; port: number; backlog: number; reusePort?: boolean } = { host: host === '' ? undefined : host, port, backlog: listenBacklog(this.config.maxConnections) }
      if (shared) opts.reusePort = true
      this.server.listen(opts)
    })
  }

  /** The bound address (the real port when the configuration said port 0). */
  address(): ListenerAddress {
    if (this.paused !== undefined) return this.paused.address
    if (this.native !== undefined && this.bound !== undefined) return this.bound
    const a = this.server.address()
    if (a === null || typeof a === 'string') return { host: this.config.host, port: this.config.port, text: this.config.listen }
    return { host: a.address, port: a.port, text: formatAddress(a.address, a.port) }
  }

  /** Takes new settings after a reload that kept this listener's address, perhaps under a new name (see Listener). */
  update(config: AnyListenerConfig, pool: Pool, accessLog: boolean): void {
    if (config.protocol !== 'tcp') throw new TypeError(`listener ${config.name}: a tcp listener cannot take ${config.protocol} settings`)
    const renamed = config.name !== this.config.name
    if (renamed) {
      // What was counted under the old name stays there; open connections count under the new one.
      this.flushCounters()
      this.metrics.connectionsActive.remove({ listener: this.config.name })
      this.relay?.rename(this.config.name, config.name)
    }
    this.config = config
    this.pool = pool
    this.accessLog = accessLog
    this.configureOpening(config, renamed)
  }

  poolNamed(name: string): Pool | undefined {
    return this.poolLookup?.(name)
  }

  /** Builds (or rebuilds, on reload) the opening stage; open connections keep theirs. */
  private configureOpening(config: ListenerConfig, renamed = false): void {
    if (config.tls !== undefined) {
      if (this.tls === undefined || renamed) {
        // Handshakes in flight finish on the terminator they started with.
        this.tls?.close()
        this.tls = new TlsTerminator(config.tls, config.timeouts.handshakeMs, this.log, config.name)
      } else {
        this.tls.update(config.tls)
      }
    } else if (this.tls !== undefined) {
      this.tls.close()
      this.tls = undefined
    }
    this.gate = SourceGate.needed(config.access, config.limits) ? new SourceGate(config.name, config.access, config.limits, this.sources) : undefined
    // Behind a PROXY peer the real client is known only once its header is read.
    const stage = new OpeningStage(config, this.tls, config.proxyProtocolAccept === true ? this.gate : undefined)
    this.opening = stage.needed ? stage : undefined
  }

  get listening(): boolean {
    return this.native !== undefined || this.server.listening || this.paused !== undefined
  }

  sessionEnded(session: OpenSession): void {
    if (session.sourceKey !== undefined) {
      this.sources.connections.release(session.sourceKey)
      session.sourceKey = undefined
    }
    if (this.sessions.delete(session)) this.admission?.release()
    if (this.sessions.size === 0 && this.idleWaiters.length > 0) {
      const waiters = this.idleWaiters
      this.idleWaiters = []
      for (const w of waiters) w()
    }
  }

  /** Adds the bytes of open sessions to the counters, so /metrics is live for long connections. */
  flushCounters(): void {
    const listener = this.config.name
    this.metrics.connectionsActive.set({ listener }, this.sessions.size)
    if (this.accepted > this.countedAccepted) {
      this.metrics.connectionsTotal.inc({ listener }, this.accepted - this.countedAccepted)
      this.countedAccepted = this.accepted
    }
    for (const s of this.sessions) s.flushCounters()
    const bytes = this.uncountedBytes
    if (bytes.in > 0) this.metrics.bytesTotal.inc({ listener, direction: 'in' }, bytes.in)
    if (bytes.out > 0) this.metrics.bytesTotal.inc({ listener, direction: 'out' }, bytes.out)
    bytes.in = 0
    bytes.out = 0
  }

  /** Stops accepting; resolves when every open session has ended on its own. */
  close(): Promise<void> {
    this.closing = true
    this.tls?.close()
    this.acceptWithNode()
    if (this.server.listening) this.server.close()
    this.dropHeld()
    if (this.sessions.size === 0) return Promise.resolve()
    return new Promise((resolve) => this.idleWaiters.push(resolve))
  }

  /** Ends every open session now. */
  destroy(): void {
    this.closing = true
    this.tls?.close()
    this.acceptWithNode()
    if (this.server.listening) this.server.close()
    this.dropHeld()
    for (const s of [...this.sessions]) s.destroy('shutdown')
  }

  private readonly onConnection = (socket: Socket): void => {
    this.accepted++
    if (this.closing) {
      // Accepted in the instant before the server closed: refuse it quietly, it is counted.
      this.refuse(socket, 'shutdown')
      return
    }
    const refusal = this.admitOne()
    if (refusal !== undefined) {
      this.refuse(socket, refusal)
      return
    }
    const refused = this.gateAtAccept(socket.remoteAddress)
    if (refused !== undefined) {
      this.refuseSource(socket, refused)
      return
    }
    if (!this.optionsInherited) {
      socket.setNoDelay(true)
      socket.setKeepAlive(true, KEEPALIVE_INITIAL_DELAY_MS)
    }
    const session = new TcpSession(socket, this, this.pool)
    session.sourceKey = this.held.sourceKey
    this.sessions.add(session)
    session.start()
  }

  /**
   * `access` and `limits` for a client at accept (behind a PROXY peer they wait for its
   * header): undefined when admitted, with what it counts in `held`. A refused one gives its
   * max_connections place back.
   */
  private gateAtAccept(address: string | undefined): SourceRefusal | undefined {
    const gate = this.gate
    this.held.sourceKey = undefined
    if (gate === undefined || this.config.proxyProtocolAccept === true || address === undefined) return undefined
    const refused = gate.admit(address, this.held)
    if (gate.lastFull !== undefined) this.sourceTableFull(gate.lastFull)
    if (refused !== undefined) this.admission?.release()
    return refused
  }

  /** Admits a new connection (taking its place in max_connections), or says why not (logged, throttled). */
  private admitOne(): string | undefined {
    const config = this.config
    const admission = this.admission
    const refusal = admission === undefined ? admit(config, this.sessions.size) : admission.tryAcquire(config.maxConnections) ? undefined : 'max_connections'
    if (refusal === undefined) return undefined
    const suppressed = this.throttle.take(`admit:${refusal}`)
    if (suppressed !== false) {
      this.log.warn(
        { code: 'SLUICE_ERR_MAX_CONNECTIONS', listener: config.name, max_connections: config.maxConnections, suppressed },
        `connection refused: listener ${config.name} already holds max_connections (${config.maxConnections})`,
      )
    }
    return refusal
  }

  private dropHeld(): void {
    if (this.paused !== undefined) dropHeld(this.paused)
    this.paused = undefined
  }

  /** Refused by `access` or `limits`: reset at once, no byte sent; counted, and one summary line a second. */
  private refuseSource(socket: Socket, reason: SourceRefusal): void {
    reportSourceRefusal(this, reason, socket.remoteAddress ?? '')
    this.refuse(socket, reason)
  }

  /** A per-source table had no room for a new source: admitted uncounted; one line a second says so. */
  sourceTableFull(table: 'connections' | 'rates'): void {
    this.metrics.sourceTableFullTotal.inc({ listener: this.config.name, table })
    const suppressed = this.throttle.take(`source-table-full:${table}`)
    if (suppressed === false) return
    this.log.warn(
      { code: 'SLUICE_ERR_SOURCE_TABLE_FULL', listener: this.config.name, table, suppressed },
      `the per-source ${table} table is full: a new client address was admitted without its per-source limit (a flood of distinct sources?)`,
    )
  }

  private refuse(socket: Socket, reason: string): void {
    this.metrics.rejectedConnectionsTotal.inc({ listener: this.config.name, reason })
    socket.on('error', () => {})
    socket.resetAndDestroy()
  }
}

/** The descriptor of a listening net.Server (Unix), or undefined. */
function serverFd(server: Server): number | undefined {
  const handle = (server as unknown as { _handle?: { fd?: unknown } | null })._handle
  const fd = handle?.fd
  return typeof fd === 'number' && Number.isInteger(fd) && fd >= 0 ? fd : undefined
}
