import { isIP } from 'node:net'
import type { Backend } from '../upstream/backend.js'
import type { Pool } from '../upstream/pool.js'
import type { UdpListenerConfig } from '../config/types.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics/metrics.js'
import type { LogThrottle } from '../log-throttle.js'
import type { Expiring } from './udp-expiry.js'
import type { UdpStats } from './udp-stats.js'
import { errnoCode } from '../errors.js'
import { formatAddress } from '../config/address.js'
import { encodeV2 } from './proxy-header-out.js'
import { localExhaustion } from '../fd-budget.js'
import type { ExhaustionGuard } from '../listener/accept-guard.js'
import type { UdpUpstream, UdpUpstreams, UpstreamUser } from './udp-upstream.js'

export type UdpCloseReason =
  | 'timeout' // no datagram either way for udp.session_timeout
  | 'responses' // every reply expected (udp.responses per client datagram) has arrived
  | 'backend_error' // the backends tried were unreachable, or the upstream socket failed
  | 'no_backend' // after a failure there was no other backend left to try
  | 'fd_exhausted' // sluice had no descriptor for the session's upstream socket (EMFILE, ENFILE, ENOBUFS, ENOMEM)
  | 'shutdown' // sluice stopped and shutdown_timeout ran out (or the listener was destroyed)

/**
 * The PROXY v2 DGRAM header for a datagram from `address`:`port` to a listener bound at
 * `bound` (a wildcard bind names the family's any-address as the destination).
 */
export function dgramProxyHeader(bound: { host: string; port: number }, address: string, port: number): Buffer {
  const wildcard = bound.host === '' || bound.host === '0.0.0.0' || bound.host === '::'
  const destAddress = wildcard ? (isIP(address) === 6 ? '::' : '0.0.0.0') : bound.host
  return encodeV2({ sourceAddress: address, sourcePort: port, destAddress, destPort: bound.port }, 'dgram')
}

/** 65,535 less the IPv4 (20) and UDP (8) headers. */
export const UDP4_MAX_PAYLOAD = 65_507
/** 65,535 less the UDP header (the IPv6 payload length does not include its own header). */
export const UDP6_MAX_PAYLOAD = 65_527

/** What a session needs from the listener that owns it. */
export interface UdpSessionOwner {
  readonly config: UdpListenerConfig
  readonly log: Logger
  readonly metrics: Metrics
  readonly throttle: LogThrottle
  readonly accessLog: boolean
  readonly stats: UdpStats
  /** Pauses new sessions when descriptors run out (accept-guard.ts). */
  readonly exhaustion?: ExhaustionGuard | undefined
  /** New upstream sockets, and idle connected ones finished sessions left (udp.reuse_sockets). */
  readonly upstreams: UdpUpstreams
  /** A backend of the session's pool for its client, skipping `avoid`. */
  pickFor(session: UdpSession, avoid: ReadonlySet<Backend> | undefined): Backend | undefined
  /** The listener's bound address: the destination a PROXY v2 header names. */
  address?(): { host: string; port: number }
  /** Sends a reply to the session's client from the listener's own socket. */
  toClient(msg: Buffer, session: UdpSession): void
  /** The session has ended: the last thing it does, so the listener may recycle it (init()). */
  sessionEnded(session: UdpSession): void
}

/** Datagrams held while the upstream socket connects: one tick for an IP backend, a DNS lookup for a named one. */
const MAX_PENDING = 64

/** Errors on a connected UDP socket that are ICMP unreachable messages about the backend. */
const UNREACHABLE = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'EHOSTDOWN'])

/**
 * One client address:port of a UDP listener and the backend it is pinned to, over a connected
 * upstream socket (so the kernel only lets that backend's replies in, and reports ICMP
 * unreachable back to us) that no other session uses while this one runs. A session whose
 * replies all came (udp.responses) leaves its socket idle for the next session to the same
 * backend (udp-upstream.ts). The data path per datagram only counts and sends: no closures,
 * no object literals, no timers. Nothing that happens here escapes it.
 */
