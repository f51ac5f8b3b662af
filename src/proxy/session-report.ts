import type { Backend } from '../upstream/backend.js'
import type { Pool } from '../upstream/pool.js'
import type { SessionOwner } from './tcp-session.js'
import { SluiceError, errnoCode } from '../errors.js'

/**
 * Counts and logs a connection refused before it was proxied (no backend, every attempt
 * failed, a bad opening), throttled per listener and reason.
 */
export function reportRefusal(owner: SessionOwner, reason: string, code: string, message: string, fields: Record<string, unknown>): void {
  const { metrics, log, config, throttle } = owner
  metrics.rejectedConnectionsTotal.inc({ listener: config.name, reason })
  const suppressed = throttle.take(`refuse:${config.name}:${reason}`)
  if (suppressed !== false) log.warn({ code, listener: config.name, ...fields, suppressed }, message)
}

/** Why a connection was refused once it had a pool: every one ends with a reset. */
export type PoolRefusal = 'no_backend' | 'connect_failed' | 'queue_full' | 'queue_timeout' | 'fd_exhausted'

/** Counts and logs a pool refusal with its code and the reason in words (both session kinds). */
export function reportPoolRefusal(owner: SessionOwner, reason: PoolRefusal, pool: Pool, attempts: number, client: string): void {
  const why =
    reason === 'no_backend'
      ? `no usable backend in pool ${pool.name}`
      : reason === 'connect_failed'
        ? `all ${attempts} connect attempts in pool ${pool.name} failed`
        : reason === 'fd_exhausted'
          ? `sluice is out of file descriptors (for ${pool.connectTimeoutMs}ms, the pool's connect_timeout)`
          : reason === 'queue_full'
            ? `every usable backend of pool ${pool.name} is at max_connections and its queue holds max_queue (${pool.maxQueue})`
            : `no backend slot of pool ${pool.name} freed within queue_timeout (${pool.queueTimeoutMs}ms)`
  reportRefusal(owner, reason, POOL_REFUSAL_CODES[reason], `connection refused: ${why}`, { pool: pool.name, client })
}

const POOL_REFUSAL_CODES: Readonly<Record<PoolRefusal, string>> = {
  no_backend: 'SLUICE_ERR_NO_BACKEND',
  connect_failed: 'SLUICE_ERR_CONNECT',
  fd_exhausted: 'SLUICE_ERR_RESOURCE_EXHAUSTED',
  queue_full: 'SLUICE_ERR_QUEUE_FULL',
  queue_timeout: 'SLUICE_ERR_QUEUE_TIMEOUT',
}

/**
 * Counts and logs one failed connect to a backend: sluice_connect_errors_total by reason,
 * and a warning with the error's code, throttled per backend so a dead backend under load
 * writes one line a second with the number held back.
 */
export function reportConnectFailure(owner: SessionOwner, pool: string, b: Backend, err: Error, attempt: number): void {
  const timeout = err instanceof SluiceError && err.code === 'SLUICE_ERR_CONNECT_TIMEOUT'
  const errno = errnoCode(err)
  const { metrics, log, config, throttle } = owner
  metrics.connectErrorsTotal.inc({ pool, backend: b.id, reason: connectReason(timeout, errno) })
  const suppressed = throttle.take(`connect:${pool}:${b.id}`)
  if (suppressed === false) return
  log.warn(
    {
      code: err instanceof SluiceError ? err.code : 'SLUICE_ERR_CONNECT',
      listener: config.name,
      pool,
      backend: b.id,
      errno,
      attempt,
      suppressed,
    },
    `connect to backend ${b.id} failed: ${err.message}`,
  )
}

/** The `reason` label of sluice_connect_errors_total. */
export function connectReason(timeout: boolean, errno: string | undefined): string {
  if (timeout) return 'timeout'
  if (errno === 'SLUICE_ERR_BACKEND_TLS') return 'tls'
  if (errno === 'ECONNREFUSED') return 'refused'
  if (errno === 'EHOSTUNREACH' || errno === 'ENETUNREACH') return 'unreachable'
  if (errno === 'ENOTFOUND' || errno === 'EAI_AGAIN') return 'dns'
  return 'other'
}

/** The access-log fields of one finished TCP connection (CONTRACT.md), besides `listener`. */
export interface AccessFields {
  /** The client: from the PROXY header when one was read; `unknown` when not known. */
  client: string
  /** Where the TCP connection came from: the PROXY peer, or the client itself without a header. */
  peer: string
  pool: string
  backend: string | null
  bytes_in: number
  bytes_out: number
  duration_ms: number
  connect_ms: number | null
  attempts: number
  close_reason: string
}

/** One JSON line per finished connection, marked `access: true` so it can be filtered. */
export function writeAccessLine(owner: SessionOwner, f: AccessFields): void {
  owner.log.info({ access: true, listener: owner.config.name, ...f }, 'connection closed')
}
