import type { Socket } from 'node:net'
import type { ListenerConfig } from '../config/types.js'
import { SluiceError, type ErrorCode } from '../errors.js'
import { CidrSet, plainAddress } from '../config/cidr.js'
import { Router } from './routes.js'
import { peekClientHello, readProxyHeader, type PendingRead } from './sni-peek.js'
import { parseProxyHeader, type ProxyAddresses, type ProxyHeader } from './proxy-protocol.js'
import type { TlsTerminator } from './tls.js'
import { tlsFacts, type TlsFacts } from './proxy-tlv.js'
import { formatAddress } from '../config/address.js'
import type { SourceGate, SourceHolder, SourceRefusal } from '../listener/source-gate.js'
export type { SourceHolder }
import { sourceRefusalCode } from '../listener/source-report.js'

/** Why a connection was closed during its opening; each is a `reason` of sluice_rejected_connections_total. */
export type OpeningRefusal =
  | 'bad_proxy_header'
  | 'proxy_untrusted'
  | 'bad_client_hello'
  | 'tls_handshake'
  /** The TLS handshake (or the opening as a whole) did not finish within timeouts.handshake. */
  | 'handshake_timeout'
  /** The PROXY header was not complete within timeouts.proxy_header (or timeouts.handshake). */
  | 'proxy_header_timeout'
  /** sni_passthrough: a ClientHello begun was not complete within timeouts.handshake. */
  | 'client_hello_timeout'
  | SourceRefusal

/** A session's part in its opening: what the gate counted for it, and word that the PROXY header is in. */
export interface OpeningHost extends SourceHolder {
  /** The PROXY header is read: from now on the deadline is the whole opening's (timeouts.handshake). */
  proxyHeaderRead(): void
}

/** The opening in progress: `cancel()` stops it; `expire()` ends it as too slow, with the reason of the step it was in. */
export interface OpeningRead extends PendingRead {
  expire(): void
}

/** What the opening learned: who the client really is, what it asked for, where it goes. */
export interface Opened {
  /** The socket to splice: the accepted one, or the TLSSocket over it when TLS ends here. */
  socket: Socket
  remoteAddress: string
  remotePort: number
  /** The address the client connected to (from the PROXY header when one was read). */
  destAddress: string
  destPort: number
  /** The server name (lower case) from the ClientHello or the TLS handshake. */
  sni: string | undefined
  /** Bytes already read that the backend must get first, untouched (the peeked ClientHello). */
  replay: Buffer | undefined
  /** The pool of the matching route; undefined for the listener's own pool. */
  pool: string | undefined
  /** Length of the PROXY header read (0 without one): those bytes are not the client's data. */
  headerBytes: number
  /**
   * The PROXY header says the peer in front speaks for itself, as its health checks do: v2
   * LOCAL, v1 UNKNOWN, or addresses that are this very connection's (HAProxy's v1 checks).
   * No client is relayed; the connection's own addresses apply.
   */
  peerOwn: boolean
  /** What the TLS handshake negotiated, when TLS ended here (for the PROXY v2 TLVs sent on). */
  tls: TlsFacts | undefined
}

export interface OpeningFailure {
  /**
   * client_aborted: the client hung up before its opening was complete (not a refusal);
   * peer_check: so did the peer in front, after a header saying it speaks for itself.
   */
  reason: OpeningRefusal | 'client_aborted' | 'peer_check'
  error: SluiceError
  /** Length of the PROXY header read before the failure (0 without one). */
  headerBytes: number
  /** The client the PROXY header named, when it was refused for it (access, limits). */
  client?: string
}

const CODES: Record<Exclude<OpeningRefusal, SourceRefusal>, ErrorCode> = {
  bad_proxy_header: 'SLUICE_ERR_PROXY_PROTOCOL',
  proxy_untrusted: 'SLUICE_ERR_PROXY_UNTRUSTED',
  bad_client_hello: 'SLUICE_ERR_CLIENT_HELLO',
  tls_handshake: 'SLUICE_ERR_TLS_HANDSHAKE',
  handshake_timeout: 'SLUICE_ERR_HANDSHAKE_TIMEOUT',
  proxy_header_timeout: 'SLUICE_ERR_PROXY_HEADER_TIMEOUT',
  client_hello_timeout: 'SLUICE_ERR_CLIENT_HELLO_TIMEOUT',
}

