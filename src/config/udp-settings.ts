import type { ConfigReader, MapView } from './reader.js'
import { DEFAULTS, type UdpSettings } from './types.js'
import { formatDuration } from './duration.js'

const UDP_KEYS = ['mode', 'session_timeout', 'responses', 'max_sessions', 'reuse_sockets', 'query_timeout', 'upstream_sockets']
const MODES = ['session', 'dns'] as const
/** Keys that only one mode applies, and why the other does not. */
const SESSION_ONLY = ['session_timeout', 'responses', 'max_sessions', 'reuse_sockets']
const DNS_ONLY = ['query_timeout', 'upstream_sockets']

/** The listener keys a udp listener applies; every other listener key is an error on it. */
const UDP_LISTENER_KEYS = ['name', 'protocol', 'listen', 'pool', 'udp', 'access', 'limits']

/** Longest query_timeout accepted in dns mode. */
const MAX_QUERY_TIMEOUT_MS = 60_000

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
    mode: 'session',
    queryTimeoutMs: DEFAULTS.udpQueryTimeoutMs,
    upstreamSockets: DEFAULTS.udpUpstreamSockets,
    sessionTimeoutMs: DEFAULTS.udpSessionTimeoutMs,
    responses: DEFAULTS.udpResponses,
    maxSessions: DEFAULTS.udpMaxSessions,
    reuseSockets: DEFAULTS.udpReuseSockets,
  }
  if (!m.has('udp')) return defaults
  const u = reader.map(m.get('udp'), UDP_KEYS, `${context} udp`)
  if (u === undefined) return undefined
  let mode: UdpSettings['mode'] | undefined = defaults.mode
  if (u.has('mode')) {
    const text = reader.text(u.get('mode'), `${context} udp.mode`)
    mode = MODES.find((x) => x === text)
    if (text !== undefined && mode === undefined) reader.report(u.get('mode'), `${context} udp.mode "${text}" is not one of ${MODES.join(', ')} (session: a session per client address:port; dns: DNS queries matched to answers by ID over shared upstream sockets)`)
  }
  if (mode !== undefined) {
    const wrong = mode === 'dns' ? SESSION_ONLY : DNS_ONLY
    for (const key of wrong) {
      if (!u.has(key)) continue
      const why = mode === 'dns' ? 'with udp.mode: dns there are no sessions: each query is matched to its answer by ID, and query_timeout bounds the wait' : 'it applies only with udp.mode: dns'
      reader.report(u.keyAt(key), `${context} udp.${key} does not apply here: ${why}`)
    }
  }
  let queryTimeoutMs: number | undefined = defaults.queryTimeoutMs
  if (u.has('query_timeout')) {
    const at = u.get('query_timeout')
    queryTimeoutMs = reader.duration(at, `${context} udp.query_timeout`, { minMs: MIN_SESSION_TIMEOUT_MS })
    if (queryTimeoutMs !== undefined && queryTimeoutMs > MAX_QUERY_TIMEOUT_MS) {
      reader.report(at, `${context} udp.query_timeout is ${formatDuration(queryTimeoutMs)}; it must be at most ${formatDuration(MAX_QUERY_TIMEOUT_MS)} (a DNS client gives up long before)`)
      queryTimeoutMs = undefined
    }
  }
  const upstreamSockets = u.has('upstream_sockets') ? reader.int(u.get('upstream_sockets'), `${context} udp.upstream_sockets (per backend)`, 1, 64) : defaults.upstreamSockets
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
  const reuseSockets = u.has('reuse_sockets') ? reader.int(u.get('reuse_sockets'), `${context} udp.reuse_sockets (idle upstream sockets kept per backend for the next sessions; 0 = a new socket per session)`, 0, 65_536) : defaults.reuseSockets
  if (mode === undefined || queryTimeoutMs === undefined || upstreamSockets === undefined || sessionTimeoutMs === undefined || responses === undefined || maxSessions === undefined || reuseSockets === undefined) return undefined
  return { mode, queryTimeoutMs, upstreamSockets, sessionTimeoutMs, responses, maxSessions, reuseSockets }
}

/** `udp:` on a TCP listener is a mistake worth naming: it would otherwise do nothing. */
export function refuseUdpSettingsOnTcp(reader: ConfigReader, m: MapView, context: string): void {
  if (m.has('udp')) {
    reader.report(m.keyAt('udp'), `"udp" settings apply only to listeners with protocol: udp, and ${context} is tcp; add protocol: udp or remove udp`)
  }
}
