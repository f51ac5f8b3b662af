import { createSocket, type Socket } from 'node:dgram'
import { isIP } from 'node:net'
import type { UdpListenerConfig } from '../config/types.js'
import type { Logger } from '../log.js'
import type { LogThrottle } from '../log-throttle.js'
import type { Pool } from '../upstream/pool.js'
import type { Backend } from '../upstream/backend.js'
import type { PickContext } from '../balancer/types.js'
import { errnoCode } from '../errors.js'
import { dgramProxyHeader, UDP4_MAX_PAYLOAD, UDP6_MAX_PAYLOAD } from './udp-session.js'
import { literalLookup } from './udp-upstream.js'
import type { UdpStats } from './udp-stats.js'
import { DNS_HEADER_BYTES, dnsId, isResponse, questionHash, setDnsId } from './dns-message.js'

/** Queries in flight per upstream socket: the low 12 bits of the ID sent name the slot. */
const SLOT_BITS = 12
const SLOTS = 1 << SLOT_BITS
const SLOT_MASK = SLOTS - 1
/** Queries held per socket while it connects (a backend given by name waits for its lookup). */
const MAX_PENDING = 64

/** What the relay needs from its UDP listener. */
export interface DnsRelayOwner {
  readonly config: UdpListenerConfig
  readonly log: Logger
  readonly throttle: LogThrottle
  readonly stats: UdpStats
  /** The listener's bound address: the destination a PROXY v2 header names. */
  address(): { host: string; port: number }
  /** Sends an answer to a client from the listener's own socket. */
  toClientAddress(msg: Buffer, port: number, address: string): void
}

/**
 * One connected socket to a backend and the queries in flight on it. A query takes a free
 * slot (at random); the ID sent is the slot number plus a 4-bit generation that changes each
 * time the slot is reused, so a late answer to an earlier query in the same slot is told
 * apart and dropped. Everything per slot lives in typed arrays allocated once: no allocation per query.
 */
class Upstream {
  readonly socket: Socket
  ready = false
  closed = false
  inFlight = 0
  private pending: Buffer[] | undefined = []
  private readonly origId = new Uint16Array(SLOTS)
  private readonly clientPort = new Uint16Array(SLOTS)
  private readonly clientAddr: (string | undefined)[] = new Array<string | undefined>(SLOTS).fill(undefined)
  private readonly qhash = new Uint32Array(SLOTS)
  private readonly sentAt = new Float64Array(SLOTS)
  private readonly gen = new Uint8Array(SLOTS)
  private readonly busy = new Uint8Array(SLOTS)
  private readonly free = new Uint16Array(SLOTS)
  private freeTop = SLOTS

  constructor(
    private readonly relay: DnsRelay,
    readonly backend: Backend,
  ) {
    for (let i = 0; i < SLOTS; i++) this.free[i] = SLOTS - 1 - i
    this.socket = createSocket({ type: isIP(backend.host) === 6 ? 'udp6' : 'udp4', lookup: literalLookup })
    this.socket.on('message', this.onAnswer)
    this.socket.on('error', (err: Error) => relay.upstreamError(this, err))
    this.socket.connect(backend.port, backend.host, (err?: Error) => {
      if (err !== undefined) {
        relay.upstreamError(this, err)
        return
      }
      this.ready = true
      const q = this.pending
      this.pending = undefined
      if (q !== undefined && !this.closed) for (const m of q) this.socket.send(m)
    })
  }

  get full(): boolean {
    return this.freeTop === 0
  }

  /** Sends `msg` (its ID rewritten) for the client; false when no slot or queue room is left. */
  send(msg: Buffer, header: Buffer | undefined, hash: number, address: string, port: number, now: number): boolean {
    if (this.freeTop === 0 || (!this.ready && (this.pending?.length ?? MAX_PENDING) >= MAX_PENDING)) return false
    // A free slot at random and a new generation that differs from the slot's last one: the
    // ID sent is hard to guess for anyone spoofing answers, and a late answer to the slot's
    // previous query never matches the new one.
    const k = (Math.random() * this.freeTop) | 0
    const slot = this.free[k]!
    this.free[k] = this.free[--this.freeTop]!
    const g = (this.gen[slot]! + 1 + ((Math.random() * 15) | 0)) & 0x0f
    this.gen[slot] = g
    this.busy[slot] = 1
    this.origId[slot] = dnsId(msg)
    this.clientPort[slot] = port
    this.clientAddr[slot] = address
    this.qhash[slot] = hash
    this.sentAt[slot] = now
    this.inFlight++
    setDnsId(msg, (g << SLOT_BITS) | slot)
    const out = header === undefined ? msg : Buffer.concat([header, msg])
    if (this.ready) this.socket.send(out)
    else this.pending?.push(out)
    return true
  }

