import { isIP } from 'node:net'
import type { ConfigReader, Located } from '../config/reader.js'
import { formatAddress } from '../config/address.js'
import type { AdminConfig } from '../config/types.js'

const ADMIN_KEYS = ['listen', 'token']

/** The default admin address when `admin:` is given without `listen`. */
export const DEFAULT_ADMIN_LISTEN = '127.0.0.1:9090'

/**
 * Reads `admin: { listen, token }`. The admin API can drain backends and reload the
 * configuration, so a non-loopback `listen` without a `token` is refused at its line.
 */
export function readAdmin(reader: ConfigReader, at: Located): AdminConfig | undefined {
  const m = reader.map(at, ADMIN_KEYS, 'admin')
  if (m === undefined) return undefined
  let host = '127.0.0.1'
  let port = 9090
  let ok = true
  if (m.has('listen')) {
    const hp = reader.address(m.get('listen'), 'admin.listen', true)
    if (hp === undefined) ok = false
    else ({ host, port } = hp)
  }
  let token: string | undefined
  if (m.has('token')) {
    token = reader.string(m.get('token'), 'admin.token', { nonEmpty: true })
    if (token === undefined) ok = false
    else if (/\s/.test(token)) {
      reader.report(m.get('token'), 'admin.token must not contain spaces or line breaks (it is sent as "Authorization: Bearer TOKEN")')
      ok = false
    }
  }
  if (ok && token === undefined && !isLoopback(host)) {
    const shown = host === '' ? `:${port}` : formatAddress(host, port)
    reader.report(
      m.has('listen') ? m.get('listen') : at,
      `admin.listen ${shown} is not a loopback address and admin.token is not set: anyone who can reach it could drain backends and reload the configuration; set admin.token (e.g. token: \${SLUICE_ADMIN_TOKEN}) or listen on 127.0.0.1`,
    )
    ok = false
  }
  if (!ok) return undefined
  return { host, port, listen: host === '' ? `:${port}` : formatAddress(host, port), token }
}

/** 127.0.0.0/8, ::1, ::ffff:127.x and "localhost"; the empty host (all addresses) is not. */
export function isLoopback(host: string): boolean {
  const h = host.toLowerCase()
  if (h === 'localhost' || h === '::1') return true
  if (h.startsWith('::ffff:')) return isLoopback(h.slice(7))
  return isIP(h) === 4 && h.startsWith('127.')
}
