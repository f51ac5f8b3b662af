/**
 * The normalized configuration: every default filled in, every duration in milliseconds,
 * every address split into host and port. Produced only by `validate`, so code that holds a
 * `Config` can trust every field.
 */
export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal'

export interface Config {
  /** The file this configuration came from, for messages. */
  file: string
  /**
   * The text it was parsed from and the environment its ${VAR}s were expanded from: what a
   * worker thread parses to build the same configuration (set by parseConfig).
   */
  source?: { text: string; env: Record<string, string> }
  /** Data-plane worker threads (1: in the main thread). */
  workers: number
  /** What carries established plain TCP connections: the native relay when it loads (`auto`), always (`native`), or the JS relay (`js`, proxy/splice.ts). */
  relay: 'auto' | 'native' | 'js'
  shutdownTimeoutMs: number
  log: LogConfig
  listeners: AnyListenerConfig[]
  pools: Map<string, PoolConfig>
  demoBackends: DemoBackendConfig[]
  /** The admin HTTP API; absent when the file has no `admin` key (the API is off). */
  admin?: AdminConfig
}

/** `admin: { listen, token }`: the admin HTTP API (docs/operations.md). */
export interface AdminConfig {
  host: string
  port: number
  /** The listen address as written (normalized), for messages. */
  listen: string
  /** When set, every call but /healthz needs `Authorization: Bearer TOKEN`. */
  token: string | undefined
}

export interface LogConfig {
  level: LogLevel
  accessLog: boolean
}

/** Any listener: switch on `protocol` to reach the TCP or UDP settings. */
export type AnyListenerConfig = ListenerConfig | UdpListenerConfig

/** A TCP listener (the name predates UDP; `TcpListenerConfig` is the same type). */
export interface ListenerConfig {
  name: string
  protocol: 'tcp'
  host: string
  port: number
  /** The listen address as written, for messages. */
  listen: string
  pool: string
  maxConnections: number
  timeouts: {
    /** 0 = no idle timeout (TCP keep-alive still finds dead peers). */
    idleMs: number
    handshakeMs: number
    /** proxy_protocol_accept: the PROXY header alone within this (absent: timeouts.handshake bounds it). */
    proxyHeaderMs?: number
  }
  /** TLS termination (docs/tls.md); absent: the listener relays the bytes as they come. */
  tls?: ListenerTlsConfig
  /** Read the ClientHello's server name for routing without decrypting (docs/tls.md). */
  sniPassthrough?: boolean
  /** With sniPassthrough: a client silent this long is a server-first protocol; use the default pool. */
  sniPeekTimeoutMs?: number
  /** Ordered rules choosing a pool by SNI and source address; `pool` when none matches. */
  routes?: RouteConfig[]
  /** Expect a PROXY protocol v1/v2 header first (docs/proxy-protocol.md). */
  proxyProtocolAccept?: boolean
  /** With proxyProtocolAccept: the sources allowed to send it (CIDRs); undefined = any. */
  proxyProtocolTrusted?: string[]
  /** Which client addresses may connect (after the PROXY header); absent = every one. */
  access?: AccessConfig
  /** Per-source limits (docs/configuration.md); absent = none. */
  limits?: SourceLimitsConfig
}

/** `access: {allow, deny}` of a listener: normalized CIDRs. Deny wins; no allow = allow all. */
export interface AccessConfig {
  allow?: string[]
  deny?: string[]
}

/** `limits:` of a listener, per client address (IPv6 per /64); each absent = no limit. */
export interface SourceLimitsConfig {
  /** Open connections (TCP) or live sessions (UDP) per source. */
  perSourceConnections?: number
  /** New connections (sessions) per second per source; a bucket holds one second's worth. */
  perSourceRate?: number
  /** UDP only: datagrams from a source per second. */
  perSourceDatagrams?: number
}

/** One `routes` item: every condition given must match; the first matching route wins. */
export interface RouteConfig {
  /** Lower-case exact name, or `*.suffix` (one or more labels before the suffix). */
  sni?: string
  /** A CIDR (`10.0.0.0/8`, `2001:db8::/32`) the client address must be in. */
  source?: string
  pool: string
}

/** A certificate and its key, as files and as the bytes read from them at load time. */
export interface TlsKeyPair {
  certFile: string
  keyFile: string
  cert: Buffer
  key: Buffer
}

/** `tls:` of a listener: TLS termination. */
export interface ListenerTlsConfig {
  /** The default certificate (no SNI, or no certificate matched the name). */
  defaultPair: TlsKeyPair
  /** Extra certificates chosen by SNI: exact names first, then wildcards. */
  certificates: { names: string[]; pair: TlsKeyPair }[]
  minVersion: 'TLSv1.2' | 'TLSv1.3'
  ciphers?: string
  alpn?: string[]
  /** mTLS: request a client certificate and verify it against this CA bundle. */
  clientCa?: { file: string; pem: Buffer }
  /** How often certificate files are checked for changes; 0 = never (SIGHUP still reloads). */
  watchIntervalMs: number
}

/** `tls:` of a pool: TLS towards its backends. */
export interface PoolTlsConfig {
  verify: boolean
  /** Trusted CAs instead of the system store. */
  ca?: { file: string; pem: Buffer }
  /** SNI and the name verified; default: the backend's host when it is a name. */
  servername?: string
}

export type ProxyProtocolVersion = 'off' | 'v1' | 'v2'

export type TcpListenerConfig = ListenerConfig

/** A UDP listener: one session per client address:port (see docs/udp.md). */
export interface UdpListenerConfig {
  name: string
  protocol: 'udp'
  host: string
  port: number
  /** The listen address as written, for messages. */
  listen: string
  pool: string
  udp: UdpSettings
  access?: AccessConfig
  limits?: SourceLimitsConfig
}

