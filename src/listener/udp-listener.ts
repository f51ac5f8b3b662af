import { createSocket, type RemoteInfo, type Socket, type SocketType } from 'node:dgram'
import { lookup as lookupAsync } from 'node:dns/promises'
import { isIP } from 'node:net'
import type { AnyListenerConfig, UdpListenerConfig } from '../config/types.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics/metrics.js'
import type { Pool } from '../upstream/pool.js'
import type { Backend } from '../upstream/backend.js'
import type { PickContext } from '../balancer/types.js'
import type { Listener, ListenerAddress } from './listener.js'
import { LogThrottle } from '../log-throttle.js'
import { errnoCode, errorMessage } from '../errors.js'
import { bindError } from './bind-error.js'
import { formatAddress } from '../config/address.js'
import { UdpSession, type UdpSessionOwner } from '../proxy/udp-session.js'
import { UdpUpstreams, literalLookup, type UpstreamsOwner } from '../proxy/udp-upstream.js'
import { UdpStats } from '../proxy/udp-stats.js'
import { ExpiryWheel } from '../proxy/udp-expiry.js'
import { DnsRelay, type DnsRelayOwner } from '../proxy/dns-relay.js'
import { loadNativeDns, nativeDnsBlocker, NativeDns, setNodeReading } from '../proxy/native-dns.js'
import type { ExhaustionGuard } from './accept-guard.js'
import { SourceGate, type SourceHolder, type SourceRefusal } from './source-gate.js'
import { SourceTables } from '../control/source-tables.js'
import { reportSourceRefusal } from './source-report.js'

/** Ended sessions kept for reuse by new ones (their objects, not their state). */
const FREE_SESSIONS = 1024

/** Socket buffers asked of the kernel (it caps them at net.core.rmem_max / wmem_max). */
const SOCKET_BUFFER_BYTES = 4 * 1024 * 1024

/**
 * A UDP listener: one socket on the listen address, and a session per client address:port.
 * A client's first datagram picks a backend; its session relays datagrams both ways until it
 * is idle for udp.session_timeout, has had its udp.responses replies, or its backends fail.
 * `close()` takes no new clients and resolves when the last session has ended; `destroy()`
 * ends them all now. Replies leave from this listener's socket, so clients see the address
 * they sent to.
 */
export class UdpListener implements Listener, UdpSessionOwner, DnsRelayOwner, UpstreamsOwner {
  readonly protocol = 'udp'
  readonly sessions = new Map<string, UdpSession>()
  /** Ended sessions to reuse (UdpSession.init) rather than allocate: with udp.responses a query can be a session. */
  private readonly freeSessions: UdpSession[] = []
  readonly stats = new UdpStats()
  readonly throttle = new LogThrottle()
  /** Sessions started since this listener started (dns mode: queries relayed). */
  get accepted(): number {
    return this.opened + (this.dns?.relayed ?? 0) + this.nativeRelayed
  }
  /** Queries relayed by native DNS relays this listener ran before its current one. */
  private nativeRelayed = 0
  /** udp.mode dns on the native DNS relay (native/dns.c); undefined while the JS relay reads the socket. */
  private native: NativeDns | undefined
  /** Native DNS relays handed off (a reload), finishing the queries they have in flight. */
  private readonly nativeLeaving = new Set<NativeDns>()
  /** False under `relay: js`: the JS relay runs dns mode (set by the data plane). */
  nativeDnsAllowed = true
  /** Which relay runs dns mode, as last logged. */
  private dnsPath: string | undefined
  private opened = 0
  private socket: Socket | undefined
  private socketOpen = false
  private closing = false
  private idleWaiters: (() => void)[] = []
  private readonly wheel: ExpiryWheel<UdpSession>
  readonly upstreams: UdpUpstreams
  /** udp.mode dns: queries relayed by ID over shared upstream sockets instead of sessions. */
  private dns: DnsRelay | undefined
  /** The data plane's answer to running out of descriptors (set by the data plane). */
  exhaustion: ExhaustionGuard | undefined
  /** Reused for every pick: the balancers read it and keep nothing of it. */
  private readonly ctx: PickContext = { protocol: 'udp', remoteAddress: '', remotePort: 0 }
  /** `access` and `limits`; undefined when the listener has neither. */
  private gate: SourceGate | undefined
  private readonly held: SourceHolder = { sourceKey: undefined }

