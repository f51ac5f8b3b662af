import { Socket, connect, type NetConnectOpts } from 'node:net'
import type { Backend } from '../upstream/backend.js'
import type { Pool } from '../upstream/pool.js'
import type { ListenerConfig } from '../config/types.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics/metrics.js'
import type { LogThrottle } from '../log-throttle.js'
import type { PickContext } from '../balancer/types.js'
import { SluiceError, errnoCode } from '../errors.js'
import { formatAddress } from '../config/address.js'
import { isSourceRefusal, type Opened, type OpeningFailure, type OpeningHost, type OpeningRead, type OpeningRefusal, type OpeningStage } from './proxy-opening.js'
import type { Deadline, TimerWheel } from './timer-wheel.js'
import type { QueueWaiter } from '../upstream/backend-queue.js'
import { reportSourceRefusal } from '../listener/source-report.js'
import { isPlainPool, proxyHeaderFor, secureUpstream } from './upstream-secure.js'
import { connectionReset } from './peer-check.js'
import type { RelayHost } from './relay-host.js'
import type { RelayEnd } from './native-relay.js'
import { reportConnectFailure, reportRefusal, writeAccessLine, reportPoolRefusal, type PoolRefusal } from './session-report.js'
import { localExhaustion } from '../fd-budget.js'
import type { ExhaustionGuard } from '../listener/accept-guard.js'
import { Flow, relay, relayKind } from './splice.js'

/**
 * What a session's client and raw socket point to once the native relay carries its
 * connection: a socket that was never connected and is already destroyed (no descriptor,
 * zero counts), so the real ones can be collected.
 */
const DETACHED: Socket = new Socket()
DETACHED.destroy()

/** TCP keep-alive probes start after this much silence, so dead peers of idle connections are found. */
export const KEEPALIVE_INITIAL_DELAY_MS = 60_000

/**
 * Stream buffer per socket and direction. The kernel hands over up to 64 KiB per read; with
 * room for two such chunks a write rarely reports backpressure while the peer keeps up, so
 * bulk transfers do not pause and resume on every chunk (about 10% more throughput than
 * Node 20's 16 KiB default, measured with iperf3). It also bounds what a slow reader can
 * make sluice hold: 128 KiB per direction per socket.
 */
export const STREAM_BUFFER_BYTES = 128 * 1024

export type CloseReason =
  | 'client_closed' // the client sent FIN first; the backend's reply was still delivered
  | 'backend_closed' // the backend sent FIN first
  | 'client_error' // the client reset or broke the connection
  | 'backend_error' // the backend reset or broke the connection after it was established
  | 'idle_timeout' // no traffic either way for timeouts.idle
  | 'no_backend' // no backend could be picked at all
  | 'connect_failed' // every attempt (1 + retries) failed to connect
  | 'fd_exhausted' // sluice had no descriptor for the backend connection within connect_timeout
  | 'client_aborted' // the client left while sluice was still connecting to a backend
  | 'shutdown' // sluice stopped and shutdown_timeout ran out
  | 'queue_full' // every usable backend was at max_connections and the pool's queue held max_queue
  | 'queue_timeout' // waited queue_timeout in the pool's queue without a backend slot
  | 'peer_check' // the PROXY peer in front checking sluice: a LOCAL/UNKNOWN or self-naming header, or no byte at all
  | OpeningRefusal // refused during the opening: bad PROXY header or ClientHello, TLS handshake failed, too slow

/** What the access log says when an address is not known (the connection was reset before it was accepted). */
export const UNKNOWN_ADDRESS = 'unknown'

/** Ends that, on a connection the PROXY peer made for itself, are that peer's check finishing. */
const PEER_CHECK_ENDS: ReadonlySet<string> = new Set<CloseReason>(['client_closed', 'backend_closed', 'client_error', 'client_aborted'])

/** An open connection, as its listener holds it: through Node's sockets or accepted natively. */
export interface OpenSession {
  /** Adds the bytes moved since the last call to the listener's tally (live /metrics). */
  flushCounters(): void
  /** Closes both sides now (shutdown deadline, operator action). */
  destroy(reason: CloseReason): void
  /** The per-source count it holds (limits.per_source_connections), released when it ends. */
  sourceKey: string | undefined
}