function failure(reason: OpeningRefusal, message: string, headerBytes: number): OpeningFailure {
  const code = reason === 'access_denied' || reason === 'source_connections' || reason === 'source_rate' ? sourceRefusalCode(reason) : CODES[reason]
  return { reason, error: new SluiceError(code, message), headerBytes }
}

/** Whether a failure is a refusal by `access` or `limits` (reset at once; counted, not logged one line each). */
export function isSourceRefusal(reason: string): reason is SourceRefusal {
  return reason === 'access_denied' || reason === 'source_connections' || reason === 'source_rate'
}

/** Whether a PROXY header is the peer's own connection (a check), not a client's: see Opened.peerOwn. */
function peersOwn(h: ProxyHeader, raw: Socket): boolean {
  if (h.command === 'local' || (h.version === 1 && h.transport === 'unknown')) return true
  const a: ProxyAddresses | undefined = h.addresses
  return (
    a !== undefined &&
    a.sourcePort === raw.remotePort &&
    a.destPort === raw.localPort &&
    plainAddress(a.sourceAddress) === plainAddress(raw.remoteAddress ?? '') &&
    plainAddress(a.destAddress) === plainAddress(raw.localAddress ?? '')
  )
}

/**
 * The steps a listener runs on a new connection before a backend is picked, in order:
 * PROXY header in, then SNI peek or TLS handshake, then routes. Built once per listener
 * configuration; `needed` false means a plain listener, and sessions skip it entirely.
 * The whole opening is bounded by timeouts.handshake.
 */
export class OpeningStage {
  readonly needed: boolean
  private readonly trusted: CidrSet | undefined
  private readonly router: Router | undefined

  constructor(
    private readonly config: ListenerConfig,
    private readonly tls: TlsTerminator | undefined,
    /** `access` and `limits` applied to the client the PROXY header names, before any TLS work. */
    private readonly gate?: SourceGate,
  ) {
    const routes = config.routes ?? []
    this.router = routes.length > 0 ? new Router(routes) : undefined
    this.trusted = config.proxyProtocolTrusted === undefined ? undefined : new CidrSet(config.proxyProtocolTrusted)
    this.needed = this.router !== undefined || tls !== undefined || config.sniPassthrough === true || config.proxyProtocolAccept === true
  }

