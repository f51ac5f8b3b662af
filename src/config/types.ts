/**
 * The normalized configuration: every default filled in, every duration in milliseconds,
 * every address split into host and port. Produced only by `validate`, so code that holds a
 * `Config` can trust every field.
 */
export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal'

export interface Config {
  /** The file this configuration came from, for messages. */
  file: string
  workers: number
  shutdownTimeoutMs: number
  log: LogConfig
  listeners: ListenerConfig[]
  pools: Map<string, PoolConfig>
  demoBackends: DemoBackendConfig[]
}

export interface LogConfig {
  level: LogLevel
  accessLog: boolean
}

export interface ListenerConfig {
  name: string
  protocol: 'tcp'
  host: string
  port: number
  /** The listen address as written, for messages. */
  listen: string
  pool: string
  maxConnections: number
  timeouts: {
    /** 0 = no idle timeout (TCP keep-alive still finds dead peers). */
    idleMs: number
    handshakeMs: number
  }
}

export interface PoolConfig {
  name: string
  algorithm: string
  /** Options parsed by the algorithm's factory; opaque to everything else. */
  algorithmOptions: unknown
  backends: BackendConfig[]
  connectTimeoutMs: number
  retries: number
  /** Slow start: a backend joining the rotation ramps to its full weight over this long. 0 = off. */
  slowStartMs: number
}

export interface BackendConfig {
  /** Stable id, `host:port` (`[v6]:port`): what hashes, logs and the admin API use. */
  address: string
  host: string
  port: number
  weight: number
  backup: boolean
  /** 0 = unlimited. */
  maxConnections: number
}

/** A tiny built-in TCP server for trying sluice out (`npm start`); not for production. */
export interface DemoBackendConfig {
  name: string
  host: string
  port: number
  listen: string
}

export const DEFAULTS = {
  workers: 1,
  shutdownTimeoutMs: 30_000,
  logLevel: 'info' as LogLevel,
  accessLog: true,
  maxConnections: 10_000,
  idleMs: 0,
  handshakeMs: 10_000,
  algorithm: 'round-robin',
  connectTimeoutMs: 3_000,
  retries: 2,
  weight: 1,
  maxWeight: 1000,
} as const