/** What a session needs from the listener that accepted it. */
export interface SessionOwner {
  readonly config: ListenerConfig
  readonly log: Logger
  readonly metrics: Metrics
  readonly throttle: LogThrottle
  readonly accessLog: boolean
  /** Bytes relayed and not yet added to sluice_bytes_total: the listener adds them when /metrics is read. */
  readonly uncountedBytes: { in: number; out: number }
  /** PROXY header in, SNI peek or TLS handshake, routes: undefined on a plain listener. */
  readonly opening?: OpeningStage | undefined
  /** A pool named by a route. */
  poolNamed?(name: string): Pool | undefined
  /** The native relay that carries established plain connections, when there is one. */
  readonly relay?: RelayHost | undefined
  /** Pauses and retries when descriptors run out (accept-guard.ts). */
  readonly exhaustion?: ExhaustionGuard | undefined
  /** The data plane's deadlines: the opening, the wait in a queue, the backend connect. */
  readonly wheel: TimerWheel
  sessionEnded(session: OpenSession): void
}

/**
 * One proxied TCP connection: picks a backend, connects with a timeout and retries on other
 * backends, then splices both directions with backpressure and half-close, and writes one
 * access-log line when both sides are closed. Nothing that happens here escapes it: every
 * error closes this connection only.
 */
export class TcpSession implements OpenSession, Deadline, QueueWaiter, OpeningHost {
  readonly startedAt = Date.now()
  /** performance.now() at the start, for the deadlines. */
  private readonly startedMono = performance.now()
  deadlineAt = 0
  deadlinePrev: Deadline | undefined = undefined
  deadlineNext: Deadline | undefined = undefined
  deadlineSlot = -1
  queuePrev: QueueWaiter | undefined = undefined
  queueNext: QueueWaiter | undefined = undefined
  queued = false
  /** What the deadline on the wheel bounds now. */
  private waiting: 'opening' | 'queue' | 'connect' | undefined
  backend: Backend | undefined
  private upstream: Socket | undefined
  /** The TCP connection to the backend (under the TLSSocket when the pool speaks TLS). */
  private upstreamTcp: Socket | undefined
  /** The accepted TCP connection (under the TLSSocket when TLS ends here). */
  private raw: Socket
  private connected = false
  /**
   * The client socket (the accepted one, or the TLSSocket over it) errored, was destroyed or
   * closed: nothing more can reach it. Set at the first of these, not only at 'close', which
   * Node emits an event-loop turn after the error: a backend connect that completes in
   * between must find the client gone, not splice a dead socket.
   */
  private clientGone = false
  private clientClosed = false
  private upstreamClosed = true
  /** Which side sent its FIN first, for the close reason. */
  private firstFin: 'client' | 'backend' | undefined
  private finished = false
  /** Refused by access or limits: counted and summarized, no access-log line (a flood must not be logged one line each). */
  private quiet = false
  private reason: CloseReason | undefined
  private tried: Set<Backend> | undefined
  private attempts = 0
  private connectedAt = 0
  private connectStartedAt = 0
  /** When a connect first failed for want of a descriptor here (0: never). */
  private localWaitSince = 0
  private countedIn = 0
  private countedOut = 0
  private readonly ctx: PickContext
  /** The opening in progress; undefined before and after it (and always on a plain listener). */
  private pending: OpeningRead | undefined
  private opened: Opened | undefined
  /** Where the TCP connection really came from (the PROXY peer when a header is read). */
  private readonly peer: string
  /** Bytes of a PROXY header read from `raw`: not the client's data, not in bytes_in. */
  private headerBytes = 0
  /** The PROXY header for the backend, held back for the native relay to write first. */
  private headerOut: Buffer | undefined
  /** The native relay's id for this connection, once it carries it. */
  private relayId: number | undefined
  /** The per-source count this connection holds (limits.per_source_connections), released when it ends. */
  sourceKey: string | undefined = undefined
  /** Bytes moved outside the client socket's counters: handed over to, and relayed by, the native relay. */
  private relayedIn = 0
  private relayedOut = 0
  /** The client's byte counts when the native relay took over (its sockets are gone then); -1 before. */
  private baseIn = -1
  private baseOut = -1
  /** The JS relay's backend-to-client direction, which the backend socket reads into from its connect. */
  private fromBackend: Flow | undefined