export interface UdpSettings {
  /**
   * `session`: a session (and an upstream socket) per client address:port. `dns`: queries are
   * relayed over a few shared upstream sockets per backend, their IDs rewritten and mapped
   * back; no sessions (docs/udp.md).
   */
  mode: 'session' | 'dns'
  /** dns mode: a query whose answer has not come back in this long is dropped and counted. */
  queryTimeoutMs: number
  /** dns mode: upstream sockets per backend (each carries up to 4,096 queries in flight). */
  upstreamSockets: number
  /** A session with no datagram either way for this long ends. */
  sessionTimeoutMs: number
  /** Replies expected per client datagram; once they have all arrived the session ends. 0 = unlimited. */
  responses: number
  /** Sessions held at once; a new client beyond it is dropped and counted. */
  maxSessions: number
  /** Idle connected upstream sockets kept per backend for the next sessions (0 = a new socket per session). */
  reuseSockets: number
}

export interface PoolConfig {
  name: string
  algorithm: string
  /** Options parsed by the algorithm's factory; opaque to everything else. */
  algorithmOptions: unknown
  backends: BackendConfig[]
  connectTimeoutMs: number
  retries: number
  /** Slow start: a backend joining the rotation ramps to its full weight over this long. 0 = off. */
  slowStartMs: number
  /** PROXY protocol header sent first on each backend connection (UDP: on each datagram, v2). */
  proxyProtocol?: ProxyProtocolVersion
  /** TLS towards the backends; absent = plain TCP. */
  tls?: PoolTlsConfig
  /** Active health checks (docs/health-checks.md); absent = none. */
  healthCheck?: HealthCheckConfig
  /** Passive ejection after consecutive connect failures; absent = none. */
  passive?: PassiveConfig
  /** Connections that may wait for a slot when every usable backend is at max_connections (0 = none). */
  maxQueue?: number
  /** How long one may wait there before it is reset (queue_timeout). */
  queueTimeoutMs?: number
  /** Sources of more backends, merged with `backends` (docs/discovery.md); absent = none. */
  discovery?: DiscoveryConfig
}

/** A pool's `discovery`, made of these sources (each watched or polled); their sets merge with `backends`. */
export interface DiscoveryConfig {
  dns?: DnsDiscoveryConfig
  file?: FileDiscoveryConfig
  etcd?: EtcdDiscoveryConfig
}

export interface DnsDiscoveryConfig {
  name: string
  type: 'A' | 'AAAA' | 'SRV'
  /** A/AAAA: the backends' port (SRV records carry their own). */
  port: number
  /** Re-resolved this often, and no later than the records' TTL. */
  intervalMs: number
  /** One query waits this long for an answer. */
  timeoutMs: number
  /** host:port of the DNS servers to ask, in order; empty = the system's (/etc/resolv.conf). */
  resolvers: { host: string; port: number }[]
}

export interface FileDiscoveryConfig {
  /** A YAML or JSON list of backends in the shape of `backends`, watched. */
  path: string
}

export interface EtcdDiscoveryConfig {
  /** http(s)://host:port of etcd's v3 JSON gateway, tried in order. */
  endpoints: string[]
  /** Each backend is the key PREFIX + host:port. */
  prefix: string
}

/** A pool's `health_check`: one probe per backend every interval (docs/health-checks.md). */
export interface HealthCheckConfig {
  /** The probe type (`tcp`, `redis`, ...): src/health/registry.ts. */
  type: string
  intervalMs: number
  timeoutMs: number
  /** Consecutive passes that bring a down backend up. */
  rise: number
  /** Consecutive failures that take an up backend down. */
  fall: number
  /** A random extra delay of 0 to this added to each interval (default 10% of it). 0 = none. */
  jitterMs: number
  /** Probe this port instead of each backend's own. 0 = the backend's port. */
  port: number
  /** The PROXY header each probe sends first (`send_proxy`, default the pool's `proxy_protocol`); absent = none. */
  sendProxy?: 'v1' | 'v2'
  /** Parsed by the type's probe factory; opaque to everything else. */
  options: unknown
}

/** A pool's `passive`: eject a backend after max_failures consecutive failed connects. */
export interface PassiveConfig {
  maxFailures: number
  ejectionTimeMs: number
}

export interface BackendConfig {
  /** Stable id, `host:port` (`[v6]:port`): what hashes, logs and the admin API use. */
  address: string
  host: string
  port: number
  weight: number
  backup: boolean
  /** 0 = unlimited. */
  maxConnections: number
}

/** A tiny built-in TCP server for trying sluice out (`npm start`); not for production. */
export interface DemoBackendConfig {
  name: string
  host: string
  port: number
  listen: string
  /** tcp: greets then echoes; udp: answers DNS queries with a TXT record naming itself. */
  protocol: 'tcp' | 'udp'
}

export const DEFAULTS = {
  workers: 1,
  relay: 'auto' as 'auto' | 'native' | 'js',
  shutdownTimeoutMs: 30_000,
  logLevel: 'info' as LogLevel,
  accessLog: true,
  maxConnections: 10_000,
  idleMs: 0,
  handshakeMs: 10_000,
  algorithm: 'round-robin',
  connectTimeoutMs: 3_000,
  retries: 2,
  weight: 1,
  maxWeight: 1000,
  udpSessionTimeoutMs: 30_000,
  udpMaxSessionTimeoutMs: 86_400_000,
  udpResponses: 0,
  udpMaxSessions: 100_000,
  udpReuseSockets: 128,
  udpQueryTimeoutMs: 2_000,
  udpUpstreamSockets: 2,
  sniPeekTimeoutMs: 1_000,
  tlsWatchIntervalMs: 5_000,
  queueTimeoutMs: 5_000,
} as const