  /**
   * Runs the opening on `raw`; `done` is called once (perhaps before this returns) unless
   * cancelled. `holder` receives what the gate counted for the client (to release at its end).
   */
  open(raw: Socket, done: (r: Opened | OpeningFailure) => void, host?: OpeningHost): OpeningRead {
    const cfg = this.config
    const o: Opened = {
      socket: raw,
      remoteAddress: raw.remoteAddress ?? '',
      remotePort: raw.remotePort ?? 0,
      destAddress: raw.localAddress ?? '',
      destPort: raw.localPort ?? 0,
      sni: undefined,
      replay: undefined,
      pool: undefined,
      headerBytes: 0,
      peerOwn: false,
      tls: undefined,
    }
    if (!cfg.proxyProtocolAccept && this.tls === undefined && !cfg.sniPassthrough) {
      o.pool = this.router?.pick(undefined, o.remoteAddress)
      done(o)
      return NOTHING
    }
    let step: PendingRead | undefined
    let over = false
    /** The step the opening is in, for the reason when its deadline passes. */
    let phase: 'proxy' | 'hello' | 'tls' = cfg.proxyProtocolAccept ? 'proxy' : this.tls !== undefined ? 'tls' : 'hello'
    const finish = (r: Opened | OpeningFailure): void => {
      if (over) return
      over = true
      done(r)
    }
    // The deadline is the session's, on the data plane's timer wheel: it calls expire().
    const expire = (): void => {
      if (over) return
      step?.cancel()
      if (this.tls !== undefined) this.tls.cancel(raw)
      const t = cfg.timeouts
      if (phase === 'proxy') {
        const ms = t.proxyHeaderMs !== undefined && t.proxyHeaderMs < t.handshakeMs ? t.proxyHeaderMs : t.handshakeMs
        finish(failure('proxy_header_timeout', `no complete PROXY header within ${ms}ms`, o.headerBytes))
      } else if (phase === 'hello') {
        finish(failure('client_hello_timeout', `no complete TLS ClientHello within ${t.handshakeMs}ms`, o.headerBytes))
      } else {
        finish(failure('handshake_timeout', `no complete TLS handshake within ${t.handshakeMs}ms`, o.headerBytes))
      }
    }

    const afterProxy = (rest: Buffer | undefined): void => {
      phase = this.tls !== undefined ? 'tls' : 'hello'
      if (this.tls !== undefined) {
        if (rest !== undefined && rest.length > 0) raw.unshift(rest)
        const tls = this.tls
        step = { cancel: () => tls.cancel(raw) }
        tls.terminate(raw, (r) => {
          if ('error' in r) {
            const code = r.error.code
            finish({ reason: code === 'SLUICE_ERR_HANDSHAKE_TIMEOUT' ? 'handshake_timeout' : code === 'SLUICE_ERR_CLIENT_SOCKET' ? 'client_aborted' : 'tls_handshake', error: r.error, headerBytes: o.headerBytes })
            return
          }
          o.socket = r.socket
          o.tls = tlsFacts(r.socket, cfg.tls?.clientCa !== undefined)
          o.sni = o.tls.sni
          route()
        })
      } else if (cfg.sniPassthrough) {
        step = peekClientHello(raw, rest, cfg.sniPeekTimeoutMs ?? 0, (r) => {
          if (r.kind === 'error') {
            finish(failure('bad_client_hello', `not a TLS ClientHello: ${r.message}`, o.headerBytes))
            return
          }
          if (r.kind === 'hello') {
            o.sni = r.sni
            o.replay = r.bytes
          }
          route()
        })
      } else {
        if (rest !== undefined && rest.length > 0) raw.unshift(rest)
        route()
      }
    }
    const route = (): void => {
      o.pool = this.router?.pick(o.sni, o.remoteAddress)
      finish(o)
    }

    if (cfg.proxyProtocolAccept && this.trusted !== undefined && raw.remoteAddress === undefined) {
      // The kernel no longer knows the peer (getpeername failed): the connection was reset
      // before it was accepted, as balancers' checks and port scanners do. Its sender cannot
      // be checked against the list, and nobody is there to refuse: the read reports the
      // reset (an error, which ends the session), or the bytes sent before it. Those are
      // only looked at to tell a peer's check (LOCAL, UNKNOWN) from a client that left.
      const onData = (chunk: Buffer): void => {
        step?.cancel()
        const r = parseProxyHeader(chunk)
        const own = r.kind === 'ok' && peersOwn(r.header, raw)
        const message = `the connection was reset before it was accepted; its address is unknown${own ? ' (a check of the PROXY peer: its header said LOCAL/UNKNOWN)' : ''}`
        finish({ reason: own ? 'peer_check' : 'client_aborted', error: new SluiceError('SLUICE_ERR_CLIENT_SOCKET', message), headerBytes: r.kind === 'ok' ? r.length : 0 })
      }
      raw.once('data', onData)
      raw.resume()
      step = {
        cancel: () => {
          raw.off('data', onData)
          raw.pause()
        },
      }
    } else if (cfg.proxyProtocolAccept) {
      if (this.trusted !== undefined && !this.trusted.has(o.remoteAddress)) {
        finish(failure('proxy_untrusted', `PROXY protocol header not accepted from ${o.remoteAddress}: it is not in proxy_protocol_trusted`, 0))
        return NOTHING
      }
      step = readProxyHeader(raw, (r) => {
        if (r.kind === 'error') {
          finish(failure('bad_proxy_header', r.message, 0))
          return
        }
        const h = r.header
        o.headerBytes = r.length
        o.peerOwn = peersOwn(h, raw)
        const a = h.addresses
        if (a !== undefined) {
          o.remoteAddress = a.sourceAddress
          o.remotePort = a.sourcePort
          o.destAddress = a.destAddress
          o.destPort = a.destPort
        }
        // The peer's own checks are not clients: access and limits apply to clients only.
        const gate = this.gate
        if (gate !== undefined && !o.peerOwn && host !== undefined) {
          const refused = gate.admit(o.remoteAddress, host)
          if (refused !== undefined) {
            finish({ ...failure(refused, `client ${o.remoteAddress} (from the PROXY header) refused: ${refused}`, o.headerBytes), client: formatAddress(o.remoteAddress, o.remotePort) })
            return
          }
        }
        host?.proxyHeaderRead()
        afterProxy(r.rest)
      })
    } else {
      afterProxy(undefined)
    }
    return {
      cancel: () => {
        over = true
        step?.cancel()
      },
      expire,
    }
  }
}

/** An opening that reported before open() returned: nothing to cancel or expire. */
const NOTHING: OpeningRead = { cancel: () => {}, expire: () => {} }
