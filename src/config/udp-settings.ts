import type { ConfigReader, MapView } from './reader.js'
import { DEFAULTS, type UdpSettings } from './types.js'
import { formatDuration } from './duration.js'

const UDP_KEYS = ['session_timeout', 'responses', 'max_sessions']

/** Shortest session_timeout accepted: below it the expiry wheel's tick could not resolve it. */
const MIN_SESSION_TIMEOUT_MS = 10

/**
 * Listener keys that only mean something for a TCP listener, each with what a UDP listener
 * uses instead. Written on a udp listener they are errors, not silently ignored.
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
 * reports the TCP-only keys it must not have. `alreadyRefused` lists keys the caller has
 * reported for another reason, so each problem is told once.
 */
export function readUdpSettings(reader: ConfigReader, m: MapView, context: string, alreadyRefused: readonly string[]): UdpSettings | undefined {
  for (const [key, instead] of Object.entries(TCP_ONLY)) {
    if (m.has(key) && !alreadyRefused.includes(key)) {
      reader.report(m.keyAt(key), `"${key}" does not apply to ${context}, which is protocol udp: ${instead}; remove it`)
    }
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