  constructor(
    public config: UdpListenerConfig,
    public pool: Pool,
    readonly log: Logger,
    readonly metrics: Metrics,
    public accessLog: boolean,
    /** The daemon's per-source tables (shared by every worker); a listener of its own in tests. */
    readonly sources: SourceTables = SourceTables.create(16_384),
  ) {
    this.gate = makeGate(config, sources)
    this.wheel = new ExpiryWheel<UdpSession>(config.udp.sessionTimeoutMs, (s) => s.end('timeout'))
    this.upstreams = new UdpUpstreams(this, this.stats, config.udp.reuseSockets)
    if (config.udp.mode === 'dns') this.dns = new DnsRelay(this, pool)
  }

  get name(): string {
    return this.config.name
  }

  get listening(): boolean {
    return this.socketOpen
  }

  /**
   * A backend answered on an idle upstream socket after the session's udp.responses replies
   * had all come: dropped (counted by the upstream set), and one warning a second per backend.
   */
  lateReply(backend: string, bytes: number): void {
    const suppressed = this.throttle.take(`late-reply:${backend}`)
    if (suppressed === false) return
    this.log.warn(
      { code: 'SLUICE_ERR_UDP_LATE_REPLY', listener: this.name, pool: this.pool.name, backend, bytes, responses: this.config.udp.responses, suppressed },
      `udp reply of ${bytes} bytes from backend ${backend} dropped: it came after the session's udp.responses (${this.config.udp.responses}) replies were all in; its socket is closed, not reused. If this backend sends more replies per datagram, raise udp.responses (or set it to 0), or set udp.reuse_sockets: 0`,
    )
  }

  async listen(shared = false): Promise<void> {
    const { host, port, name, listen } = this.config
    let socket: Socket
    try {
      socket = await bindUdp(host, port, shared)
    } catch (err) {
      throw bindError('SLUICE_ERR_LISTEN', `listener "${name}"`, listen, err instanceof Error ? err : new Error(errorMessage(err)))
    }
    try {
      socket.setRecvBufferSize(SOCKET_BUFFER_BYTES)
      socket.setSendBufferSize(SOCKET_BUFFER_BYTES)
    } catch {
      // The defaults work; bigger buffers only absorb bursts better.
    }
    socket.on('message', this.onMessage)
    socket.on('error', (err) => {
      const suppressed = this.throttle.take('socket')
      if (suppressed !== false) {
        this.log.error({ code: 'SLUICE_ERR_LISTEN', listener: this.name, errno: errnoCode(err), suppressed }, `udp listener socket error: ${err.message}`)
      }
    })
    this.socket = socket
    this.socketOpen = true
    this.syncDnsPath()
  }

  /**
   * Puts dns mode on the native DNS relay when it can run this listener (it loads, relay is
   * not js, nothing the native relay lacks is configured), else on the JS relay: the native
   * one reads a duplicate of the socket while Node stops reading it, and gives it back (Node
   * reads again) when a reload makes it unfit. The socket stays bound throughout.
   */
  syncDnsPath(): void {
    const socket = this.socket
    if (socket === undefined || !this.socketOpen) return
    let why: string | undefined
    if (this.config.udp.mode !== 'dns') why = 'session mode'
    else if (this.closing) why = 'closing'
    else if (!this.nativeDnsAllowed) why = 'relay: js'
    else why = nativeDnsBlocker(this.config, this.pool) ?? loadNativeDns().reason
    const current = this.native
    if (current !== undefined && (why !== undefined || current.unfit || current.upstreamSockets !== this.config.udp.upstreamSockets)) {
      this.native = undefined
      this.leaveNative(current)
      setNodeReading(socket, true)
    }
    if (why === undefined && this.native !== undefined) this.native.update(this.pool)
    if (why === undefined && this.native === undefined) {
      const binding = loadNativeDns().binding
      try {
        if (binding === undefined || !setNodeReading(socket, false)) throw new Error('the socket cannot be handed over')
        this.native = new NativeDns(binding, this, this.pool, socket, () => this.syncDnsPath())
      } catch (err) {
        setNodeReading(socket, true)
        why = `the native DNS relay could not start: ${errorMessage(err)}`
      }
    }
    if (this.config.udp.mode !== 'dns' || this.closing) return
    const path = why === undefined ? 'native' : `js (${why})`
    if (path === this.dnsPath) return
    this.dnsPath = path
    if (why === undefined) this.log.info({ listener: this.name, dns_relay: 'native' }, `listener ${this.name}: dns queries are relayed by the native DNS relay`)
    else this.log.info({ listener: this.name, dns_relay: 'js', reason: why }, `listener ${this.name}: dns queries are relayed by the JS DNS relay (${why})`)
  }