  constructor(
    /** The accepted socket; after TLS termination, the TLSSocket over it. */
    public client: Socket,
    private readonly owner: SessionOwner,
    private pool: Pool,
  ) {
    this.raw = client
    this.ctx = { protocol: 'tcp', remoteAddress: client.remoteAddress ?? '', remotePort: client.remotePort ?? 0 }
    this.peer = this.clientAddress
    client.on('error', this.onClientError)
    client.on('close', this.onClientClose)
    client.once('end', this.onClientEnd)
  }

  /** `host:port` of the client, or `unknown` when the connection was reset before it was accepted. */
  get clientAddress(): string {
    return this.ctx.remoteAddress === '' ? UNKNOWN_ADDRESS : formatAddress(this.ctx.remoteAddress, this.ctx.remotePort)
  }

  start(): void {
    const stage = this.owner.opening
    if (stage === undefined) {
      this.connectNext()
      return
    }
    let settled = false
    const read = stage.open(
      this.client,
      (r) => {
        settled = true
        this.onOpened(r)
      },
      this,
    )
    // An opening with nothing to read (routes only) reports before open() returns.
    if (!settled) {
      this.pending = read
      const t = this.owner.config.timeouts
      const first = this.owner.config.proxyProtocolAccept === true && t.proxyHeaderMs !== undefined && t.proxyHeaderMs < t.handshakeMs ? t.proxyHeaderMs : t.handshakeMs
      this.waitFor('opening', this.startedMono + first)
    }
  }

  /** The PROXY header is in: the rest of the opening has until timeouts.handshake from the start. */
  proxyHeaderRead(): void {
    const t = this.owner.config.timeouts
    if (this.waiting === 'opening' && t.proxyHeaderMs !== undefined && t.proxyHeaderMs < t.handshakeMs) this.waitFor('opening', this.startedMono + t.handshakeMs)
  }

  private waitFor(what: 'opening' | 'queue' | 'connect', at: number): void {
    this.waiting = what
    this.owner.wheel.schedule(this, at)
  }

  private stopWaiting(): void {
    this.waiting = undefined
    this.owner.wheel.cancel(this)
  }

  /** The deadline on the wheel passed: the opening, the wait in the queue or the connect took too long. */
  onDeadline(): void {
    const what = this.waiting
    this.waiting = undefined
    if (what === 'opening') {
      this.pending?.expire()
    } else if (what === 'queue') {
      this.pool.queue.remove(this)
      this.refuse('queue_timeout')
    } else if (what === 'connect') {
      const up = this.upstream
      const b = this.backend
      if (up === undefined || b === undefined || this.connected) return
      const err = new SluiceError('SLUICE_ERR_CONNECT_TIMEOUT', `no connection to ${b.id} within ${this.pool.connectTimeoutMs}ms`)
      // After a TLS wrap the attempt is the TLS socket over the TCP one.
      this.onConnectFailed(up, b, err)
    }
  }

  private readonly onOpened = (r: Opened | OpeningFailure): void => {
    this.pending = undefined
    if (this.waiting === 'opening') this.stopWaiting()
    this.headerBytes = r.headerBytes
    if ('reason' in r) {
      this.refuseOpening(r)
      return
    }
    this.opened = r
    if (r.socket !== this.client) {
      // TLS ended here: the TLSSocket carries the bytes now. The raw socket's 'close' (still
      // watched) and the TLSSocket's own events both mean the client is gone.
      this.client.off('end', this.onClientEnd)
      this.client = r.socket
      r.socket.on('error', this.onClientError)
      r.socket.on('close', this.onClientClose)
      r.socket.once('end', this.onClientEnd)
    }
    const ctx = this.ctx
    ctx.remoteAddress = r.remoteAddress
    ctx.remotePort = r.remotePort
    if (r.sni !== undefined) ctx.sni = r.sni
    if (r.pool !== undefined) this.pool = this.owner.poolNamed?.(r.pool) ?? this.pool
    if (this.clientGone || this.client.destroyed) {
      this.reason ??= 'client_aborted'
      this.client.destroy()
      if (this.clientClosed) this.finish()
      return
    }
    this.connectNext()
  }

