import { createSocket, type Socket } from 'node:dgram'
import { lookup, type LookupOneOptions } from 'node:dns'
import { isIP } from 'node:net'
import type { UdpStats } from './udp-stats.js'

/** What a connected upstream socket reports to the session using it. */
export interface UpstreamUser {
  onUpstreamReply(msg: Buffer): void
  /** The connect finished (`err` undefined) or failed. */
  onUpstreamConnect(err: Error | undefined): void
  onUpstreamError(err: Error): void
}

/** What the idle set reports to its listener: a late reply, counted and logged there. */
export interface UpstreamsOwner {
  lateReply(backend: string, bytes: number): void
}

/** A socket left idle longer than this is closed: it holds a descriptor and is not needed. */
export const IDLE_UPSTREAM_MS = 10_000
/**
 * A socket is handed on only while younger than this. A backend named by a host name was
 * looked up when its socket connected: a session per connect followed a change of address at
 * once, so reused sockets to a name must not outlive one for long. Sockets to an IP address
 * are renewed now and then all the same.
 */
export const MAX_AGE_NAMED_MS = 5_000
export const MAX_AGE_MS = 60_000
const SWEEP_MS = 1_000

/**
 * One UDP socket connected to one backend address. Its event handlers are made once, at
 * creation, and pass each event to the session using it now; while it is idle there is
 * none, and a datagram that arrives then is a late reply.
 */
export class UdpUpstream {
  user: UpstreamUser | undefined
  connected = false
  closed = false
  /** When it was left idle; its place in the idle stack. */
  idleSince = 0
  /** Past this (Date.now() time) it is closed rather than handed on. */
  readonly retireAt: number
  readonly family: 4 | 6
  readonly socket: Socket

  constructor(
    set: UdpUpstreams,
    /** The backend's address as configured (Backend.id): the idle stack it returns to. */
    readonly key: string,
    host: string,
    port: number,
    user: UpstreamUser,
  ) {
    this.user = user
    const ip = isIP(host)
    this.family = ip === 6 ? 6 : 4
    this.retireAt = Date.now() + (ip === 0 ? MAX_AGE_NAMED_MS : MAX_AGE_MS)
    const s = createSocket({ type: this.family === 6 ? 'udp6' : 'udp4', lookup: literalLookup })
    this.socket = s
    s.on('message', (msg: Buffer) => {
      const u = this.user
      if (u !== undefined) u.onUpstreamReply(msg)
      else set.late(this, msg.length)
    })
    s.on('error', (err: Error) => {
      const u = this.user
      if (u !== undefined) u.onUpstreamError(err)
      else set.discard(this)
    })
    s.connect(port, host, (err?: Error) => {
      if (this.closed) return
      if (err === undefined) this.connected = true
      // Never idle here: a socket given back before its connect finished was closed.
      this.user?.onUpstreamConnect(err)
    })
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    this.user = undefined
    this.connected = false
    try {
      this.socket.close()
    } catch {
      // Already closed by a failed bind: nothing is left to release.
    }
  }
}

/**
 * A UDP listener's upstream sockets: new ones for sessions, and per backend a bounded stack
 * of idle connected ones that sessions whose replies were all in (udp.responses) left behind.
 * The next session to that backend takes the most recently idled one, so a query costs no
 * socket, connect or close system call. A datagram reaching an idle socket is a reply the
 * backend sent beyond udp.responses: it is dropped and counted, and that socket is closed
 * rather than handed to another client. Idle sockets close after IDLE_UPSTREAM_MS, and none
 * is handed on past its age limit (MAX_AGE_MS; MAX_AGE_NAMED_MS to a host name).
 */
export class UdpUpstreams {
  private readonly idle = new Map<string, UdpUpstream[]>()
  private sweeper: NodeJS.Timeout | undefined

  constructor(
    private readonly owner: UpstreamsOwner,
    /** Where sockets created, reused, idle and late replies are counted. */
    private readonly stats: UdpStats,
    /** udp.reuse_sockets: idle sockets kept per backend; 0 = none. */
    public max: number,
  ) {}

  /**
   * A socket connected (or connecting) to `host`:`port` for `user`: an idle one if there is
   * one. `key` names that address (the backend's configured address).
   */
  take(key: string, host: string, port: number, user: UpstreamUser): UdpUpstream {
    const stack = this.idle.get(key)
    if (stack !== undefined && stack.length > 0) {
      const up = stack.pop()!
      this.stats.upstreamIdle--
      up.user = user
      this.stats.upstreamReused++
      return up
    }
    this.stats.upstreamCreated++
    return new UdpUpstream(this, key, host, port, user)
  }

  /** A session is done with `up` and every reply it expected came: keep it for the next one. */
  give(up: UdpUpstream, now: number): void {
    if (up.closed) return
    up.user = undefined
    let stack = this.idle.get(up.key)
    if (!up.connected || this.max === 0 || now >= up.retireAt || (stack !== undefined && stack.length >= this.max)) {
      up.close()
      return
    }
    if (stack === undefined) this.idle.set(up.key, (stack = []))
    up.idleSince = now
    stack.push(up)
    this.stats.upstreamIdle++
    if (this.sweeper === undefined) {
      this.sweeper = setInterval(() => this.sweep(Date.now()), SWEEP_MS)
      this.sweeper.unref()
    }
  }

  /** An idle socket received a datagram: the backend answered more than udp.responses. */
  late(up: UdpUpstream, bytes: number): void {
    this.stats.lateReplies++
    this.owner.lateReply(up.key, bytes)
    this.discard(up)
  }

  /** Closes an idle socket that failed or turned out unfit for reuse. */
  discard(up: UdpUpstream): void {
    const stack = this.idle.get(up.key)
    const at = stack === undefined ? -1 : stack.indexOf(up)
    if (at !== -1) {
      stack!.splice(at, 1)
      this.stats.upstreamIdle--
    }
    up.close()
  }

  /** Closes idle sockets unused since `now - IDLE_UPSTREAM_MS` (the oldest are at the bottom). */
  sweep(now: number): void {
    const cutoff = now - IDLE_UPSTREAM_MS
    for (const [key, stack] of this.idle) {
      let n = 0
      while (n < stack.length && stack[n]!.idleSince <= cutoff) stack[n++]!.close()
      if (n > 0) {
        stack.splice(0, n)
        this.stats.upstreamIdle -= n
      }
      if (stack.length === 0) this.idle.delete(key)
    }
    if (this.idle.size === 0) this.stopSweeper()
  }

  /** The listener stops: nothing is kept from now on, and what is idle closes. */
  retire(): void {
    this.max = 0
    this.closeIdle()
  }

  /** Closes every idle socket (shutdown, or descriptors ran out and these can be given back). */
  closeIdle(): void {
    for (const stack of this.idle.values()) {
      for (const up of stack) up.close()
      this.stats.upstreamIdle -= stack.length
    }
    this.idle.clear()
    this.stopSweeper()
  }

  private stopSweeper(): void {
    if (this.sweeper !== undefined) clearInterval(this.sweeper)
    this.sweeper = undefined
  }
}

/**
 * dgram's lookup, answering at once for IP literals: a send to (or connect to) an address
 * costs no DNS round and no extra tick. Host names still go through dns.lookup.
 */
export function literalLookup(hostname: string, options: LookupOneOptions, cb: (err: NodeJS.ErrnoException | null, address: string, family: number) => void): void {
  const family = isIP(hostname)
  if (family !== 0) cb(null, hostname, family)
  else lookup(hostname, options, cb)
}