  private readonly onAnswer = (msg: Buffer): void => {
    const relay = this.relay
    if (msg.length < DNS_HEADER_BYTES || !isResponse(msg)) {
      relay.dropped('malformed_answer')
      return
    }
    const id = dnsId(msg)
    const slot = id & SLOT_MASK
    if (this.busy[slot] !== 1 || this.gen[slot] !== id >>> SLOT_BITS) {
      // Answered already, timed out, or never asked: a late or stray answer.
      relay.dropped('unmatched_answer')
      return
    }
    const hash = questionHash(msg)
    // An error answer (FORMERR, say) may leave the question out; anything else must echo it.
    const rcode = msg[3]! & 0x0f
    if (hash !== this.qhash[slot] && !(hash === -1 && rcode !== 0)) {
      relay.dropped('question_mismatch')
      return
    }
    setDnsId(msg, this.origId[slot]!)
    const address = this.clientAddr[slot]!
    const port = this.clientPort[slot]!
    this.release(slot)
    relay.answered(this, msg, address, port)
  }

  private release(slot: number): void {
    this.busy[slot] = 0
    this.clientAddr[slot] = undefined
    this.free[this.freeTop++] = slot
    this.inFlight--
  }

  /** Drops the queries sent before `deadline`; returns how many. */
  expire(deadline: number): number {
    let n = 0
    const busy = this.busy
    const sentAt = this.sentAt
    for (let slot = 0; slot < SLOTS && this.inFlight > 0; slot++) {
      if (busy[slot] === 1 && sentAt[slot]! < deadline) {
        this.release(slot)
        n++
      }
    }
    return n
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    this.pending = undefined
    this.socket.close()
  }
}

/**
 * DNS over UDP relayed as dnsdist does: each backend gets a few long-lived connected sockets
 * (udp.upstream_sockets); a query is sent on one of them with its ID rewritten to a free slot,
 * and the answer is matched by that ID and by its question, given back its original ID and
 * sent to the client from the listener's socket. No session, no socket per client: a stub
 * resolver that uses a new source port per query costs a map-free slot, not a socket.
 * Answers that match nothing in flight (late, duplicated, spoofed), or whose question differs,
 * are dropped and counted; so are queries unanswered within udp.query_timeout.
 */
export class DnsRelay {
  private readonly links = new Map<Backend, { sockets: Upstream[]; next: number }>()
  private readonly ctx: PickContext = { protocol: 'udp', remoteAddress: '', remotePort: 0 }
  private sweep: NodeJS.Timeout
  private closing = false
  /** Queries relayed since the relay started. */
  relayed = 0
  private idleWaiters: (() => void)[] = []

  constructor(
    private readonly owner: DnsRelayOwner,
    public pool: Pool,
  ) {
    this.sweep = setInterval(() => this.expire(), this.sweepMs())
    this.sweep.unref()
  }

  private sweepMs(): number {
    return Math.max(10, Math.min(250, Math.floor(this.owner.config.udp.queryTimeoutMs / 4)))
  }

  /** Queries in flight on every backend. */
  get inFlight(): number {
    let n = 0
    for (const l of this.links.values()) for (const u of l.sockets) n += u.inFlight
    return n
  }

  /** A query from a client: relay it, or drop it (counted). */
  query(msg: Buffer, address: string, port: number): void {
    const stats = this.owner.stats
    if (this.closing) {
      stats.refuse('shutdown')
      return
    }
    const hash = msg.length >= DNS_HEADER_BYTES && !isResponse(msg) ? questionHash(msg) : -1
    if (hash === -1) {
      this.dropped('malformed_query')
      return
    }
    const ctx = this.ctx
    ctx.remoteAddress = address
    ctx.remotePort = port
    const pool = this.pool
    const b = pool.pick(ctx, undefined)
    if (b === undefined) {
      stats.refuse('no_backend')
      const suppressed = this.owner.throttle.take('no_backend')
      if (suppressed !== false) {
        const name = this.owner.config.name
        this.owner.log.warn({ code: 'SLUICE_ERR_NO_BACKEND', listener: name, pool: pool.name, client: `${address}:${port}`, suppressed }, `query dropped: no usable backend in pool ${pool.name}`)
      }
      return
    }
    const header = pool.config.proxyProtocol === 'v2' ? this.proxyHeader(address, port) : undefined
    if (header !== undefined && header.length + msg.length > (isIP(b.host) === 6 ? UDP6_MAX_PAYLOAD : UDP4_MAX_PAYLOAD)) {
      stats.droppedTooLarge++
      return
    }
    const link = this.linkFor(b)
    const n = link.sockets.length
    for (let i = 0; i < n; i++) {
      const u = link.sockets[link.next]!
      link.next = link.next + 1 === n ? 0 : link.next + 1
      if (u.send(msg, header, hash, address, port, Date.now())) {
        pool.acquire(b)
        this.relayed++
        stats.datagramsIn++
        stats.bytesIn += msg.length
        return
      }
    }
    this.dropped('ids_exhausted')
  }