  private refuseOpening(f: OpeningFailure): void {
    this.reason ??= f.reason
    if (isSourceRefusal(f.reason)) {
      // Refused by access or limits once the PROXY header named the client: a reset, no byte
      // sent; counted, one summary line a second, no access-log line of its own.
      this.owner.metrics.rejectedConnectionsTotal.inc({ listener: this.owner.config.name, reason: f.reason })
      reportSourceRefusal(this.owner, f.reason, f.client ?? this.clientAddress)
      this.quiet = true
      this.client.resetAndDestroy()
      if (this.clientClosed) this.finish()
      return
    }
    if (f.reason === 'client_aborted' || f.reason === 'peer_check') {
      const { log, config } = this.owner
      // A peer check gets its own line when the session ends.
      if (f.reason === 'client_aborted') log.debug({ code: f.error.code, listener: config.name, client: this.clientAddress }, `client left during its opening: ${f.error.message}`)
      this.client.destroy()
      if (this.clientClosed) this.finish()
      return
    }
    reportRefusal(this.owner, f.reason, f.error.code, `connection closed during its opening: ${f.error.message}`, { client: this.clientAddress })
    this.client.destroy()
    if (this.clientClosed) this.finish()
  }

  /** Closes both sides now (shutdown deadline, operator action). */
  destroy(reason: CloseReason): void {
    this.reason ??= reason
    if (this.relayId !== undefined) {
      this.owner.relay?.destroy(this.relayId)
      return
    }
    this.upstream?.destroy()
    this.client.destroy()
  }

  /**
   * The client's bytes in its data stream: decrypted ones when TLS ends here, and never the
   * PROXY header (read from the raw socket, whose count it is in).
   */
  private bytesIn(): number {
    if (this.baseIn >= 0) return this.baseIn
    const c = this.client
    return c === this.raw ? Math.max(0, c.bytesRead - this.headerBytes) : c.bytesRead
  }

  /** Bytes written to the client by Node (before a hand-over to the native relay). */
  private bytesOut(): number {
    return this.baseOut >= 0 ? this.baseOut : this.client.bytesWritten
  }

  /**
   * Hands the bytes relayed since the last call to the listener's tally (for live /metrics).
   * Nothing during the opening: its bytes (PROXY header, TLS handshake) are not relayed data,
   * and after TLS ends here the count starts again on the TLSSocket.
   */
  flushCounters(): void {
    if (this.pending !== undefined) return
    const inNow = this.bytesIn()
    const outNow = this.bytesOut()
    const tally = this.owner.uncountedBytes
    tally.in += inNow - this.countedIn
    tally.out += outNow - this.countedOut
    this.countedIn = inNow
    this.countedOut = outNow
  }

  private connectNext(): void {
    if (this.clientGone) return
    const pool = this.pool
    const queueing = this.attempts === 0 && pool.maxQueue > 0
    // First come, first served: behind the connections already waiting.
    if (queueing && pool.queue.length > 0) {
      this.enqueue()
      return
    }
    const b = this.takeBackend()
    if (b === undefined) {
      if (queueing && pool.allFull()) this.enqueue()
      else this.refuse(this.attempts === 0 ? 'no_backend' : 'connect_failed')
      return
    }
    this.connectTo(b)
  }

  /**
   * A backend picked and its slot taken (atomically: max_connections holds across workers),
   * or undefined. A backend whose last slot another connection took since the pick counts as
   * full now, and the pick is made again without it.
   */
  private takeBackend(): Backend | undefined {
    return this.pool.take(this.ctx, this.tried)
  }

