import type { Backend } from '../upstream/backend.js'
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
