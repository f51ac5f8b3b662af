import type { Config } from '../config/types.js'
import { SluiceError } from '../errors.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics/metrics.js'
import type { Pool } from '../upstream/pool.js'

/**
 * What the admin API, the reload path and the status page need from the running daemon: the
 * control plane's narrow face. admin/ and reload.ts depend on these interfaces only, never on
 * the composition (daemon.ts), so the daemon imports them and not the other way round.
 */

/** One listener as the status page shows it. */
export interface ListenerView {
  readonly name: string
  readonly protocol: 'tcp' | 'udp'
  /** The bound address. */
  readonly listen: string
  readonly pool: string
  readonly listening: boolean
  /** Open client connections (TCP) or sessions (UDP), over every worker. */
  readonly activeConnections: number
  /** udp.mode dns: `native` when the native DNS relay runs it in every worker, else `js`. */
  readonly dnsRelay?: 'native' | 'js'
}

/** One data-plane worker as the status page shows it. */
export interface WorkerView {
  readonly id: number
  /** What carries its established plain TCP connections. */
  readonly relay: 'native' | 'js'
  readonly activeConnections: number
  readonly connectionsTotal: number
}

/** The state that the control plane decides and the data plane obeys: pools with their backends. */
export interface PoolSource {
  readonly pools: ReadonlyMap<string, Pool>
}

/** What reload.ts needs: apply a validated configuration, count it, know when to refuse. */
export interface Reloadable {
  readonly log: Logger
  readonly metrics: Pick<Metrics, 'configReloadsTotal'>
  readonly stopping: boolean
  reload(next: Config): Promise<void>
}

/** Run-time membership changes (PUT/DELETE /api/pools/{pool}/backends/{address}). */
export interface MemberControl {
  putBackend(pool: string, address: string, host: string, port: number, settings: { weight?: number; backup?: boolean; maxConnections?: number }): void
  deleteBackend(pool: string, address: string): void
}

/** What the admin API needs. */
export interface ControlApi extends Reloadable, PoolSource, MemberControl {
  readonly config: Config
  readonly startedAt: number
  readonly ready: boolean
  /** Listeners, summed over the workers. */
  listenerViews(): Promise<ListenerView[]>
  /** Each worker's share; one entry when the data plane runs in-process. */
  workerViews(): Promise<WorkerView[]>
  /** Connections handed to each backend since start, over every worker (`pool\nbackend` → n). */
  backendTotals(): Promise<Map<string, number>>
  /** Connections waiting in each pool's queue, summed over the workers (pool → n; absent = 0). */
  queueLengths?(): Promise<Map<string, number>>
  /** The Prometheus exposition of every metric, summed over the workers. */
  metricsText(): Promise<string>
  readonly metricsContentType: string
}

/** A reload asked of a daemon that is stopping: it is refused, nothing changes. */
export class ReloadWhileStopping extends SluiceError {
  constructor() {
    super('SLUICE_ERR_RELOAD', 'reload refused: sluice is stopping (open connections are draining); nothing was changed')
    this.name = 'ReloadWhileStopping'
  }
}