  /** Every usable backend is at max_connections: wait in the pool's queue, or be refused when it is full. */
  private enqueue(): void {
    const pool = this.pool
    if (pool.queue.length >= pool.maxQueue) {
      this.refuse('queue_full')
      return
    }
    pool.queue.push(this)
    this.waitFor('queue', performance.now() + pool.queueTimeoutMs)
  }

  /** A slot may have freed (the pool's queue, head first): take it and connect, or stay. */
  trySlot(): boolean {
    // Gone meanwhile: out of the queue, nothing taken.
    if (this.clientGone || this.finished) return true
    const b = this.takeBackend()
    if (b === undefined) return false
    this.stopWaiting()
    this.connectTo(b)
    return true
  }

  private connectTo(b: Backend): void {
    const pool = this.pool
    ;(this.tried ??= new Set()).add(b)
    this.attempts++
    this.backend = b
    this.connectStartedAt = performance.now()
    const options: NetConnectOpts & { highWaterMark: number } = {
      host: b.host,
      port: b.port,
      noDelay: true,
      keepAlive: true,
      keepAliveInitialDelay: KEEPALIVE_INITIAL_DELAY_MS,
      // Passed on to the socket's streams by Node (not in @types/node's NetConnectOpts).
      highWaterMark: STREAM_BUFFER_BYTES,
      allowHalfOpen: true,
    }
    // A plain connection may be relayed in JS: the backend socket reads into the relay's buffers.
    this.fromBackend = pool.config.tls === undefined && this.client === this.raw ? new Flow() : undefined
    if (this.fromBackend !== undefined) options.onread = this.fromBackend.onread
    const up = connect(options)
    this.upstream = up
    this.upstreamTcp = up
    this.upstreamClosed = false
    this.waitFor('connect', this.connectStartedAt + pool.connectTimeoutMs)
    const plain = isPlainPool(pool.config)
    up.once('connect', () => (plain ? this.onConnected(up, b) : this.onTcpConnected(up, b)))
    up.on('error', (err) => (this.connected && up === this.upstream ? this.onUpstreamError(err) : this.onConnectFailed(up, b, err)))
    up.on('close', () => {
      if (up === this.upstream) this.onUpstreamClose()
    })
  }

  /** Connected with a pool that sends a PROXY header and/or speaks TLS: header first, then TLS. */
  private onTcpConnected(up: Socket, b: Backend): void {
    if (up !== this.upstream) return
    if (this.clientGone || this.client.destroyed) {
      this.abortAttempt()
      return
    }
    const header = proxyHeaderFor(this.pool.config, this.ctx, this.opened, this.client)
    const tls = this.pool.config.tls
    if (tls === undefined && this.owner.relay !== undefined && this.client === this.raw) {
      // The native relay writes it first, before anything of the client's.
      this.headerOut = header
      this.onConnected(up, b)
      return
    }
    if (header !== undefined) up.write(header)
    if (tls === undefined) {
      this.onConnected(up, b)
      return
    }
    const secure = secureUpstream(up, b, tls)
    this.upstream = secure
    secure.once('secureConnect', () => this.onConnected(secure, b))
    secure.on('error', (err) => {
      if (this.connected && secure === this.upstream) this.onUpstreamError(err)
      else this.onConnectFailed(secure, b, new SluiceError('SLUICE_ERR_BACKEND_TLS', `TLS with backend ${b.id} failed: ${err.message}`, { cause: err }))
    })
    secure.on('close', () => {
      if (secure === this.upstream) this.onUpstreamClose()
    })
  }