export class UdpSession implements Expiring, UpstreamUser {
  // Every field is set by init(), for a new session and for one the listener recycles.
  lastSeen!: number
  expiryPrev!: Expiring | undefined
  expiryNext!: Expiring | undefined
  expirySlot!: number
  startedAt!: number
  pool!: Pool
  /** The client's address and port as the listener keys its sessions. */
  key!: string
  clientAddress!: string
  clientPort!: number
  backend!: Backend | undefined
  datagramsIn!: number
  datagramsOut!: number
  bytesIn!: number
  bytesOut!: number
  reason!: UdpCloseReason | undefined
  /** Its socket; datagrams go out once `upstream.connected`, and are held until then. */
  private upstream!: UdpUpstream | undefined
  private pending!: Buffer[] | undefined
  /** Backends that failed for this session; allocated on the first failure only. */
  private failed!: Set<Backend> | undefined
  private attempts!: number
  /** Replies still expected before the session ends (udp.responses per datagram sent). */
  private awaiting!: number
  private lastBackendId!: string | null
  /** PROXY v2 DGRAM header put before every datagram to the backend (pool proxy_protocol: v2). */
  private header!: Buffer | undefined
  /** The largest UDP payload towards the current backend: 65,507 bytes over IPv4, 65,527 over IPv6. */
  private maxPayload!: number
  private ended!: boolean
  /** The per-source count this session holds (limits.per_source_connections), released when it ends. */
  sourceKey!: string | undefined

  constructor(private readonly owner: UdpSessionOwner, pool: Pool, key: string, clientAddress: string, clientPort: number, now: number) {
    this.init(pool, key, clientAddress, clientPort, now)
  }

  /**
   * Makes this a new session of `clientAddress`:`clientPort`. The listener calls it on a
   * session that has ended (and that nothing refers to any more) instead of allocating one:
   * with udp.responses every query can be a session, and each would be garbage soon after.
   */
  init(pool: Pool, key: string, clientAddress: string, clientPort: number, now: number): void {
    this.lastSeen = now
    this.expiryPrev = undefined
    this.expiryNext = undefined
    this.expirySlot = -1
    this.startedAt = now
    this.pool = pool
    this.key = key
    this.clientAddress = clientAddress
    this.clientPort = clientPort
    this.backend = undefined
    this.datagramsIn = 0
    this.datagramsOut = 0
    this.bytesIn = 0
    this.bytesOut = 0
    this.reason = undefined
    this.upstream = undefined
    this.pending = undefined
    this.failed = undefined
    this.attempts = 0
    this.awaiting = 0
    this.lastBackendId = null
    this.header = undefined
    this.maxPayload = UDP4_MAX_PAYLOAD
    this.ended = false
    this.sourceKey = undefined
  }

  get client(): string {
    return formatAddress(this.clientAddress, this.clientPort)
  }

  get isEnded(): boolean {
    return this.ended
  }

  /** Opens the upstream socket to `b`, the listener's pick for this new session. */
  start(b: Backend): void {
    this.attach(b)
  }

  /** A datagram from the client: relay it, or hold it while the upstream socket connects. */
  fromClient(msg: Buffer, now: number): void {
    this.lastSeen = now
    if (this.header !== undefined && this.header.length + msg.length > this.maxPayload) {
      this.tooLarge(msg.length)
      return
    }
    if (this.upstream === undefined && !this.repick()) {
      // Unreachable backends and nothing else to try: drop it, end the session; the client's
      // next datagram starts afresh.
      this.owner.stats.refusedNoBackend++
      this.end(this.attempts > this.pool.retries ? 'backend_error' : 'no_backend')
      return
    }
    const up = this.upstream
    // Connected: a socket of this session's own once its connect is done, or an idle one at once.
    if (up !== undefined && up.connected) {
      this.counted(msg)
      if (this.header === undefined) up.socket.send(msg)
      else up.socket.send([this.header, msg])
      return
    }
    const q = (this.pending ??= [])
    if (q.length >= MAX_PENDING) {
      this.owner.stats.droppedNotReady++
      return
    }
    this.counted(msg)
    q.push(msg)
  }

