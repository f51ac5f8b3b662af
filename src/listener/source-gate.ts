import type { AccessConfig, SourceLimitsConfig } from '../config/types.js'
import { SourceTables } from '../control/source-tables.js'
import { AccessList, sourceKey } from './access-list.js'

/** Why a client was refused by its listener's `access` or `limits` (a reason of sluice_rejected_connections_total). */
export type SourceRefusal = 'access_denied' | 'source_connections' | 'source_rate'

/** What holds a per-source connection count (a TCP session, a UDP session): its key, to release it. */
export interface SourceHolder {
  sourceKey: string | undefined
}

/** A per-source table had no room for a new source: what was not counted, for metrics. */
export interface TableFull {
  connections: number
  rates: number
}

/**
 * A listener's `access` and `limits`, applied to the real client address (after the PROXY
 * header when one is read): deny wins over allow; then the open connections (UDP: live
 * sessions) per source; then the new connections per second (a refused attempt takes no
 * token). IPv6 sources are counted per /64. The counts live in the daemon's shared tables,
 * so with several workers they are for the whole daemon.
 *
 * A table that is full (no free entry near the source's hash) admits the client uncounted
 * rather than refusing it: a flood of distinct sources then costs no memory, and a new
 * client is not turned away for the flood's sake. It is counted (`full`) and logged,
 * throttled, by the listener.
 */
export class SourceGate {
  private readonly access: AccessList | undefined
  private readonly maxConnections: number
  private readonly rate: number
  private readonly burst: number
  private readonly datagrams: number
  private readonly scratch = new Uint8Array(16)
  readonly full: TableFull = { connections: 0, rates: 0 }
  /** Set by admit when the table was full: the caller logs it (throttled). */
  lastFull: 'connections' | 'rates' | undefined

  constructor(
    private readonly listener: string,
    access: AccessConfig | undefined,
    limits: SourceLimitsConfig | undefined,
    private readonly tables: SourceTables,
  ) {
    this.access = access === undefined ? undefined : new AccessList(access.allow, access.deny)
    this.maxConnections = limits?.perSourceConnections ?? 0
    this.rate = limits?.perSourceRate ?? 0
    this.burst = Math.max(1, Math.floor(this.rate))
    this.datagrams = limits?.perSourceDatagrams ?? 0
  }

  /** Whether this gate does anything (a listener without access and limits skips it). */
  static needed(access: AccessConfig | undefined, limits: SourceLimitsConfig | undefined): boolean {
    return access !== undefined || (limits !== undefined && (limits.perSourceConnections !== undefined || limits.perSourceRate !== undefined || limits.perSourceDatagrams !== undefined))
  }

  /** Whether `address` passes the access lists alone (udp.mode dns, which keeps no sessions). */
  allows(address: string): boolean {
    return this.access === undefined || this.access.allows(address)
  }

  get limitsDatagrams(): boolean {
    return this.datagrams > 0
  }

  /**
   * Admits a new connection (UDP: session) from `address`, or says why not. When it is
   * admitted and per_source_connections is set, `holder.sourceKey` is the count to release.
   */
  admit(address: string, holder: SourceHolder): SourceRefusal | undefined {
    this.lastFull = undefined
    if (this.access !== undefined && !this.access.allows(address)) return 'access_denied'
    if (this.maxConnections === 0 && this.rate === 0) return undefined
    const source = sourceKey(address, this.scratch)
    const tables = this.tables
    let key: string | undefined
    if (this.maxConnections > 0) {
      key = this.listener + '\n' + source
      const got = tables.connections.acquire(key, this.maxConnections)
      if (got === 'limit') return 'source_connections'
      if (got === 'full') {
        this.full.connections++
        this.lastFull = 'connections'
        key = undefined
      }
    }
    if (this.rate > 0) {
      tables.tick(Date.now())
      const got = tables.rates.take('r\n' + this.listener + '\n' + source, this.rate, this.burst)
      if (got === 'limit') {
        if (key !== undefined) tables.connections.release(key)
        return 'source_rate'
      }
      if (got === 'full') {
        this.full.rates++
        this.lastFull = 'rates'
      }
    }
    holder.sourceKey = key
    return undefined
  }

  /** Whether a datagram from `address` is within per_source_datagrams (true when no such limit). */
  datagram(address: string): boolean {
    if (this.datagrams === 0) return true
    this.tables.tick(Date.now())
    const got = this.tables.rates.take('d\n' + this.listener + '\n' + sourceKey(address, this.scratch), this.datagrams, Math.max(1, Math.floor(this.datagrams)))
    if (got === 'full') {
      this.full.rates++
      this.lastFull = 'rates'
    }
    return got !== 'limit'
  }

  /** The connection (session) that admit counted has ended. */
  release(holder: SourceHolder): void {
    const key = holder.sourceKey
    if (key === undefined) return
    holder.sourceKey = undefined
    this.tables.connections.release(key)
  }
}
