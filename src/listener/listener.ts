import type { AnyListenerConfig } from '../config/types.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics/metrics.js'
import type { Pool } from '../upstream/pool.js'
import { TcpListener } from './tcp-listener.js'
import { UdpListener } from './udp-listener.js'
import type { SourceTables } from '../control/source-tables.js'
import type { TimerWheel } from '../proxy/timer-wheel.js'

/** A bound listen address: the real port when the configuration said port 0. */
export interface ListenerAddress {
  host: string
  port: number
  /** `host:port`, `[v6]:port`: for logs and the admin API. */
  text: string
}

/**
 * What the daemon holds of every listener, TCP or UDP. It starts them, applies reloads to
 * them and stops them only through this.
 */
export interface Listener {
  readonly name: string
  readonly protocol: 'tcp' | 'udp'
  readonly config: AnyListenerConfig
  readonly pool: Pool
  /** Open connections (TCP) or sessions (UDP). */
  readonly sessions: { readonly size: number }
  /** Connections (TCP) or sessions (UDP) taken since this listener started. */
  readonly accepted: number
  readonly listening: boolean
  /**
   * Binds the listen address; rejects with SLUICE_ERR_LISTEN and a reason an operator can act
   * on. `shared`: several workers bind the same address (SO_REUSEPORT; the kernel spreads new
   * connections, and keeps a UDP client's address:port on one of them).
   */
  listen(shared?: boolean): Promise<void>
  address(): ListenerAddress
  /**
   * Takes new settings after a reload that kept this listener's address and protocol (its
   * name may have changed: the socket goes with the address). Open connections/sessions keep
   * their backend; new ones use the new pool and settings; all count under the new name.
   */
  update(config: AnyListenerConfig, pool: Pool, accessLog: boolean): void
  /** Adds the counts of open connections/sessions to the metrics, so /metrics is live. */
  flushCounters(): void
  /** Stops taking new clients; resolves when every open connection/session has ended. */
  close(): Promise<void>
  /** Ends everything now. */
  destroy(): void
}

/** Where a TCP listener counts its open connections for the whole daemon (max_connections). */
export interface AdmissionCounter {
  tryAcquire(max: number): boolean
  release(): void
}

/** The listener for `config.protocol`. */
export function createListener(config: AnyListenerConfig, pool: Pool, log: Logger, metrics: Metrics, accessLog: boolean, sources?: SourceTables, wheel?: TimerWheel): Listener {
  return config.protocol === 'udp'
    ? new UdpListener(config, pool, log, metrics, accessLog, sources)
    : new TcpListener(config, pool, log, metrics, accessLog, sources, wheel)
}
