import type { Daemon } from '../daemon.js'
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
}

export interface ListenerStatus {
  name: string
  protocol: 'tcp' | 'udp'
  listen: string
  pool: string
  listening: boolean
  /** Open client connections (TCP) or sessions (UDP). */
  active_connections: number
}

export interface PoolStatus {
  name: string
  algorithm: string
  listeners: string[]
  backends: BackendStatus[]
  totals: { backends: number; up: number; active_connections: number; total_connections: number }
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

export function backendStatus(b: Backend): BackendStatus {
  return {
    address: b.id,
    state: b.state,
    weight: b.weight,
    backup: b.backup,
    max_connections: b.maxConnections,
    active_connections: b.active,
    total_connections: b.total,
    consecutive_failures: b.consecutiveFailures,
  }
}

/**
 * A snapshot of the daemon for the admin API. With several workers the per-worker counters
 * (active, total) are what gets summed; states come from their one owner, the pool.
 */
export function buildStatus(daemon: Daemon, version: string, admin: StatusDocument['admin']): StatusDocument {
  const listeners: ListenerStatus[] = [...daemon.listeners.values()].map((l) => ({
    name: l.name,
    protocol: l.protocol,
    listen: l.address().text,
    pool: l.config.pool,
    listening: l.listening,
    active_connections: l.sessions.size,
  }))
  const pools = [...daemon.pools.values()].map((p) => poolStatus(p, listeners))
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
  }
}

function poolStatus(p: Pool, listeners: readonly ListenerStatus[]): PoolStatus {
  const backends = p.backends.map(backendStatus)
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
  }
}
