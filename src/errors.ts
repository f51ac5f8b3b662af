/**
 * Every operational error sluice raises carries a stable code from this table.
 * docs/errors.md lists the same codes; test/errors.test.ts keeps the two in step.
 */
export const ERROR_CODES = {
  SLUICE_ERR_CONFIG: 'The configuration file has one or more problems; each is printed as FILE:LINE:COL.',
  SLUICE_ERR_CONFIG_READ: 'The configuration file could not be read (missing, unreadable, not a file).',
  SLUICE_ERR_LISTEN: 'A listener could not bind its address (port in use, permission denied, address not on this host).',
  SLUICE_ERR_ACCEPT: 'A listener could not accept connections (out of file descriptors or memory); it pauses and retries on its own.',
  SLUICE_ERR_NO_BACKEND: 'No backend of the pool was usable for a new connection (all down, draining, full or already tried).',
  SLUICE_ERR_CONNECT: 'Connecting to a backend failed (refused, unreachable, reset during connect).',
  SLUICE_ERR_CONNECT_TIMEOUT: 'Connecting to a backend took longer than the pool\'s connect_timeout.',
  SLUICE_ERR_CLIENT_SOCKET: 'The client side of a proxied connection failed (reset, broken pipe).',
  SLUICE_ERR_BACKEND_SOCKET: 'The backend side of a proxied connection failed after it was established.',
  SLUICE_ERR_IDLE_TIMEOUT: 'A proxied connection saw no traffic in either direction for the listener\'s idle timeout.',
  SLUICE_ERR_MAX_CONNECTIONS: 'A listener refused a connection because it already holds max_connections.',
  SLUICE_ERR_DEMO_BACKEND: 'A demo backend could not start.',
  SLUICE_ERR_HEALTH_CHECK: 'A backend failed its active health check (fall consecutive failures, or its first check) and was taken out of rotation.',
  SLUICE_ERR_BACKEND_EJECTED: 'Passive health checking ejected a backend after passive.max_failures consecutive connect failures, for passive.ejection_time.',
  SLUICE_ERR_UDP_MAX_SESSIONS: 'A UDP listener dropped a datagram from a new client because it already holds udp.max_sessions sessions.',
  SLUICE_ERR_ADMIN_BUSY: 'The admin API already had its maximum of requests in flight; this one got 503 with Retry-After.',
  SLUICE_ERR_RELAY: 'The native relay could not be loaded: with relay: native sluice does not start; with relay: auto the JS relay carries the connections.',
  SLUICE_ERR_WORKER: 'A data-plane worker thread died (its error is logged); its open connections were lost and it was started again.',
  SLUICE_ERR_UDP_TOO_LARGE: 'A UDP datagram did not fit in one datagram once the PROXY v2 header was put before it; it was dropped and counted (reason datagram_too_large).',
  SLUICE_ERR_DNS_SEND: 'The native DNS relay could not send some datagrams (a full socket buffer, or no descriptor for an upstream socket); logged at most once a second with the count.',
  SLUICE_ERR_UDP_LATE_REPLY: 'A UDP backend answered on an idle upstream socket after its session\'s udp.responses replies were all in; the reply was dropped and the socket closed, not reused.',
  SLUICE_ERR_UDP_UNREACHABLE: 'A UDP backend answered with ICMP unreachable (ECONNREFUSED: nothing listens on its port); the client\'s next datagram goes to another backend.',
  SLUICE_ERR_ADMIN_LISTEN: 'The admin API could not bind admin.listen (port in use, permission denied, address not on this host).',
  SLUICE_ERR_ADMIN_AUTH: 'An admin API call had no bearer token or the wrong one (HTTP 401).',
  SLUICE_ERR_ADMIN_NOT_FOUND: 'An admin API call named a path, pool or backend that does not exist (HTTP 404).',
  SLUICE_ERR_ADMIN_REQUEST: 'An admin API call was malformed (wrong method, bad address) or the API refused it (HTTP 4xx/5xx).',
  SLUICE_ERR_ADMIN_UNREACHABLE: 'A command could not reach the admin API (nothing listening at --admin, timeout, not sluice).',
  SLUICE_ERR_RELOAD: 'A reload was refused or could not be applied; the running configuration stays.',
  SLUICE_ERR_PROXY_PROTOCOL: 'A connection on a proxy_protocol_accept listener did not start with a valid PROXY protocol v1/v2 header; it was closed.',
  SLUICE_ERR_PROXY_UNTRUSTED: 'A connection on a proxy_protocol_accept listener came from a source outside proxy_protocol_trusted; it was closed.',
  SLUICE_ERR_CLIENT_HELLO: 'A connection on an sni_passthrough listener sent first bytes that are not a well-formed TLS ClientHello; it was closed.',
  SLUICE_ERR_TLS_HANDSHAKE: 'The TLS handshake with a client failed (protocol or cipher mismatch, bad or missing client certificate); it was closed.',
  SLUICE_ERR_HANDSHAKE_TIMEOUT: 'A connection did not finish its opening (PROXY header, ClientHello, TLS handshake) within timeouts.handshake; it was closed.',
  SLUICE_ERR_TLS_CERT: 'A changed certificate or key file could not be loaded; the certificates already loaded keep serving.',
  SLUICE_ERR_DISCOVERY_DNS: 'A DNS discovery attempt failed (no answer, SERVFAIL, NXDOMAIN, an empty answer, an SRV target with no address); the pool keeps its last good set.',
  SLUICE_ERR_DISCOVERY_FILE: 'A discovery file could not be read or is not a list of backends (its FILE:LINE:COL problems are logged); the pool keeps its last good set.',
  SLUICE_ERR_DISCOVERY_ETCD: 'etcd discovery could not read or watch its prefix, or a key holds a value that is not a backend; the last good set stays and the watch resumes after a backoff.',
  SLUICE_ERR_RESOURCE_EXHAUSTED: 'sluice ran out of file descriptors (EMFILE, ENFILE) or socket memory (ENOBUFS, ENOMEM), or a UDP listener\'s session table was full: accepting pauses and is retried with backoff; no backend is blamed.',
  SLUICE_ERR_BACKEND_TLS: 'The TLS handshake with a backend failed (certificate not trusted, wrong name, protocol error); the next backend is tried.',
  SLUICE_ERR_ACCESS_DENIED: 'A client address is not allowed by its listener\'s access lists (in deny, or not in allow); the connection was reset, the datagram dropped.',
  SLUICE_ERR_SOURCE_CONNECTIONS: 'A client address already holds limits.per_source_connections open connections (UDP: live sessions); the new one was reset (dropped).',
  SLUICE_ERR_SOURCE_RATE: 'A client address opened new connections (sessions) or sent datagrams faster than limits.per_source_rate / per_source_datagrams; the excess was reset (dropped).',
  SLUICE_ERR_SOURCE_TABLE_FULL: 'The shared per-source table had no free entry for a new client address; the client was admitted without its per-source limit.',
  SLUICE_ERR_QUEUE_FULL: 'Every usable backend of a pool was at max_connections and the pool\'s queue already held max_queue connections; the new one was reset.',
  SLUICE_ERR_QUEUE_TIMEOUT: 'A connection waited in its pool\'s queue for queue_timeout without a backend slot freeing; it was reset.',
  SLUICE_ERR_PROXY_HEADER_TIMEOUT: 'A connection on a proxy_protocol_accept listener did not send its whole PROXY header within timeouts.proxy_header (or timeouts.handshake); it was closed.',
  SLUICE_ERR_CLIENT_HELLO_TIMEOUT: 'A connection on an sni_passthrough listener began a ClientHello and did not finish it within timeouts.handshake; it was closed.',
} as const