  /** An answer matched to its query (original ID restored): to the client. */
  answered(u: Upstream, msg: Buffer, address: string, port: number): void {
    const b = u.backend
    this.pool.release(b)
    if (b.consecutiveFailures !== 0) b.consecutiveFailures = 0
    const stats = this.owner.stats
    stats.datagramsOut++
    stats.bytesOut += msg.length
    this.owner.toClientAddress(msg, port, address)
    this.settled(u)
  }

  dropped(reason: DnsDrop): void {
    this.owner.stats.dnsDropped(reason)
  }

  upstreamError(u: Upstream, err: Error): void {
    const b = u.backend
    const errno = errnoCode(err)
    // ICMP port unreachable: nothing listens there. Counted like a failed connect, so passive
    // ejection can take the backend out; the queries in flight time out.
    b.failedOnce()
    this.pool.onConnectFailure?.(b, errno === 'ECONNREFUSED' ? 'refused' : (errno ?? err.message))
    const suppressed = this.owner.throttle.take(`dns-upstream:${b.id}`)
    if (suppressed !== false) {
      this.owner.log.warn(
        { code: errno === 'ECONNREFUSED' ? 'SLUICE_ERR_UDP_UNREACHABLE' : 'SLUICE_ERR_BACKEND_SOCKET', listener: this.owner.config.name, pool: this.pool.name, backend: b.id, errno, suppressed },
        `dns backend ${b.id}: ${err.message}`,
      )
    }
  }

  /** New settings after a reload that kept this listener; sockets of backends still there stay. */
  update(pool: Pool): void {
    this.pool = pool
    clearInterval(this.sweep)
    this.sweep = setInterval(() => this.expire(), this.sweepMs())
    this.sweep.unref()
  }

  /** Takes no new queries; resolves when every query in flight is answered or timed out. */
  close(): Promise<void> {
    this.closing = true
    if (this.inFlight === 0) {
      this.destroy()
      return Promise.resolve()
    }
    return new Promise((resolve) => this.idleWaiters.push(resolve))
  }

  destroy(): void {
    this.closing = true
    clearInterval(this.sweep)
    for (const [b, l] of this.links) {
      for (const u of l.sockets) {
        for (let i = u.inFlight; i > 0; i--) this.pool.release(b)
        u.close()
      }
    }
    this.links.clear()
    const waiters = this.idleWaiters
    this.idleWaiters = []
    for (const w of waiters) w()
  }

  private linkFor(b: Backend): { sockets: Upstream[]; next: number } {
    let l = this.links.get(b)
    if (l === undefined) {
      const n = this.owner.config.udp.upstreamSockets
      l = { sockets: Array.from({ length: n }, () => new Upstream(this, b)), next: 0 }
      this.links.set(b, l)
    }
    return l
  }

  /** After an answer or expiry: close what a retired backend or a closing relay no longer needs. */
  private settled(u: Upstream): void {
    if (u.inFlight !== 0) return
    if (this.closing && this.inFlight === 0) this.destroy()
    else if (u.backend.retired) this.retire(u.backend)
  }

  private retire(b: Backend): void {
    const l = this.links.get(b)
    if (l === undefined || l.sockets.some((x) => x.inFlight > 0)) return
    for (const x of l.sockets) x.close()
    this.links.delete(b)
  }

  private expire(): void {
    const deadline = Date.now() - this.owner.config.udp.queryTimeoutMs
    for (const [b, l] of this.links) {
      for (const u of l.sockets) {
        if (u.inFlight === 0) continue
        const n = u.expire(deadline)
        if (n === 0) continue
        for (let i = 0; i < n; i++) this.pool.release(b)
        this.owner.stats.dnsDropped('timeout', n)
      }
      if (b.retired) this.retire(b)
    }
    if (this.closing && this.inFlight === 0) this.destroy()
  }

  private proxyHeader(address: string, port: number): Buffer {
    return dgramProxyHeader(this.owner.address(), address, port)
  }
}

/** Why a DNS message was dropped in dns mode: the `reason` of sluice_dns_dropped_total. */
export type DnsDrop = 'malformed_query' | 'malformed_answer' | 'unmatched_answer' | 'question_mismatch' | 'timeout' | 'ids_exhausted'