  /** Which relay runs dns mode now: native, js, or undefined in session mode. */
  get dnsRelay(): 'native' | 'js' | undefined {
    if (this.config.udp.mode !== 'dns') return undefined
    return this.native !== undefined ? 'native' : 'js'
  }

  private leaveNative(n: NativeDns): void {
    this.nativeLeaving.add(n)
    void n.close().then(() => {
      this.nativeRelayed += n.relayed
      this.nativeLeaving.delete(n)
    })
  }

  /** Queries in flight in dns mode (0 in session mode). */
  get queriesInFlight(): number {
    let n = (this.dns?.inFlight ?? 0) + (this.native?.inFlight ?? 0)
    for (const x of this.nativeLeaving) n += x.inFlight
    return n
  }

  address(): ListenerAddress {
    if (this.socket !== undefined && this.socketOpen) {
      const a = this.socket.address()
      return { host: a.address, port: a.port, text: formatAddress(a.address, a.port) }
    }
    return { host: this.config.host, port: this.config.port, text: this.config.listen }
  }

  update(config: AnyListenerConfig, pool: Pool, accessLog: boolean): void {
    if (config.protocol !== 'udp') throw new TypeError(`listener ${config.name}: a udp listener cannot take ${config.protocol} settings`)
    if (config.name !== this.config.name) {
      // Renamed, same socket: what was counted stays under the old name; the gauges (live
      // sessions, idle upstream sockets) move to the new one.
      this.flushCounters()
      for (const [gauge, now] of [[this.metrics.udpSessionsActive, this.stats.sessions], [this.metrics.udpUpstreamSocketsIdle, this.stats.upstreamIdle]] as const) {
        if (now === 0) continue
        gauge.dec({ listener: this.config.name }, now)
        gauge.inc({ listener: config.name }, now)
      }
    }
    this.config = config
    this.pool = pool
    this.accessLog = accessLog
    this.gate = makeGate(config, this.sources)
    this.wheel.configure(config.udp.sessionTimeoutMs)
    this.upstreams.max = config.udp.reuseSockets
    if (config.udp.reuseSockets === 0) this.upstreams.closeIdle()
    if (config.udp.mode === 'dns') {
      if (this.dns === undefined) this.dns = new DnsRelay(this, pool)
      else this.dns.update(pool)
    } else if (this.dns !== undefined) {
      // Back to sessions: queries in flight still get their answers, then its sockets close.
      void this.dns.close()
      this.dns = undefined
    }
    this.syncDnsPath()
  }

  flushCounters(): void {
    this.native?.sync()
    for (const n of this.nativeLeaving) n.sync()
    this.stats.flush(this.metrics, this.name)
  }

  close(): Promise<void> {
    this.closing = true
    this.upstreams.retire()
    const native = this.native
    if (native !== undefined) {
      // In flight on the native relay: answered or timed out, then the JS relay's turn.
      this.native = undefined
      this.leaveNative(native)
    }
    if (this.nativeLeaving.size > 0) return Promise.all([...this.nativeLeaving].map((n) => n.close())).then(() => this.close())
    const dns = this.dns
    if (dns !== undefined) {
      return dns.close().then(() => {
        if (this.sessions.size === 0) this.closeSocket()
        else return new Promise<void>((resolve) => this.idleWaiters.push(resolve))
      })
    }
    if (this.sessions.size === 0) {
      this.closeSocket()
      return Promise.resolve()
    }
    return new Promise((resolve) => this.idleWaiters.push(resolve))
  }

