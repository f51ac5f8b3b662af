import { createRequire } from 'node:module'
import { existsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { isIP } from 'node:net'
import type { Socket } from 'node:dgram'
import { constants as osConstants } from 'node:os'
import type { UdpListenerConfig } from '../config/types.js'
import type { Pool } from '../upstream/pool.js'
import type { Backend } from '../upstream/backend.js'
import type { DnsDrop } from './dns-relay.js'
import type { DnsRelayOwner } from './dns-relay.js'

/**
 * The native DNS relay (native/dns.c): udp.mode dns on an epoll thread of its own. It reads
 * the queries from a duplicate of the listener's socket (Node stops reading its own), picks
 * backends from a table this module keeps in step with the pool, and relays queries and
 * answers in batches with no JS call per query. Its counters come back in batches (sync) and
 * land in the same UdpStats and backend counters as the JS relay's, so /metrics is the same
 * whichever runs.
 */

/** The listener counters of takeCounters(), in native/dns.c's order. */
const L_DGRAMS_IN = 0
const L_BYTES_IN = 1
const L_DGRAMS_OUT = 2
const L_BYTES_OUT = 3
const L_DROPS: readonly DnsDrop[] = ['malformed_query', 'malformed_answer', 'unmatched_answer', 'question_mismatch', 'timeout', 'ids_exhausted']
const L_DROPS_AT = 4
const L_NO_BACKEND = 10
const L_SEND_FAILED = 12
const L_IN_FLIGHT = 13
const L_RUNNING = 14
/** Per backend: sent, settled, answered, errors, last errno, state. */
const B_SENT = 0
const B_SETTLED = 1
const B_ANSWERED = 2
const B_ERRORS = 3
const B_ERRNO = 4
const B_STATE = 5
const STATE_FREE = 0
/**
 * Relay threads per listener (each worker's), the upstream sockets split between them. One:
 * two threads reading the same socket measured no faster on 2 cores and cost more CPU per
 * query (docs/performance.md); the code takes more for a machine where they pay.
 */
const RELAY_THREADS = 1

interface EngineHandle {
  setBackend(index: number, ip: string, port: number, weight: number, usable: boolean, backup: boolean): void
  removeBackend(index: number): void
  setTimeout(ms: number): void
  stop(): void
  close(): void
  takeCounters(backends: number): Float64Array
}
interface DnsBinding {
  readonly Engine: new (fd: number, onChange: () => void, upstreamSockets: number, timeoutMs: number) => EngineHandle
  readonly listenerCells: number
  readonly backendCells: number
  readonly maxBackends: number
}

export type NativeDnsLoad = { binding: DnsBinding; reason?: undefined } | { binding: undefined; reason: string }

const ADDON_FILE = join('native', 'build', 'Release', 'sluice_dns.node')
let loaded: NativeDnsLoad | undefined

/** Loads native/dns.c's addon once (per thread), or says why it cannot be used. */
export function loadNativeDns(): NativeDnsLoad {
  if (loaded !== undefined) return loaded
  let dir = dirname(fileURLToPath(import.meta.url))
  let file: string | undefined
  for (let i = 0; i < 5 && file === undefined; i++) {
    const candidate = join(dir, ADDON_FILE)
    if (existsSync(candidate)) file = candidate
    const up = dirname(dir)
    if (up === dir) break
    dir = up
  }
  if (file === undefined) {
    loaded = { binding: undefined, reason: `not built (no ${ADDON_FILE}; npm run build:native builds it)` }
    return loaded
  }
  try {
    const m: unknown = createRequire(import.meta.url)(file)
    loaded = isBinding(m) ? { binding: m } : { binding: undefined, reason: `${file} is not the native DNS relay (npm run build:native rebuilds it)` }
  } catch (err) {
    loaded = { binding: undefined, reason: `${file} failed to load: ${err instanceof Error ? err.message.split('\n')[0] : String(err)}` }
  }
  return loaded
}

function isBinding(m: unknown): m is DnsBinding {
  if (typeof m !== 'object' || m === null) return false
  const b = m as { Engine?: unknown; listenerCells?: unknown; backendCells?: unknown }
  return typeof b.Engine === 'function' && b.listenerCells === 15 && b.backendCells === 6
}

/**
 * Why a dns-mode listener cannot take the native path (the JS relay runs it), or undefined
 * when it can: the native relay implements round-robin only, and none of access, limits,
 * PROXY v2 headers, slow start, max_connections or backends given by name.
 */
export function nativeDnsBlocker(config: UdpListenerConfig, pool: Pool): string | undefined {
  const pc = pool.config
  if (config.access !== undefined) return 'the listener has access rules'
  if (config.limits !== undefined) return 'the listener has limits'
  if (pc.algorithm !== 'round-robin') return `pool ${pool.name} uses ${pc.algorithm} (the native relay balances round-robin only)`
  if (pc.proxyProtocol !== undefined && pc.proxyProtocol !== 'off') return `pool ${pool.name} sends PROXY headers`
  if (pc.slowStartMs > 0) return `pool ${pool.name} has slow_start`
  for (const b of pool.backends) {
    if (isIP(b.host) === 0) return `backend ${b.id} is given by name`
    if (b.maxConnections > 0) return `backend ${b.id} has max_connections`
  }
  if (pool.backends.length > 512) return `pool ${pool.name} has more than 512 backends`
  return undefined
}

/** The parts of Node's dgram handle the handover uses (lib/internal/dgram.js keeps it under a symbol). */
interface DgramHandle {
  fd: number
  recvStart(): number
  recvStop(): number
}

function dgramHandle(socket: Socket): DgramHandle | undefined {
  const key = Object.getOwnPropertySymbols(socket).find((s) => s.description === 'state symbol')
  if (key === undefined) return undefined
  const state: unknown = (socket as unknown as Record<symbol, unknown>)[key]
  if (typeof state !== 'object' || state === null) return undefined
  const handle: unknown = (state as { handle?: unknown }).handle
  if (typeof handle !== 'object' || handle === null) return undefined
  const h = handle as { fd?: unknown; recvStart?: unknown; recvStop?: unknown }
  if (typeof h.fd !== 'number' || h.fd < 0 || typeof h.recvStart !== 'function' || typeof h.recvStop !== 'function') return undefined
  return handle as DgramHandle
}

/** Node stops (or starts again) reading `socket`; false when its handle is not what this expects. */
export function setNodeReading(socket: Socket, on: boolean): boolean {
  const h = dgramHandle(socket)
  if (h === undefined) return false
  if (on) h.recvStart()
  else h.recvStop()
  return true
}

/** What the native relay needs from its listener: the JS relay's owner, and the socket. */
export type NativeDnsOwner = Pick<DnsRelayOwner, 'config' | 'log' | 'throttle' | 'stats'>

interface Mirrored {
  index: number
  weight: number
  usable: boolean
  backup: boolean
  retiring: boolean
}

export class NativeDns {
  /** Relay threads: each reads the same socket (the kernel gives each datagram to one) with its own upstream sockets and slots. */
  private readonly engines: EngineHandle[] = []
  private readonly cells: number
  private readonly maxBackends: number
  private readonly bcells: number
  /** Counters as last applied: what takeCounters gave minus these is what is new. */
  private readonly seen: Float64Array[] = []
  /** What changed since the last sync, summed over the threads. */
  private readonly delta: Float64Array
  private readonly mirrored = new Map<Backend, Mirrored>()
  private readonly byIndex: (Backend | undefined)[] = []
  private readonly freeIndexes: number[] = []
  private nextIndex = 0
  private running = true
  private closed = false
  private stopWaiters: (() => void)[] = []
  private unwatch: (() => void) | undefined
  /** The pool changed into one this relay cannot run: the listener replaces it. */
  unfit = false
  /** Queries relayed since it started. */
  relayed = 0
  /** Queries in flight when last synced. */
  inFlight = 0
  readonly upstreamSockets: number

  constructor(
    binding: DnsBinding,
    private readonly owner: NativeDnsOwner,
    private pool: Pool,
    socket: Socket,
    /** The pool changed into one the native relay cannot run (a backend given by name, say): the listener hands over to the JS relay. */
    private readonly onUnfit: () => void,
  ) {
    const h = dgramHandle(socket)
    if (h === undefined) throw new TypeError('the listener socket has no descriptor to hand over')
    this.maxBackends = binding.maxBackends
    this.cells = binding.listenerCells
    this.bcells = binding.backendCells
    const cells = this.cells + binding.maxBackends * this.bcells
    this.delta = new Float64Array(cells)
    this.upstreamSockets = owner.config.udp.upstreamSockets
    // RELAY_THREADS threads where there are sockets for each: the upstream sockets are split between them.
    const threads = Math.min(RELAY_THREADS, this.upstreamSockets)
    try {
      for (let i = 0; i < threads; i++) {
        const sockets = Math.floor(this.upstreamSockets / threads) + (i < this.upstreamSockets % threads ? 1 : 0)
        this.engines.push(new binding.Engine(h.fd, this.onChange, sockets, owner.config.udp.queryTimeoutMs))
        this.seen.push(new Float64Array(cells))
      }
    } catch (err) {
      for (const e of this.engines) e.close()
      throw err
    }
    this.watch(pool)
    this.mirror()
  }

  private readonly onChange = (): void => {
    try {
      this.sync()
    } catch (err) {
      queueMicrotask(() => {
        throw err
      })
    }
  }

  private watch(pool: Pool): void {
    this.unwatch?.()
    this.unwatch = pool.watch(() => this.mirror())
  }

  /** New settings after a reload that kept the listener (same upstream_sockets). */
  update(pool: Pool): void {
    if (this.closed) return
    this.pool = pool
    this.watch(pool)
    for (const e of this.engines) e.setTimeout(this.owner.config.udp.queryTimeoutMs)
    this.mirror()
  }

  /** Brings the engine's backend table in step with the pool: membership, state, weights. */
  private mirror(): void {
    if (this.closed) return
    const members = this.pool.backends
    const live = new Set<Backend>(members)
    if (nativeDnsBlocker(this.owner.config, this.pool) !== undefined || !this.hasRoom(members)) {
      // Not pushed: the listener moves to the JS relay, which runs any pool, or (the table
      // full of backends still finishing) to a new native relay; outside the pool's own change.
      if (!this.unfit) queueMicrotask(this.onUnfit)
      this.unfit = true
      return
    }
    for (const b of members) {
      const usable = b.inRotation && !b.retired
      const weight = b.effectiveWeight
      let m = this.mirrored.get(b)
      if (m === undefined) {
        const index = this.freeIndexes.pop() ?? this.nextIndex++
        m = { index, weight, usable, backup: b.backup, retiring: false }
        this.mirrored.set(b, m)
        this.byIndex[index] = b
      } else if (!m.retiring && m.weight === weight && m.usable === usable && m.backup === b.backup) {
        continue
      }
      m.weight = weight
      m.usable = usable
      m.backup = b.backup
      m.retiring = false
      for (const e of this.engines) e.setBackend(m.index, b.host, b.port, weight, usable, b.backup)
    }
    for (const [b, m] of this.mirrored) {
      if (live.has(b) || m.retiring) continue
      m.retiring = true
      for (const e of this.engines) e.removeBackend(m.index)
    }
  }

  /** Whether every member can have an index in the engine's table (retiring ones hold theirs). */
  private hasRoom(members: readonly Backend[]): boolean {
    let fresh = 0
    for (const b of members) if (!this.mirrored.has(b)) fresh++
    return fresh <= this.freeIndexes.length + (this.maxBackends - this.nextIndex)
  }

  /** Applies what the threads counted since the last call. */
  sync(): void {
    if (this.closed && !this.running) return
    const n = this.nextIndex
    const cells = this.cells + n * this.bcells
    const delta = this.delta
    delta.fill(0, 0, cells)
    let inFlight = 0
    let running = false
    let freed: boolean[] | undefined
    for (let k = 0; k < this.engines.length; k++) {
      const now = this.engines[k]!.takeCounters(n)
      const seen = this.seen[k]!
      for (let i = 0; i < cells; i++) {
        delta[i]! += now[i]! - seen[i]!
        seen[i] = now[i]!
      }
      inFlight += now[L_IN_FLIGHT]!
      if (now[L_RUNNING]! !== 0) running = true
      for (let i = 0; i < n; i++) {
        const at = this.cells + i * this.bcells
        if (now[at + B_ERRNO]! !== 0) delta[at + B_ERRNO] = now[at + B_ERRNO]!
        freed ??= new Array<boolean>(n).fill(true)
        if (now[at + B_STATE]! !== STATE_FREE) freed[i] = false
      }
    }
    const d = (i: number): number => delta[i]!
    const stats = this.owner.stats
    const inDgrams = d(L_DGRAMS_IN)
    stats.datagramsIn += inDgrams
    this.relayed += inDgrams
    stats.bytesIn += d(L_BYTES_IN)
    stats.datagramsOut += d(L_DGRAMS_OUT)
    stats.bytesOut += d(L_BYTES_OUT)
    for (let k = 0; k < L_DROPS.length; k++) {
      const v = d(L_DROPS_AT + k)
      if (v > 0) stats.dnsDropped(L_DROPS[k]!, v)
    }
    const noBackend = d(L_NO_BACKEND)
    if (noBackend > 0) this.noBackend(noBackend)
    const unsent = d(L_SEND_FAILED)
    if (unsent > 0) this.unsent(unsent)
    this.inFlight = inFlight
    for (let i = 0; i < n; i++) {
      const b = this.byIndex[i]
      const at = this.cells + i * this.bcells
      const sent = d(at + B_SENT)
      const settled = d(at + B_SETTLED)
      const answered = d(at + B_ANSWERED)
      const errors = d(at + B_ERRORS)
      if (b === undefined) continue
      if (sent !== 0 || settled !== 0) {
        b.addActive(sent - settled)
        b.seenActive = b.active
        b.total += sent
      }
      if (answered > 0 && b.consecutiveFailures !== 0) b.consecutiveFailures = 0
      if (errors > 0) this.backendErrors(b, errors, delta[at + B_ERRNO]!)
      const m = this.mirrored.get(b)
      if (m !== undefined && m.retiring && freed?.[i] === true) {
        this.mirrored.delete(b)
        this.byIndex[i] = undefined
        this.freeIndexes.push(i)
      }
    }
    if (!running && this.running) {
      this.running = false
      this.closed = true
      this.unwatch?.()
      for (const e of this.engines) e.close()
      const waiters = this.stopWaiters
      this.stopWaiters = []
      for (const w of waiters) w()
    }
  }

  private noBackend(n: number): void {
    const { stats, throttle, log, config } = this.owner
    for (let i = 0; i < n; i++) stats.refuse('no_backend')
    const suppressed = throttle.take('no_backend')
    if (suppressed !== false) {
      log.warn({ code: 'SLUICE_ERR_NO_BACKEND', listener: config.name, pool: this.pool.name, queries: n, suppressed }, `query dropped: no usable backend in pool ${this.pool.name}`)
    }
  }

  /** Datagrams the kernel would not take (a full socket buffer, no descriptor for an upstream socket). */
  private unsent(n: number): void {
    const { throttle, log, config } = this.owner
    const suppressed = throttle.take('dns-send')
    if (suppressed !== false) {
      log.warn({ code: 'SLUICE_ERR_DNS_SEND', listener: config.name, datagrams: n, suppressed }, `the native DNS relay could not send ${n} datagram(s): a full socket buffer, or no descriptor for an upstream socket`)
    }
  }

  private backendErrors(b: Backend, n: number, errno: number): void {
    const code = errnoName(errno)
    const refused = code === 'ECONNREFUSED'
    for (let i = 0; i < n; i++) {
      b.failedOnce()
      this.pool.onConnectFailure?.(b, refused ? 'refused' : code)
    }
    const suppressed = this.owner.throttle.take(`dns-upstream:${b.id}`)
    if (suppressed !== false) {
      this.owner.log.warn(
        { code: refused ? 'SLUICE_ERR_UDP_UNREACHABLE' : 'SLUICE_ERR_BACKEND_SOCKET', listener: this.owner.config.name, pool: this.pool.name, backend: b.id, errno: code, suppressed },
        `dns backend ${b.id}: ${refused ? 'port unreachable' : code}`,
      )
    }
  }

  /** Takes no new queries; resolves when every query in flight is answered or timed out. */
  close(): Promise<void> {
    if (!this.running) return Promise.resolve()
    const done = new Promise<void>((resolve) => this.stopWaiters.push(resolve))
    if (!this.closed) {
      this.closed = true
      this.unwatch?.()
      for (const e of this.engines) e.stop()
    }
    return done
  }

  /** Stops now: queries in flight are forgotten (their backend slots freed). */
  destroy(): void {
    if (!this.running) return
    this.closed = true
    this.unwatch?.()
    for (const e of this.engines) e.close()
    // The threads have ended and settled what was in flight: its last counters are final.
    this.sync()
  }
}

function errnoName(errno: number): string {
  for (const [name, n] of Object.entries(osConstants.errno)) if (n === errno) return name
  return `errno ${errno}`
}
