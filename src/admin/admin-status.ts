import type { ControlApi } from '../control/control-api.js'
import type { BackendState } from '../upstream/backend.js'
import type { Backend } from '../upstream/backend.js'
import type { Pool } from '../upstream/pool.js'

/** The JSON of GET /api/status (documented in docs/operations.md). */
export interface StatusDocument {
  version: string
  pid: number
  config_file: string
  started_at: string
  uptime_seconds: number
  ready: boolean
  admin: { listen: string; token_required: boolean }
  listeners: ListenerStatus[]
  pools: PoolStatus[]
  totals: { listeners: number; pools: number; backends: number; backends_up: number; active_connections: number }
  /** What carries established plain TCP connections: `native` (the native relay) or `js` (the JS relay, proxy/splice.ts). */
  relay: 'native' | 'js'
  /** The data-plane workers (one when the data plane runs in the main thread). */
  workers: { id: number; relay: 'native' | 'js'; active_connections: number; connections_total: number }[]
}

export interface ListenerStatus {
  name: string
  protocol: 'tcp' | 'udp'
  listen: string
  pool: string
  listening: boolean
  /** Open client connections (TCP) or sessions (UDP). */
  active_connections: number
  /** udp.mode dns only: which relay runs it (`native` in every worker, else `js`). */
  dns_relay?: 'native' | 'js'
}

export interface PoolStatus {
  name: string
  algorithm: string
  listeners: string[]
  backends: BackendStatus[]
  totals: { backends: number; up: number; active_connections: number; total_connections: number }
  /** Connections waiting for a backend slot (every usable backend at max_connections), over every worker. */
  queue_length: number
  /** The pool's max_queue (0: no queue). */
  max_queue: number
}

export interface BackendStatus {
  address: string
  state: BackendState
  weight: number
  backup: boolean
  max_connections: number
  active_connections: number
  total_connections: number
  consecutive_failures: number
}

/** `total`: connections handed to it over every worker (the decided pools count none themselves). */
export function backendStatus(b: Backend, total = b.total): BackendStatus {
  return {
    address: b.id,
    state: b.state,
    weight: b.weight,
    backup: b.backup,
    max_connections: b.maxConnections,
    active_connections: b.active,
    total_connections: total,
    consecutive_failures: b.consecutiveFailures,
  }
}

/**
 * A snapshot of the daemon for the admin API: states from their one owner (the control
 * plane's pools), active connections from the shared counters, and the per-worker counters
 * (listener sessions, connections per backend) summed over the workers.
 */
export async function buildStatus(daemon: ControlApi, version: string, admin: StatusDocument['admin']): Promise<StatusDocument> {
  const [views, totals, workers, queues] = await Promise.all([daemon.listenerViews(), daemon.backendTotals(), daemon.workerViews(), daemon.queueLengths?.() ?? new Map<string, number>()])
  const listeners: ListenerStatus[] = views.map((l) => ({
    name: l.name,
    protocol: l.protocol,
    listen: l.listen,
    pool: l.pool,
    listening: l.listening,
    active_connections: l.activeConnections,
    ...(l.dnsRelay !== undefined ? { dns_relay: l.dnsRelay } : {}),
  }))
  const pools = [...daemon.pools.values()].map((p) => poolStatus(p, listeners, totals, queues.get(p.name) ?? 0))
  const backends = pools.flatMap((p) => p.backends)
  return {
    version,
    pid: process.pid,
    config_file: daemon.config.file,
    started_at: new Date(daemon.startedAt).toISOString(),
    uptime_seconds: Math.round((Date.now() - daemon.startedAt) / 1000),
    ready: daemon.ready,
    admin,
    listeners,
    pools,
    totals: {
      listeners: listeners.length,
      pools: pools.length,
      backends: backends.length,
      backends_up: backends.filter((b) => b.state === 'up').length,
      active_connections: listeners.reduce((n, l) => n + l.active_connections, 0),
    },
    relay: workers.every((w) => w.relay === 'native') && workers.length > 0 ? 'native' : 'js',
    workers: workers.map((w) => ({ id: w.id, relay: w.relay, active_connections: w.activeConnections, connections_total: w.connectionsTotal })),
  }
}

function poolStatus(p: Pool, listeners: readonly ListenerStatus[], totals: ReadonlyMap<string, number>, queueLength: number): PoolStatus {
  const backends = p.backends.map((b) => backendStatus(b, totals.get(`${p.name}\n${b.id}`) ?? 0))
  // Removed (reload, discovery, DELETE) but still finishing connections: draining until the last ends.
  for (const b of p.leaving) backends.push(backendStatus(b, totals.get(`${p.name}\n${b.id}`) ?? 0))
  return {
    name: p.name,
    algorithm: p.config.algorithm,
    listeners: listeners.filter((l) => l.pool === p.name).map((l) => l.name),
    backends,
    totals: {
      backends: backends.length,
      up: backends.filter((b) => b.state === 'up').length,
      active_connections: backends.reduce((n, b) => n + b.active_connections, 0),
      total_connections: backends.reduce((n, b) => n + b.total_connections, 0),
    },
    queue_length: queueLength,
    max_queue: p.maxQueue,
  }
}