  destroy(): void {
    this.closing = true
    this.upstreams.retire()
    this.native?.destroy()
    this.native = undefined
    for (const n of this.nativeLeaving) n.destroy()
    this.nativeLeaving.clear()
    this.dns?.destroy()
    for (const s of [...this.sessions.values()]) s.end('shutdown')
    this.closeSocket()
  }

  pickFor(session: UdpSession, avoid: ReadonlySet<Backend> | undefined): Backend | undefined {
    return this.pick(session.pool, session.clientAddress, session.clientPort, avoid)
  }

  toClient(msg: Buffer, session: UdpSession): void {
    if (this.socketOpen) this.socket?.send(msg, session.clientPort, session.clientAddress)
  }

  toClientAddress(msg: Buffer, port: number, address: string): void {
    if (this.socketOpen) this.socket?.send(msg, port, address)
  }

  sessionEnded(session: UdpSession): void {
    if (session.sourceKey !== undefined) {
      this.sources.connections.release(session.sourceKey)
      session.sourceKey = undefined
    }
    if (this.sessions.get(session.key) === session) this.sessions.delete(session.key)
    this.wheel.remove(session)
    this.stats.sessions--
    if (this.freeSessions.length < FREE_SESSIONS) this.freeSessions.push(session)
    if (this.closing && this.sessions.size === 0) this.closeSocket()
  }

  private readonly onMessage = (msg: Buffer, rinfo: RemoteInfo): void => {
    const dns = this.dns
    const gate = this.gate
    if (gate !== undefined) {
      // Sessions are admitted by the whole gate when they open; every datagram by its rate.
      if (dns !== undefined && !gate.allows(rinfo.address)) {
        this.dropSource('access_denied', rinfo.address)
        return
      }
      if (gate.limitsDatagrams && !gate.datagram(rinfo.address)) {
        this.dropSource('source_datagrams', rinfo.address)
        return
      }
      if (gate.lastFull !== undefined) this.tableFull(gate)
    }
    if (dns !== undefined) {
      dns.query(msg, rinfo.address, rinfo.port)
      return
    }
    const now = Date.now()
    const key = rinfo.address + ' ' + rinfo.port
    const s = this.sessions.get(key) ?? this.open(key, rinfo.address, rinfo.port, now)
    if (s !== undefined) s.fromClient(msg, now)
  }

  /** A session for a new client, or undefined when it is refused (counted, logged throttled). */
  private open(key: string, address: string, port: number, now: number): UdpSession | undefined {
    if (this.closing) {
      this.stats.refuse('shutdown')
      return undefined
    }
    const { udp, name } = this.config
    const gate = this.gate
    const held = this.held
    held.sourceKey = undefined
    if (gate !== undefined) {
      const refused = gate.admit(address, held)
      if (gate.lastFull !== undefined) this.tableFull(gate)
      if (refused !== undefined) {
        this.dropSource(refused, address)
        return undefined
      }
    }
    if (this.exhaustion?.paused === true) {
      // Out of descriptors: a session could not get its socket. Counted; the guard warns.
      this.stats.refuse('fd_exhausted')
      this.exhaustion.count('fd', name)
      return undefined
    }
    if (this.sessions.size >= udp.maxSessions) {
      this.releaseHeld()
      this.stats.refuse('max_sessions')
      this.exhaustion?.sessionsFull(name)
      const suppressed = this.throttle.take('max_sessions')
      if (suppressed !== false) {
        this.log.warn(
          { code: 'SLUICE_ERR_UDP_MAX_SESSIONS', listener: name, max_sessions: udp.maxSessions, client: formatAddress(address, port), suppressed },
          `datagram dropped: listener ${name} already holds max_sessions (${udp.maxSessions}) udp sessions`,
        )
      }
      return undefined
    }
    const pool = this.pool
    const b = this.pick(pool, address, port, undefined)
    if (b === undefined) {
      this.releaseHeld()
      this.stats.refuse('no_backend')
      const suppressed = this.throttle.take('no_backend')
      if (suppressed !== false) {
        this.log.warn(
          { code: 'SLUICE_ERR_NO_BACKEND', listener: name, pool: pool.name, client: formatAddress(address, port), suppressed },
          `datagram dropped: no usable backend in pool ${pool.name}`,
        )
      }
      return undefined
    }
    const free = this.freeSessions.pop()
    const s = free ?? new UdpSession(this, pool, key, address, port, now)
    if (free !== undefined) free.init(pool, key, address, port, now)
    s.sourceKey = held.sourceKey
    held.sourceKey = undefined
    this.opened++
    this.sessions.set(key, s)
    this.stats.sessions++
    this.wheel.add(s)
    s.start(b)
    return s
  }