export type ErrorCode = keyof typeof ERROR_CODES

/** An operational error with a stable code. The message is for people; match on `code`. */
export class SluiceError extends Error {
  readonly code: ErrorCode

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'SluiceError'
    this.code = code
  }
}

/** One problem in a configuration file, located at the YAML node that is wrong. */
export interface ConfigIssue {
  file: string
  line: number
  col: number
  /** Dotted path to the offending node, e.g. `listeners[0].listen`. */
  path: string
  message: string
}

export function formatIssue(issue: ConfigIssue): string {
  return `${issue.file}:${issue.line}:${issue.col}: ${issue.message}`
}

/** Every problem found in a configuration file, reported together. */
export class ConfigError extends SluiceError {
  readonly issues: readonly ConfigIssue[]

  constructor(issues: readonly ConfigIssue[]) {
    const first = issues[0]
    const head = first ? formatIssue(first) : 'invalid configuration'
    const more = issues.length > 1 ? ` (and ${issues.length - 1} more)` : ''
    super('SLUICE_ERR_CONFIG', head + more)
    this.name = 'ConfigError'
    this.issues = issues
  }

  /** All issues, one `FILE:LINE:COL: message` per line. */
  format(): string {
    return this.issues.map(formatIssue).join('\n')
  }
}

/** The errno-style code of a Node system error, if it has one. */
export function errnoCode(err: unknown): string | undefined {
  if (err !== null && typeof err === 'object' && 'code' in err) {
    const code = (err as { code: unknown }).code
    return typeof code === 'string' ? code : undefined
  }
  return undefined
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}