  private onConnected(up: Socket, b: Backend): void {
    if (up !== this.upstream) return
    this.stopWaiting()
    if (this.clientGone || this.client.destroyed) {
      // The client went away while the connect was in flight (its error came first, its
      // 'close' is still to come): never splice a dead socket, whose stream would never end.
      this.abortAttempt()
      return
    }
    this.connected = true
    this.connectedAt = Date.now()
    this.pool.observeConnect(b, performance.now() - this.connectStartedAt)
    b.consecutiveFailures = 0
    const config = this.owner.config
    b.established++
    const client = this.client
    const kind = relayKind(client === this.raw && up === this.upstreamTcp, this.owner.relay !== undefined)
    const fromBackend = this.fromBackend
    this.fromBackend = undefined
    if (kind === 'native' && this.handOver(up)) return
    if (this.headerOut !== undefined) {
      up.write(this.headerOut)
      this.headerOut = undefined
    }
    if (config.timeouts.idleMs > 0) {
      client.setTimeout(config.timeouts.idleMs)
      client.on('timeout', this.onIdle)
    }
    up.once('end', this.onUpstreamEnd)
    const opened = this.opened
    // The peeked ClientHello goes first, untouched (after the PROXY header, if any).
    if (opened?.replay !== undefined) up.write(opened.replay)
    relay(kind, client, up, fromBackend)
  }

  /**
   * Gives an established plain connection (no TLS on either side) to the native relay, when
   * there is one: it then carries the bytes on its own thread and no Node socket stays alive
   * for it. What Node had read already goes first (the PROXY header out, a peeked ClientHello,
   * what either side sent early). False when it cannot: the JS splice carries it.
   */
  private handOver(up: Socket): boolean {
    const relay = this.owner.relay
    const client = this.client
    if (relay === undefined || client !== this.raw || up !== this.upstreamTcp) return false
    const replay = this.opened?.replay
    const first = this.headerOut === undefined ? replay : replay === undefined ? this.headerOut : Buffer.concat([this.headerOut, replay])
    const early = up.readableLength
    this.flushCounters()
    for (const s of [client, up]) s.removeAllListeners('data').removeAllListeners('end').removeAllListeners('timeout')
    client.off('error', this.onClientError).off('close', this.onClientClose)
    up.removeAllListeners('error').removeAllListeners('close')
    // Errors of the destroyed sockets during the hand-over are the relay's to report now.
    client.on('error', () => {})
    up.on('error', () => {})
    const id = relay.adopt(this.owner.config.name, client, up, this.owner.config.timeouts.idleMs, first, this.onRelayEnd)
    if (id === undefined) {
      client.on('error', this.onClientError).on('close', this.onClientClose)
      up.on('error', (err) => this.onUpstreamError(err))
      up.on('close', () => {
        if (up === this.upstream) this.onUpstreamClose()
      })
      return false
    }
    this.relayId = id
    this.headerOut = undefined
    // The backend's early bytes are written by the relay but not counted by it.
    this.relayedOut = early
    this.owner.uncountedBytes.out += early
    // Let go of the destroyed Node sockets (and the ClientHello): a relayed connection keeps
    // only this session object in JS.
    this.baseIn = this.bytesIn()
    this.baseOut = client.bytesWritten
    this.client = DETACHED
    this.raw = DETACHED
    this.upstream = undefined
    this.upstreamTcp = undefined
    this.tried = undefined
    if (this.opened !== undefined) {
      this.opened.socket = DETACHED
      this.opened.replay = undefined
    }
    return true
  }

  private readonly onRelayEnd = (end: RelayEnd): void => {
    this.relayId = undefined
    this.relayedIn += end.bytesIn
    this.relayedOut += end.bytesOut
    if (end.reason === 'destroyed') this.reason ??= 'shutdown'
    else if (end.reason === 'client_closed' || end.reason === 'backend_closed') this.firstFin ??= end.reason === 'client_closed' ? 'client' : 'backend'
    else this.reason ??= end.reason
    this.clientClosed = true
    this.upstreamClosed = true
    this.finish()
  }

  private onConnectFailed(up: Socket, b: Backend, err: Error): void {
    if (up !== this.upstream || this.connected) return
    this.stopWaiting()
    this.upstream = undefined
    this.upstreamClosed = true
    up.destroy()
    this.pool.release(b)
    this.backend = undefined
    const local = localExhaustion(err)
    if (local !== undefined) {
      this.waitForDescriptors(b, local)
      return
    }
    b.failedOnce()
    const timeout = err instanceof SluiceError && err.code === 'SLUICE_ERR_CONNECT_TIMEOUT'
    this.pool.onConnectFailure?.(b, timeout ? 'timeout' : (errnoCode(err) ?? err.message))
    reportConnectFailure(this.owner, this.pool.name, b, err, this.attempts)
    if (this.clientGone) {
      this.reason ??= 'client_aborted'
      if (this.clientClosed) this.finish()
      return
    }
    if (this.attempts <= this.pool.retries) this.connectNext()
    else this.refuse('connect_failed')
  }