  /** A datagram dropped by access or limits: counted; one summary line a second. */
  private dropSource(reason: SourceRefusal | 'source_datagrams', address: string): void {
    this.stats.sourceDrops[reason]++
    if (reason === 'source_datagrams') {
      const suppressed = this.throttle.take('source:source_datagrams')
      if (suppressed !== false) {
        this.log.warn(
          { code: 'SLUICE_ERR_SOURCE_RATE', listener: this.name, reason, client: address, suppressed },
          `listener ${this.name} dropped ${suppressed + 1} datagram(s) in the last second or more: over limits.per_source_datagrams (latest from ${address})`,
        )
      }
      return
    }
    reportSourceRefusal(this, reason, address)
  }

  private tableFull(gate: SourceGate): void {
    const table = gate.lastFull
    if (table === undefined) return
    gate.lastFull = undefined
    this.stats.tableFull[table]++
    const suppressed = this.throttle.take(`source-table-full:${table}`)
    if (suppressed === false) return
    this.log.warn(
      { code: 'SLUICE_ERR_SOURCE_TABLE_FULL', listener: this.name, table, suppressed },
      `the per-source ${table} table is full: a new client address was admitted without its per-source limit (a flood of distinct sources?)`,
    )
  }

  private releaseHeld(): void {
    const key = this.held.sourceKey
    if (key === undefined) return
    this.held.sourceKey = undefined
    this.sources.connections.release(key)
  }

  private pick(pool: Pool, address: string, port: number, avoid: ReadonlySet<Backend> | undefined): Backend | undefined {
    const ctx = this.ctx
    ctx.remoteAddress = address
    ctx.remotePort = port
    return pool.pick(ctx, avoid)
  }

  private closeSocket(): void {
    if (this.socketOpen) {
      this.socketOpen = false
      this.socket?.close()
    }
    this.wheel.stop()
    this.flushCounters()
    const waiters = this.idleWaiters
    this.idleWaiters = []
    for (const w of waiters) w()
  }
}

function makeGate(config: UdpListenerConfig, sources: SourceTables): SourceGate | undefined {
  return SourceGate.needed(config.access, config.limits) ? new SourceGate(config.name, config.access, config.limits, sources) : undefined
}

/** Binds `host:port`; an empty host is every address, IPv6 and IPv4 where the host has both. */
async function bindUdp(host: string, port: number, shared: boolean): Promise<Socket> {
  if (host === '') {
    try {
      return await bindOnce('udp6', '::', port, shared)
    } catch (err) {
      const errno = errnoCode(err)
      if (errno !== 'EAFNOSUPPORT' && errno !== 'EADDRNOTAVAIL') throw err
      return bindOnce('udp4', '0.0.0.0', port, shared)
    }
  }
  const family = isIP(host) || (await lookupAsync(host)).family
  return bindOnce(family === 6 ? 'udp6' : 'udp4', host, port, shared)
}

function bindOnce(type: SocketType, address: string, port: number, shared: boolean): Promise<Socket> {
  return new Promise((resolve, reject) => {
    // literalLookup: every reply is sent to an IP literal (the client's), at no DNS cost.
    // reusePort (Node 22.12+; not in these typings): several workers on one port.
    const opts: { type: SocketType; ipv6Only: boolean; lookup: typeof literalLookup; reusePort?: boolean } = { type, ipv6Only: false, lookup: literalLookup }
    if (shared) opts.reusePort = true
    const s = createSocket(opts)
    const onError = (err: Error): void => {
      try {
        s.close()
      } catch {
        // A failed bind may already have closed it.
      }
      reject(err)
    }
    s.once('error', onError)
    s.bind({ port, address, exclusive: !shared }, () => {
      s.off('error', onError)
      resolve(s)
    })
  })
}
