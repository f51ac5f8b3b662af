import type { MetricObjectWithValues, MetricValue } from 'prom-client'
import type { BackendState } from '../upstream/backend.js'
import type { BackendConfig } from '../config/types.js'

/**
 * The one language between the control plane and the data-plane workers. The same messages
 * go over a MessagePort to a worker thread, or in-process to the data plane of a one-worker
 * daemon: one code path either way.
 */

/** Where a data plane finds the configuration: the text to parse (a thread) or the parsed object (in-process). */
export interface ConfigSource {
  text: string
  file: string
  env: Record<string, string>
}

/**
 * Slots of the shared counters: `pool\nbackend` for a backend (active connections, and
 * consecutive failures in the next slot) and `\nlistener\nNAME` for a listener's open
 * connections. Handed out by the control plane; workers only count in them.
 */
export type SlotTable = Record<string, number>

export function backendSlotKey(pool: string, backend: string): string {
  return `${pool}\n${backend}`
}

export function listenerSlotKey(name: string): string {
  return `\nlistener\n${name}`
}

export interface BackendStateEntry {
  pool: string
  backend: string
  state: BackendState
}

/** Control plane to a worker. */
export type ToWorker =
  /** Phase one of a start or reload: build what is new, bind what must be bound; change nothing else. */
  | { type: 'prepare'; seq: number; source: ConfigSource; slots: SlotTable; ports: Record<string, number>; members?: Record<string, BackendConfig[]> }
  /** Phase two: every worker prepared; switch over, then take the decided state of every backend. */
  | { type: 'commit'; seq: number; states: BackendStateEntry[] }
  /** Some worker could not prepare: close what this one bound for it. */
  | { type: 'abort'; seq: number }
  /** Decided state of one backend (health, ejection, drain/enable/disable), to obey; `at`: when (epoch ms), for slow start. */
  | { type: 'backend-state'; pool: string; backend: string; state: BackendState; firstCheck: boolean; at: number }
  | { type: 'stats'; seq: number }
  /**
   * A pool's whole new membership (discovery, an admin PUT/DELETE), applied as one diff:
   * backends that stay keep their state and counters, removed ones drain; then the decided
   * state of every member.
   */
  | { type: 'membership'; pool: string; backends: BackendConfig[]; slots: SlotTable; states: BackendStateEntry[] }
  /** Stop accepting; let open connections finish for up to `timeoutMs`; then close them. */
  | { type: 'stop'; seq: number; timeoutMs: number }
  /** Fault injection: the worker thread exits with `code` at once, as a crash would (tests). */
  | { type: 'exit'; code: number }

/** One listener's share in one worker. */
export interface ListenerShare {
  name: string
  protocol: 'tcp' | 'udp'
  listen: string
  pool: string
  listening: boolean
  active: number
  /** udp.mode dns: which relay runs it in this worker. */
  dnsRelay?: 'native' | 'js'
}

/**
 * One pool's per-worker backend counters: connections handed to `backends[i]` since start
 * (`totals[i]`), and established to it (`established[i]`: its sluice_backend_connections_total,
 * which the control plane exposes from these). Only backends with connections are listed
 * (absent: 0), in flat arrays, so a pool of thousands of backends costs the worker's event
 * loop little to build and clone: no per-backend metric series lives in a worker's registry.
 */
export interface BackendShares {
  pool: string
  backends: string[]
  totals: number[]
  established: number[]
}

export interface WorkerSnapshot {
  /** What carries this worker's established plain TCP connections. */
  relay: 'native' | 'js'
  listeners: ListenerShare[]
  backends: BackendShares[]
  activeConnections: number
  connectionsTotal: number
  /** Connections waiting in each pool's queue in this worker (pool name → length). */
  queues?: Record<string, number>
}

/** A worker to the control plane. */
export type FromWorker =
  | { type: 'prepared'; seq: number; ok: true; ports: Record<string, number> }
  | { type: 'prepared'; seq: number; ok: false; code: string; message: string }
  | { type: 'committed'; seq: number }
  | { type: 'stats'; seq: number; snapshot: WorkerSnapshot; metrics: MetricObjectWithValues<MetricValue<string>>[] }
  | { type: 'stopped'; seq: number }
  /** A connect to a backend failed (passive health counts them across workers). */
  | { type: 'connect-failed'; pool: string; backend: string; reason: string }
  /** A log line written in the worker (JSON), for the control plane's log destination. */
  | { type: 'log'; line: string }
  /** The worker failed to start or hit an error it cannot recover from. */
  | { type: 'fatal'; message: string }