  /** Ends the session now: closes its upstream socket, frees its backend, logs it. */
  end(reason: UdpCloseReason): void {
    if (this.ended) return
    this.ended = true
    // Waiting out the timeout after every backend failed is a backend problem, not idleness.
    this.reason = reason === 'timeout' && this.upstream === undefined && this.failed !== undefined ? 'backend_error' : reason
    this.pending = undefined
    this.detach(reason === 'responses')
    const owner = this.owner
    if (owner.accessLog) {
      owner.log.info(
        {
          access: true,
          protocol: 'udp',
          listener: owner.config.name,
          client: this.client,
          pool: this.pool.name,
          backend: this.lastBackendId,
          bytes_in: this.bytesIn,
          bytes_out: this.bytesOut,
          datagrams_in: this.datagramsIn,
          datagrams_out: this.datagramsOut,
          duration_ms: Date.now() - this.startedAt,
          attempts: this.attempts,
          close_reason: this.reason,
        },
        'udp session ended',
      )
    }
    // Last: the listener may recycle this object for its next session (init()).
    owner.sessionEnded(this)
  }

  /**
   * A datagram that no longer fits in one UDP datagram once the PROXY v2 header is put
   * before it: the kernel would refuse it (EMSGSIZE). Dropped, counted apart from other drops
   * and logged (throttled), never counted as relayed.
   */
  private tooLarge(size: number): void {
    const owner = this.owner
    owner.stats.droppedTooLarge++
    const suppressed = owner.throttle.take(`too-large:${owner.config.name}`)
    if (suppressed === false) return
    const room = this.maxPayload - (this.header?.length ?? 0)
    owner.log.warn(
      { code: 'SLUICE_ERR_UDP_TOO_LARGE', listener: owner.config.name, pool: this.pool.name, client: this.client, bytes: size, max_bytes: room, suppressed },
      `udp datagram of ${size} bytes dropped: with the ${this.header?.length ?? 0}-byte PROXY v2 header it exceeds the ${this.maxPayload}-byte UDP payload limit (at most ${room} bytes of data fit)`,
    )
  }

  private counted(msg: Buffer): void {
    const n = msg.length
    this.datagramsIn++
    this.bytesIn += n
    const stats = this.owner.stats
    stats.datagramsIn++
    stats.bytesIn += n
    this.awaiting += this.owner.config.udp.responses
  }

  onUpstreamReply(msg: Buffer): void {
    if (this.ended) return
    this.lastSeen = Date.now()
    const n = msg.length
    this.datagramsOut++
    this.bytesOut += n
    const owner = this.owner
    owner.stats.datagramsOut++
    owner.stats.bytesOut += n
    const b = this.backend
    if (b !== undefined && b.consecutiveFailures !== 0) b.consecutiveFailures = 0
    owner.toClient(msg, this)
    if (owner.config.udp.responses > 0 && --this.awaiting <= 0) this.end('responses')
  }

  onUpstreamConnect(err: Error | undefined): void {
    const b = this.backend
    if (b === undefined) return
    if (err !== undefined) {
      this.backendFailed(b, err, 'SLUICE_ERR_CONNECT')
      return
    }
    const q = this.pending
    const up = this.upstream
    if (q === undefined || up === undefined) return
    this.pending = undefined
    const h = this.header
    for (const msg of q) up.socket.send(h === undefined ? msg : [h, msg])
  }

  private attach(b: Backend): void {
    this.attempts++
    this.pool.acquire(b)
    this.backend = b
    this.lastBackendId = b.id
    // Datagrams still held from a failed connect now wait for this backend's replies.
    this.awaiting = this.pending === undefined ? 0 : this.pending.length * this.owner.config.udp.responses
    this.header = this.pool.config.proxyProtocol === 'v2' ? this.proxyHeader() : undefined
    const up = this.owner.upstreams.take(b.id, b.host, b.port, this)
    this.maxPayload = up.family === 6 ? UDP6_MAX_PAYLOAD : UDP4_MAX_PAYLOAD
    this.upstream = up
    // A reused socket is connected already: what is held goes out now.
    if (up.connected) this.onUpstreamConnect(undefined)
  }