  /**
   * The connect to `b` failed because sluice is out of descriptors (or socket memory): not
   * the backend's failure (no passive-health count, no connect error against it, the attempt
   * not spent). The connect is tried again once descriptors are free, within the pool's
   * connect_timeout; past it the client is refused as `fd_exhausted`.
   */
  private waitForDescriptors(b: Backend, errno: string): void {
    this.tried?.delete(b)
    this.attempts--
    const guard = this.owner.exhaustion
    guard?.exhausted(this.owner.config.name, 'connect', errno)
    if (this.clientGone) {
      this.reason ??= 'client_aborted'
      if (this.clientClosed) this.finish()
      return
    }
    if (this.localWaitSince === 0) this.localWaitSince = Date.now()
    const left = this.pool.connectTimeoutMs - (Date.now() - this.localWaitSince)
    if (guard === undefined || left <= 0) {
      this.refuse('fd_exhausted')
      return
    }
    guard.whenAvailable((ok) => {
      if (this.clientGone || this.finished) return
      if (ok) this.connectNext()
      else this.refuse('fd_exhausted')
    }, left)
  }

  private refuse(reason: PoolRefusal): void {
    this.reason ??= reason
    reportPoolRefusal(this.owner, reason, this.pool, this.attempts, this.clientAddress)
    // A reset tells the client at once that nothing is there, as a refused connect would.
    this.client.resetAndDestroy()
    if (this.clientClosed) this.finish()
  }

  private readonly onIdle = (): void => {
    this.reason ??= 'idle_timeout'
    const { log, config } = this.owner
    log.debug({ code: 'SLUICE_ERR_IDLE_TIMEOUT', listener: config.name, client: this.clientAddress, backend: this.backend?.id }, `no traffic for ${config.timeouts.idleMs}ms: closing`)
    this.upstream?.destroy()
    this.client.destroy()
  }

  private readonly onClientError = (err: Error): void => {
    this.reason ??= this.connected ? 'client_error' : 'client_aborted'
    const { log, config } = this.owner
    log.debug({ code: 'SLUICE_ERR_CLIENT_SOCKET', listener: config.name, client: this.clientAddress, errno: errnoCode(err) }, `client connection failed: ${err.message}`)
    this.clientLeft()
  }

  /** The client's FIN. Passed on once spliced; during the opening it ends the session. */
  private readonly onClientEnd = (): void => {
    if (connectionReset(this.raw, this.client)) {
      // Not a FIN but a reset that a write met first (see connectionReset).
      this.reason ??= this.connected ? 'client_error' : 'client_aborted'
      this.clientLeft()
      this.client.destroy()
      return
    }
    this.firstFin ??= 'client'
    if (this.pending === undefined) return
    // A FIN before the PROXY header or ClientHello was complete: that opening can never
    // finish, and the client is not waiting for an answer to it.
    this.reason ??= 'client_aborted'
    this.clientLeft()
    this.client.destroy()
  }

  private readonly onClientClose = (): void => {
    if (this.clientClosed) return
    this.clientClosed = true
    const clean = this.connected && this.client.readableEnded && this.client.writableFinished
    this.clientLeft(clean)
    if (this.upstreamClosed) this.finish()
  }

  /**
   * The client is gone, in whatever phase the session is: the opening stops, a connect in
   * flight is dropped (its backend slot freed at once) and a spliced backend connection is
   * closed, unless the client had finished both ways cleanly (then the backend connection
   * ends by itself once what the client sent is delivered).
   */
  private clientLeft(clean = false): void {
    if (clean) return
    this.clientGone = true
    if (this.pending !== undefined) {
      this.pending.cancel()
      this.pending = undefined
      this.reason ??= 'client_aborted'
    }
    if (!this.connected) {
      if (this.queued) {
        this.pool.queue.remove(this)
        this.stopWaiting()
      }
      this.abortAttempt()
      this.reason ??= 'client_aborted'
      return
    }
    this.upstream?.destroy()
  }

