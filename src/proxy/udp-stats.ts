import type { Metrics } from '../metrics/metrics.js'
import type { DnsDrop } from './dns-relay.js'

/** Why a datagram from a client without a session was dropped instead of starting one. */
export type UdpRefusal = 'max_sessions' | 'no_backend' | 'shutdown' | 'fd_exhausted'

/** Why a client's datagram was dropped by access or limits (sluice_udp_dropped_datagrams_total). */
export type UdpSourceDrop = 'access_denied' | 'source_connections' | 'source_rate' | 'source_datagrams'

/** Why a datagram of an existing session was dropped. */
export type UdpDrop = 'backend_not_ready' | 'datagram_too_large'

/**
 * A UDP listener's counters as plain numbers: the data path adds to fields (no label lookup,
 * no allocation per datagram) and `flush` moves what changed into the prom-client metrics
 * when they are scraped. Deltas, not absolute values, so a listener being retired by a
 * reload and its replacement (same name) add up instead of overwriting each other.
 */
export class UdpStats {
  datagramsIn = 0
  datagramsOut = 0
  bytesIn = 0
  bytesOut = 0
  sessions = 0
  refusedMaxSessions = 0
  refusedNoBackend = 0
  refusedShutdown = 0
  /** Datagrams of new clients dropped because sluice was out of descriptors for their session's socket. */
  refusedFdExhausted = 0
  droppedNotReady = 0
  /** Datagrams that a PROXY v2 header would push past the UDP payload limit. */
  droppedTooLarge = 0
  /** Upstream sockets sessions started on: new ones, and idle ones reused (udp.reuse_sockets). */
  upstreamCreated = 0
  upstreamReused = 0
  /** Idle connected upstream sockets held for reuse now. */
  upstreamIdle = 0
  /** Replies that reached an idle upstream socket: dropped. */
  lateReplies = 0
  /** Datagrams dropped by access or limits, by reason; and sources admitted uncounted (table full). */
  readonly sourceDrops: Record<UdpSourceDrop, number> = { access_denied: 0, source_connections: 0, source_rate: 0, source_datagrams: 0 }
  private readonly sourceDropsFlushed: Record<UdpSourceDrop, number> = { access_denied: 0, source_connections: 0, source_rate: 0, source_datagrams: 0 }
  readonly tableFull = { connections: 0, rates: 0 }
  private readonly tableFullFlushed = { connections: 0, rates: 0 }
  private flushed = { datagramsIn: 0, datagramsOut: 0, bytesIn: 0, bytesOut: 0, sessions: 0, maxSessions: 0, noBackend: 0, shutdown: 0, fdExhausted: 0, notReady: 0, tooLarge: 0, created: 0, reused: 0, idle: 0, late: 0 }

  /** dns mode: messages dropped, by reason (sluice_dns_dropped_total). */
  private readonly dns = new Map<DnsDrop, { n: number; flushed: number }>()

  dnsDropped(reason: DnsDrop, n = 1): void {
    const c = this.dns.get(reason)
    if (c === undefined) this.dns.set(reason, { n, flushed: 0 })
    else c.n += n
  }

  refuse(reason: UdpRefusal): void {
    if (reason === 'max_sessions') this.refusedMaxSessions++
    else if (reason === 'no_backend') this.refusedNoBackend++
    else if (reason === 'fd_exhausted') this.refusedFdExhausted++
    else this.refusedShutdown++
  }

  flush(metrics: Metrics, listener: string): void {
    const f = this.flushed
    const inc = (n: number, was: number, add: (d: number) => void): number => {
      if (n !== was) add(n - was)
      return n
    }
    f.datagramsIn = inc(this.datagramsIn, f.datagramsIn, (d) => metrics.udpDatagramsTotal.inc({ listener, direction: 'in' }, d))
    f.datagramsOut = inc(this.datagramsOut, f.datagramsOut, (d) => metrics.udpDatagramsTotal.inc({ listener, direction: 'out' }, d))
    f.bytesIn = inc(this.bytesIn, f.bytesIn, (d) => metrics.bytesTotal.inc({ listener, direction: 'in' }, d))
    f.bytesOut = inc(this.bytesOut, f.bytesOut, (d) => metrics.bytesTotal.inc({ listener, direction: 'out' }, d))
    f.sessions = inc(this.sessions, f.sessions, (d) => metrics.udpSessionsActive.inc({ listener }, d))
    const rejected = (reason: string) => (d: number): void => metrics.rejectedConnectionsTotal.inc({ listener, reason }, d)
    f.maxSessions = inc(this.refusedMaxSessions, f.maxSessions, rejected('max_sessions'))
    f.noBackend = inc(this.refusedNoBackend, f.noBackend, rejected('no_backend'))
    f.shutdown = inc(this.refusedShutdown, f.shutdown, rejected('shutdown'))
    f.fdExhausted = inc(this.refusedFdExhausted, f.fdExhausted, rejected('fd_exhausted'))
    f.notReady = inc(this.droppedNotReady, f.notReady, rejected('backend_not_ready'))
    f.tooLarge = inc(this.droppedTooLarge, f.tooLarge, rejected('datagram_too_large'))
    f.created = inc(this.upstreamCreated, f.created, (d) => metrics.udpUpstreamSocketsTotal.inc({ listener, outcome: 'created' }, d))
    f.reused = inc(this.upstreamReused, f.reused, (d) => metrics.udpUpstreamSocketsTotal.inc({ listener, outcome: 'reused' }, d))
    f.idle = inc(this.upstreamIdle, f.idle, (d) => metrics.udpUpstreamSocketsIdle.inc({ listener }, d))
    f.late = inc(this.lateReplies, f.late, (d) => metrics.udpLateRepliesTotal.inc({ listener }, d))
    for (const reason of Object.keys(this.sourceDrops) as UdpSourceDrop[]) {
      const n = this.sourceDrops[reason]
      const was = this.sourceDropsFlushed[reason]
      if (n === was) continue
      this.sourceDropsFlushed[reason] = n
      metrics.udpDroppedDatagramsTotal.inc({ listener, reason }, n - was)
      // A new session refused is a refused "connection" too, as max_sessions is.
      if (reason !== 'source_datagrams') metrics.rejectedConnectionsTotal.inc({ listener, reason }, n - was)
    }
    for (const table of ['connections', 'rates'] as const) {
      const n = this.tableFull[table]
      if (n !== this.tableFullFlushed[table]) metrics.sourceTableFullTotal.inc({ listener, table }, n - this.tableFullFlushed[table])
      this.tableFullFlushed[table] = n
    }
    for (const [reason, c] of this.dns) {
      if (c.n !== c.flushed) metrics.dnsDroppedTotal.inc({ listener, reason }, c.n - c.flushed)
      c.flushed = c.n
    }
  }
}
