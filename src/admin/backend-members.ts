import type { ControlApi } from '../control/control-api.js'
import type { ErrorCode } from '../errors.js'
import { formatAddress, parseAddress } from '../config/address.js'
import { DEFAULTS } from '../config/types.js'
import { backendStatus, type BackendStatus } from './admin-status.js'
import type { ActionRefused } from './backend-actions.js'

export interface MemberDone {
  pool: string
  action: 'put' | 'delete'
  /** put: whether the backend is new to the pool (else its settings changed). */
  added?: boolean
  backend: BackendStatus
}

/** The body of PUT /api/pools/{pool}/backends/{address}: all optional. */
export function parsePutBody(text: string): { weight?: number; backup?: boolean; maxConnections?: number } | ActionRefused {
  const bad = (error: string): ActionRefused => ({ status: 400, code: 'SLUICE_ERR_ADMIN_REQUEST' as ErrorCode, error })
  if (text.trim() === '') return {}
  let v: unknown
  try {
    v = JSON.parse(text)
  } catch {
    return bad('the body is not JSON; send {"weight": N, "backup": true|false, "max_connections": N} (all optional)')
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return bad('the body must be a JSON object: {"weight": N, "backup": true|false, "max_connections": N}')
  const o = v as Record<string, unknown>
  for (const k of Object.keys(o)) if (!['weight', 'backup', 'max_connections'].includes(k)) return bad(`unknown field "${k}" in the body; known: weight, backup, max_connections`)
  const out: { weight?: number; backup?: boolean; maxConnections?: number } = {}
  if (o.weight !== undefined) {
    if (typeof o.weight !== 'number' || !Number.isInteger(o.weight) || o.weight < 1 || o.weight > DEFAULTS.maxWeight) return bad(`weight must be a whole number from 1 to ${DEFAULTS.maxWeight}`)
    out.weight = o.weight
  }
  if (o.backup !== undefined) {
    if (typeof o.backup !== 'boolean') return bad('backup must be true or false')
    out.backup = o.backup
  }
  if (o.max_connections !== undefined) {
    const n = o.max_connections
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > 10_000_000) return bad('max_connections must be a whole number from 0 to 10000000 (0: unlimited)')
    out.maxConnections = n
  }
  return out
}

/**
 * PUT: adds the backend at run time (it takes traffic once its health check passes, at once
 * when the pool has none), or changes the settings given of one that is there. DELETE: takes
 * it out; its open connections finish (it shows as draining until the last one ends).
 */
export function memberAction(daemon: ControlApi, poolName: string, address: string, action: 'put' | 'delete', body: string): MemberDone | ActionRefused {
  const pool = daemon.pools.get(poolName)
  if (pool === undefined) return { status: 404, code: 'SLUICE_ERR_ADMIN_NOT_FOUND', error: `no pool "${poolName}"; pools: ${[...daemon.pools.keys()].join(', ')}` }
  const hp = parseAddress(address, false)
  if (typeof hp === 'string') return { status: 400, code: 'SLUICE_ERR_ADMIN_REQUEST', error: `backend address: ${hp}` }
  const id = formatAddress(hp.host, hp.port)
  if (action === 'delete') {
    const b = pool.find(id)
    if (b === undefined) return { status: 404, code: 'SLUICE_ERR_ADMIN_NOT_FOUND', error: `pool "${poolName}" has no backend ${id}; its backends: ${pool.backends.map((x) => x.id).join(', ')}` }
    daemon.deleteBackend(poolName, id)
    daemon.log.info({ pool: poolName, backend: id, active_connections: b.active }, `backend ${id} removed from pool ${poolName} at run time; its ${b.active} open connection${b.active === 1 ? '' : 's'} finish`)
    return { pool: poolName, action, backend: backendStatus(b) }
  }
  const settings = parsePutBody(body)
  if ('error' in settings) return settings
  const had = pool.find(id) !== undefined
  daemon.putBackend(poolName, id, hp.host, hp.port, settings)
  const b = pool.find(id)
  if (b === undefined) {
    // A reload is being applied: the change is applied right after it.
    return { pool: poolName, action, added: !had, backend: { address: id, state: 'down', weight: settings.weight ?? 1, backup: settings.backup ?? false, max_connections: settings.maxConnections ?? 0, active_connections: 0, total_connections: 0, consecutive_failures: 0 } }
  }
  return { pool: poolName, action, added: !had, backend: backendStatus(b) }
}
