import type { PoolSource } from '../control/control-api.js'
import type { Logger } from '../log.js'
import type { ErrorCode } from '../errors.js'
import { formatAddress, parseAddress } from '../config/address.js'
import type { BackendState } from '../upstream/backend.js'
import type { Backend } from '../upstream/backend.js'
import { backendStatus, type BackendStatus } from './admin-status.js'

export const BACKEND_ACTIONS = ['drain', 'enable', 'disable'] as const
export type BackendAction = (typeof BACKEND_ACTIONS)[number]

/**
 * drain: finish open connections, take no new ones. disable: out of rotation. enable: back to
 * what its health says (`up`, or `down` while its checks fail or it is ejected).
 */
function target(b: Backend, action: BackendAction): BackendState {
  return action === 'drain' ? 'draining' : action === 'disable' ? 'disabled' : b.healthState
}

export function isBackendAction(s: string): s is BackendAction {
  return (BACKEND_ACTIONS as readonly string[]).includes(s)
}

export interface ActionDone {
  pool: string
  action: BackendAction
  previous_state: BackendState
  backend: BackendStatus
}

export interface ActionRefused {
  status: number
  code: ErrorCode
  error: string
}

/**
 * Applies an operator's drain/enable/disable to one backend of one pool. Open connections
 * are never cut: draining and disabled backends only stop receiving new ones.
 */
export function backendAction(daemon: PoolSource & { readonly log: Logger }, poolName: string, address: string, action: BackendAction): ActionDone | ActionRefused {
  const pool = daemon.pools.get(poolName)
  if (pool === undefined) {
    const known = [...daemon.pools.keys()].join(', ')
    return { status: 404, code: 'SLUICE_ERR_ADMIN_NOT_FOUND', error: `no pool "${poolName}"; pools: ${known}` }
  }
  const b = findBackend(pool.backends, address)
  if (b === undefined) {
    const known = pool.backends.map((x) => x.id).join(', ')
    return { status: 404, code: 'SLUICE_ERR_ADMIN_NOT_FOUND', error: `pool "${poolName}" has no backend ${address}; its backends: ${known}` }
  }
  const previous = b.state
  pool.setState(b, target(b, action))
  if (previous !== b.state) {
    daemon.log.info({ pool: poolName, backend: b.id, from: previous, to: b.state, active_connections: b.active }, `backend ${action}: ${b.id} is now ${b.state}`)
  }
  return { pool: poolName, action, previous_state: previous, backend: backendStatus(b) }
}

/** Matches `host:port` as written, or any spelling that normalizes to it (e.g. `::1:80` is not, `[::1]:80` is). */
function findBackend(backends: readonly Backend[], address: string): Backend | undefined {
  const exact = backends.find((b) => b.id === address)
  if (exact !== undefined) return exact
  const hp = parseAddress(address, false)
  if (typeof hp === 'string') return undefined
  const id = formatAddress(hp.host, hp.port)
  return backends.find((b) => b.id === id || b.id.toLowerCase() === id.toLowerCase())
}