  /** Drops the connect attempt in flight, if any, and frees its backend slot. */
  private abortAttempt(): void {
    const up = this.upstream
    if (up === undefined || this.connected) return
    this.stopWaiting()
    this.upstream = undefined
    this.upstreamClosed = true
    up.destroy()
    if (this.backend !== undefined) this.pool.release(this.backend)
    this.backend = undefined
    this.reason ??= 'client_aborted'
    if (this.clientClosed) this.finish()
  }

  /** The backend's FIN, passed on by the splice; a reset seen as one closes both sides. */
  private readonly onUpstreamEnd = (): void => {
    const tcp = this.upstreamTcp
    if (tcp !== undefined && connectionReset(tcp, this.upstream ?? tcp)) {
      this.reason ??= 'backend_error'
      this.upstream?.destroy()
      this.client.destroy()
      return
    }
    this.firstFin ??= 'backend'
  }

  private onUpstreamError(err: Error): void {
    this.reason ??= 'backend_error'
    const { log, config } = this.owner
    log.warn(
      { code: 'SLUICE_ERR_BACKEND_SOCKET', listener: config.name, pool: this.pool.name, backend: this.backend?.id, errno: errnoCode(err), client: this.clientAddress },
      `backend connection failed: ${err.message}`,
    )
    this.client.destroy()
  }

  private onUpstreamClose(): void {
    this.upstreamClosed = true
    const up = this.upstream
    // A backend connection that closed without finishing both ways (destroyed, reset) leaves
    // nothing to relay: close the client too. A clean close has already ended the client's
    // writable through the splice.
    if (up !== undefined && !(up.readableEnded && up.writableFinished)) {
      this.reason ??= 'backend_error'
      this.client.destroy()
    }
    if (this.clientClosed) this.finish()
  }

  private finish(): void {
    if (this.finished) return
    this.finished = true
    this.owner.wheel.cancel(this)
    if (this.queued) this.pool.queue.remove(this)
    const b = this.backend
    if (b !== undefined) this.pool.release(b)
    this.flushCounters()
    const owner = this.owner
    const reason = this.closeReason()
    if (reason === 'peer_check') owner.log.debug({ listener: owner.config.name, peer: this.peer, backend: b?.id }, 'a connection of the PROXY peer itself (its health check) ended')
    if (owner.accessLog && !this.quiet) {
      const connected = this.connected
      writeAccessLine(owner, {
        client: this.clientAddress,
        peer: this.peer,
        pool: this.pool.name,
        backend: connected ? (b?.id ?? null) : null,
        bytes_in: this.bytesIn() + this.relayedIn,
        bytes_out: this.bytesOut() + this.relayedOut,
        duration_ms: Date.now() - this.startedAt,
        connect_ms: connected ? this.connectedAt - this.startedAt : null,
        attempts: this.attempts,
        close_reason: reason,
      })
    }
    owner.sessionEnded(this)
  }

  /**
   * Why the session ended, for the access log. A connection that the PROXY peer in front made
   * for itself ends as `peer_check` when it ends from the client's side or cleanly: one whose
   * header said so (Opened.peerOwn), or a trusted peer's that closed before sending any byte
   * (an L4 check). Refusals and failures keep their own reason.
   */
  private closeReason(): string {
    const r = this.reason ?? (this.firstFin === 'backend' ? 'backend_closed' : 'client_closed')
    if (!PEER_CHECK_ENDS.has(r)) return r
    const o = this.opened
    const own = o !== undefined ? o.peerOwn : this.owner.config.proxyProtocolAccept === true && this.peer !== UNKNOWN_ADDRESS && this.raw.bytesRead === 0
    return own ? 'peer_check' : r
  }
}
