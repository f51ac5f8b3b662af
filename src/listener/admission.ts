import type { ListenerConfig } from '../config/types.js'

/** Why a new connection is refused before it costs anything, or undefined to admit it. */
export type Refusal = 'max_connections'

/**
 * Admission control for a new client connection, decided before any backend is touched.
 * Source-based access rules and rate limits join here.
 */
export function admit(config: ListenerConfig, open: number): Refusal | undefined {
  if (open >= config.maxConnections) return 'max_connections'
  return undefined
}
