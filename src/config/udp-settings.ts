import type { ConfigReader, MapView } from './reader.js'
import { DEFAULTS, type UdpSettings } from './types.js'
import { formatDuration } from './duration.js'

const UDP_KEYS = ['session_timeout', 'responses', 'max_sessions']

/** The listener keys a udp listener applies; every other listener key is an error on it. */
const UDP_LISTENER_KEYS = ['name', 'protocol', 'listen', 'pool', 'udp']

/** Shortest session_timeout accepted: below it the expiry wheel's tick could not resolve it. */
const MIN_SESSION_TIMEOUT_MS = 10

/**
 * Why some listener keys do not apply to a udp listener, and what it uses instead. Any other
 * listener key it does not apply (routes, access, ... as they are added for TCP) is refused
 * with a general message: a setting that silently did nothing, such as an access rule, would
 * be worse than an error.
 */
const TCP_ONLY: Readonly<Record<string, string>> = {
  max_connections: 'a udp listener limits its sessions with udp.max_sessions',
  timeouts: 'a udp listener ends idle sessions after udp.session_timeout',
  tls: 'sluice does not terminate TLS (DTLS) over UDP',
  sni_passthrough: 'a UDP datagram carries no TLS ClientHello to read a server name from',
  proxy_protocol_accept: 'the PROXY protocol header only exists on TCP streams',
}

/**
 * Reads the `udp:` settings of a listener with `protocol: udp` (defaults when absent) and
 * reports the listener keys (of `listenerKeys`) that a udp listener does not apply. A key
 * already reported for another reason (unknown, not available yet) is not reported again.
 */
export function readUdpSettings(reader: ConfigReader, m: MapView, context: string, listenerKeys: readonly string[]): UdpSettings | undefined {
  for (const key of m.keys()) {
    if (UDP_LISTENER_KEYS.includes(key) || !listenerKeys.includes(key)) continue
    const at = m.keyAt(key)
    if (reader.issues.some((i) => i.path === at.path)) continue
    const instead = TCP_ONLY[key] ?? 'udp listeners do not apply it in this version of sluice'
    reader.report(at, `"${key}" does not apply to ${context}, which is protocol udp: ${instead}; remove it`)
  }
  const defaults: UdpSettings = {
    sessionTimeoutMs: DEFAULTS.udpSessionTimeoutMs,
    responses: DEFAULTS.udpResponses,
    maxSessions: DEFAULTS.udpMaxSessions,
  }
  if (!m.has('udp')) return defaults
  const u = reader.map(m.get('udp'), UDP_KEYS, `${context} udp`)
  if (u === undefined) return undefined
  let sessionTimeoutMs: number | undefined = defaults.sessionTimeoutMs
  if (u.has('session_timeout')) {
    const at = u.get('session_timeout')
    sessionTimeoutMs = reader.duration(at, `${context} udp.session_timeout`, { minMs: MIN_SESSION_TIMEOUT_MS })
    if (sessionTimeoutMs !== undefined && sessionTimeoutMs > DEFAULTS.udpMaxSessionTimeoutMs) {
      reader.report(at, `${context} udp.session_timeout is ${formatDuration(sessionTimeoutMs)}; it must be at most ${formatDuration(DEFAULTS.udpMaxSessionTimeoutMs)} (idle UDP sessions hold a socket each)`)
      sessionTimeoutMs = undefined
    }
  }
  const responses = u.has('responses') ? reader.int(u.get('responses'), `${context} udp.responses (replies expected per datagram; 0 = unlimited)`, 0, 65_535) : defaults.responses
  const maxSessions = u.has('max_sessions') ? reader.int(u.get('max_sessions'), `${context} udp.max_sessions`, 1, 10_000_000) : defaults.maxSessions
  if (sessionTimeoutMs === undefined || responses === undefined || maxSessions === undefined) return undefined
  return { sessionTimeoutMs, responses, maxSessions }
}

/** `udp:` on a TCP listener is a mistake worth naming: it would otherwise do nothing. */
export function refuseUdpSettingsOnTcp(reader: ConfigReader, m: MapView, context: string): void {
  if (m.has('udp')) {
    reader.report(m.keyAt('udp'), `"udp" settings apply only to listeners with protocol: udp, and ${context} is tcp; add protocol: udp or remove udp`)
  }
}
