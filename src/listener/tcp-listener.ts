import { createServer, type Server, type Socket } from 'node:net'
import type { AnyListenerConfig, ListenerConfig } from '../config/types.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics/metrics.js'
import type { Pool } from '../upstream/pool.js'
import { LogThrottle } from '../log-throttle.js'
import { errnoCode, errorMessage } from '../errors.js'
import { bindError } from './bind-error.js'
import { formatAddress } from '../config/address.js'
import { KEEPALIVE_INITIAL_DELAY_MS, STREAM_BUFFER_BYTES, TcpSession, type SessionOwner } from '../proxy/tcp-session.js'
import { admit } from './admission.js'
import type { AdmissionCounter, Listener } from './listener.js'
import type { RelayHost } from '../proxy/relay-host.js'
import { OpeningStage } from '../proxy/proxy-opening.js'
import { TlsTerminator } from '../proxy/tls.js'
import { SourceGate, type SourceHolder, type SourceRefusal } from './source-gate.js'
import { SourceTables } from '../control/source-tables.js'
import { TimerWheel } from '../proxy/timer-wheel.js'
import { reportSourceRefusal } from './source-report.js'

/**
 * A TCP listener: accepts client connections, admits or refuses them, and hands each to a
 * TcpSession bound to the listener's pool. `close()` stops accepting and resolves when the
 * last session has ended; `destroy()` ends every session now.
 */
export class TcpListener implements SessionOwner, Listener {
  readonly protocol = 'tcp'
  readonly sessions = new Set<TcpSession>()
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
    this.server = createServer({
      allowHalfOpen: true,
      // Not pauseOnConnect: while the backend connect is in flight the socket keeps reading
      // into its bounded stream buffer (highWaterMark, then TCP backpressure), so a client
      // that resets in the meantime is noticed at once and releases its backend slot.
      noDelay: true,
      keepAlive: true,
      keepAliveInitialDelay: KEEPALIVE_INITIAL_DELAY_MS,
      highWaterMark: STREAM_BUFFER_BYTES,
    })
    this.configureOpening(config)
    this.server.on('connection', this.onConnection)
    this.server.on('error', (err) => {
      log.error({ code: 'SLUICE_ERR_LISTEN', listener: config.name, errno: errnoCode(err) }, `listener error: ${errorMessage(err)}`)
    })
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
        resolve()
      }
      this.server.once('error', onError)
      this.server.once('listening', onListening)
      // reusePort (Node 22.12+) is in the typings of newer @types/node only.
      const opts: { host: string | undefined; port: number; backlog: number; reusePort?: boolean } = { host: host === '' ? undefined : host, port, backlog: 511 }
      if (shared) opts.reusePort = true
      this.server.listen(opts)
    })
  }

  /** The bound address (the real port when the configuration said port 0). */
  address(): { host: string; port: number; text: string } {
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
    return this.server.listening
  }

  sessionEnded(session: TcpSession): void {
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
    if (this.server.listening) this.server.close()
    if (this.sessions.size === 0) return Promise.resolve()
    return new Promise((resolve) => this.idleWaiters.push(resolve))
  }

  /** Ends every open session now. */
  destroy(): void {
    this.closing = true
    this.tls?.close()
    if (this.server.listening) this.server.close()
    for (const s of [...this.sessions]) s.destroy('shutdown')
  }

  private readonly onConnection = (socket: Socket): void => {
    const config = this.config
    this.accepted++
    if (this.closing) {
      // Accepted in the instant before the server closed: refuse it quietly, it is counted.
      this.refuse(socket, 'shutdown')
      return
    }
    const admission = this.admission
    const refusal = admission === undefined ? admit(config, this.sessions.size) : admission.tryAcquire(config.maxConnections) ? undefined : 'max_connections'
    if (refusal !== undefined) {
      const suppressed = this.throttle.take(`admit:${refusal}`)
      if (suppressed !== false) {
        this.log.warn(
          { code: 'SLUICE_ERR_MAX_CONNECTIONS', listener: config.name, max_connections: config.maxConnections, suppressed },
          `connection refused: listener ${config.name} already holds max_connections (${config.maxConnections})`,
        )
      }
      this.refuse(socket, refusal)
      return
    }
    const gate = this.gate
    const held = this.held
    held.sourceKey = undefined
    if (gate !== undefined && !config.proxyProtocolAccept && socket.remoteAddress !== undefined) {
      const refused = gate.admit(socket.remoteAddress, held)
      if (gate.lastFull !== undefined) this.sourceTableFull(gate.lastFull)
      if (refused !== undefined) {
        admission?.release()
        this.refuseSource(socket, refused)
        return
      }
    }
    const session = new TcpSession(socket, this, this.pool)
    session.sourceKey = held.sourceKey
    this.sessions.add(session)
    session.start()
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
