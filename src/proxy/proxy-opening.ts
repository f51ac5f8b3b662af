import type { Socket } from 'node:net'
import type { ListenerConfig } from '../config/types.js'
import { SluiceError, type ErrorCode } from '../errors.js'
import { CidrSet } from '../config/cidr.js'
import { Router } from './routes.js'
import { peekClientHello, readProxyHeader, type PendingRead } from './sni-peek.js'
import type { TlsTerminator } from './tls.js'

/** Why a connection was closed during its opening; each is a `reason` of sluice_rejected_connections_total. */
export type OpeningRefusal = 'bad_proxy_header' | 'proxy_untrusted' | 'bad_client_hello' | 'tls_handshake' | 'handshake_timeout'

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
}

export interface OpeningFailure {
  /** client_aborted: the client hung up before its opening was complete (not a refusal). */
  reason: OpeningRefusal | 'client_aborted'
  error: SluiceError
}

const CODES: Record<OpeningRefusal, ErrorCode> = {
  bad_proxy_header: 'SLUICE_ERR_PROXY_PROTOCOL',
  proxy_untrusted: 'SLUICE_ERR_PROXY_UNTRUSTED',
  bad_client_hello: 'SLUICE_ERR_CLIENT_HELLO',
  tls_handshake: 'SLUICE_ERR_TLS_HANDSHAKE',
  handshake_timeout: 'SLUICE_ERR_HANDSHAKE_TIMEOUT',
}

function failure(reason: OpeningRefusal, message: string): OpeningFailure {
  return { reason, error: new SluiceError(CODES[reason], message) }
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
  ) {
    const routes = config.routes ?? []
    this.router = routes.length > 0 ? new Router(routes) : undefined
    this.trusted = config.proxyProtocolTrusted === undefined ? undefined : new CidrSet(config.proxyProtocolTrusted)
    this.needed = this.router !== undefined || tls !== undefined || config.sniPassthrough === true || config.proxyProtocolAccept === true
  }

  /** Runs the opening on `raw`; `done` is called once (perhaps before this returns) unless cancelled. */
  open(raw: Socket, done: (r: Opened | OpeningFailure) => void): PendingRead {
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
    }
    if (!cfg.proxyProtocolAccept && this.tls === undefined && !cfg.sniPassthrough) {
      o.pool = this.router?.pick(undefined, o.remoteAddress)
      done(o)
      return { cancel: () => {} }
    }
    let step: PendingRead | undefined
    let over = false
    const finish = (r: Opened | OpeningFailure): void => {
      if (over) return
      over = true
      clearTimeout(deadline)
      done(r)
    }
    const deadline = setTimeout(() => {
      step?.cancel()
      if (this.tls !== undefined) this.tls.cancel(raw)
      finish(failure('handshake_timeout', `no complete opening (PROXY header, ClientHello or TLS handshake) within ${cfg.timeouts.handshakeMs}ms`))
    }, cfg.timeouts.handshakeMs)

    const afterProxy = (rest: Buffer | undefined): void => {
      if (this.tls !== undefined) {
        if (rest !== undefined && rest.length > 0) raw.unshift(rest)
        const tls = this.tls
        step = { cancel: () => tls.cancel(raw) }
        tls.terminate(raw, (r) => {
          if ('error' in r) {
            const code = r.error.code
            finish({ reason: code === 'SLUICE_ERR_HANDSHAKE_TIMEOUT' ? 'handshake_timeout' : code === 'SLUICE_ERR_CLIENT_SOCKET' ? 'client_aborted' : 'tls_handshake', error: r.error })
            return
          }
          o.socket = r.socket
          const name = r.socket.servername
          o.sni = typeof name === 'string' && name !== '' ? name.toLowerCase() : undefined
          route()
        })
      } else if (cfg.sniPassthrough) {
        step = peekClientHello(raw, rest, cfg.sniPeekTimeoutMs ?? 0, (r) => {
          if (r.kind === 'error') {
            finish(failure('bad_client_hello', `not a TLS ClientHello: ${r.message}`))
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

    if (cfg.proxyProtocolAccept) {
      if (this.trusted !== undefined && !this.trusted.has(o.remoteAddress)) {
        finish(failure('proxy_untrusted', `PROXY protocol header not accepted from ${o.remoteAddress}: it is not in proxy_protocol_trusted`))
        return { cancel: () => {} }
      }
      step = readProxyHeader(raw, (r) => {
        if (r.kind === 'error') {
          finish(failure('bad_proxy_header', r.message))
          return
        }
        const a = r.header.addresses
        if (a !== undefined) {
          o.remoteAddress = a.sourceAddress
          o.remotePort = a.sourcePort
          o.destAddress = a.destAddress
          o.destPort = a.destPort
        }
        afterProxy(r.rest)
      })
    } else {
      afterProxy(undefined)
    }
    return {
      cancel: () => {
        over = true
        clearTimeout(deadline)
        step?.cancel()
      },
    }
  }
}