  private proxyHeader(): Buffer {
    const cfg = this.owner.config
    return dgramProxyHeader(this.owner.address?.() ?? { host: cfg.host, port: cfg.port }, this.clientAddress, this.clientPort)
  }

  onUpstreamError(err: Error): void {
    const b = this.backend
    if (b === undefined) return
    if (this.outOfDescriptors(err)) return
    if (UNREACHABLE.has(errnoCode(err) ?? '')) {
      this.backendFailed(b, err, 'SLUICE_ERR_UDP_UNREACHABLE')
      return
    }
    const { log, config } = this.owner
    log.warn(
      { code: 'SLUICE_ERR_BACKEND_SOCKET', listener: config.name, pool: this.pool.name, backend: b.id, errno: errnoCode(err), client: this.client },
      `udp backend socket failed: ${err.message}`,
    )
    this.end('backend_error')
  }

  /**
   * The upstream socket could not be made for want of descriptors (or socket memory): not
   * the backend's failure. Counted, warned about once per interval, and new clients are
   * dropped until descriptors are free (accept-guard.ts); this session ends.
   */
  private outOfDescriptors(err: Error): boolean {
    const errno = localExhaustion(err)
    if (errno === undefined) return false
    const owner = this.owner
    owner.exhaustion?.exhausted(owner.config.name, 'udp_socket', errno)
    owner.stats.refuse('fd_exhausted')
    // Idle sockets kept for reuse are descriptors the next sessions need more.
    owner.upstreams.closeIdle()
    this.end('fd_exhausted')
    return true
  }

  /**
   * `b` failed this session: count it against the backend, and move on. Datagrams still held
   * (the connect failed) go to the next backend now; otherwise the next datagram re-picks.
   */
  private backendFailed(b: Backend, err: Error, code: 'SLUICE_ERR_CONNECT' | 'SLUICE_ERR_UDP_UNREACHABLE'): void {
    if (this.outOfDescriptors(err)) return
    const errno = errnoCode(err)
    b.failedOnce()
    const { metrics, log, config, throttle } = this.owner
    const reason = errno === 'ECONNREFUSED' ? 'refused' : errno === 'ENOTFOUND' || errno === 'EAI_AGAIN' ? 'dns' : UNREACHABLE.has(errno ?? '') ? 'unreachable' : 'other'
    metrics.connectErrorsTotal.inc({ pool: this.pool.name, backend: b.id, reason })
    // Passive health (the pool's `passive:`) counts it like a failed TCP connect.
    this.pool.onConnectFailure?.(b, errno ?? err.message)
    const suppressed = throttle.take(`udp:${this.pool.name}:${b.id}`)
    if (suppressed !== false) {
      log.warn(
        { code, listener: config.name, pool: this.pool.name, backend: b.id, errno, client: this.client, attempt: this.attempts, suppressed },
        `udp backend ${b.id} failed: ${err.message}`,
      )
    }
    ;(this.failed ??= new Set()).add(b)
    const held = this.pending
    this.detach()
    if (held !== undefined && !this.repick()) this.end(this.attempts > this.pool.retries ? 'backend_error' : 'no_backend')
  }

  /** Another backend, avoiding those that failed, within the pool's retries. */
  private repick(): boolean {
    if (this.attempts > this.pool.retries) return false
    const b = this.owner.pickFor(this, this.failed)
    if (b === undefined) return false
    this.attach(b)
    return true
  }

  /** Lets go of the upstream socket: kept for another session when `reusable`, else closed. */
  private detach(reusable = false): void {
    const up = this.upstream
    if (up !== undefined) {
      this.upstream = undefined
      if (reusable) this.owner.upstreams.give(up, this.lastSeen)
      else up.close()
    }
    const b = this.backend
    if (b !== undefined) {
      this.backend = undefined
      this.pool.release(b)
    }
  }
}
