import { createSecureContext, createServer, type SecureContext, type SecureContextOptions, type Server, type TLSSocket } from 'node:tls'
import type { Socket } from 'node:net'
import type { ListenerTlsConfig, TlsKeyPair } from '../config/types.js'
import type { Logger } from '../log.js'
import { SluiceError, errorMessage } from '../errors.js'
import { TlsFileWatch } from './tls-watch.js'
import { loadPair, readPem } from '../config/tls-settings.js'

export type TlsOutcome = { socket: TLSSocket } | { error: SluiceError }

/**
 * TLS termination for one listener. A tls.Server that never listens does the handshakes: a
 * connection (perhaps after a PROXY header was read from it) is handed over with
 * `emit('connection')`, and the server reports back with the finished TLSSocket or the
 * failure. Certificates are picked by SNI — exact name, then `*.parent` wildcard, then the
 * default — from a table that a reload or a changed file replaces whole, so handshakes in
 * flight and open connections keep what they started with.
 */
export class TlsTerminator {
  private readonly server: Server
  private exact = new Map<string, SecureContext>()
  private wildcard = new Map<string, SecureContext>()
  private cfg: ListenerTlsConfig
  private readonly pending = new Map<Socket, (o: TlsOutcome) => void>()
  private watch: TlsFileWatch | undefined

  constructor(cfg: ListenerTlsConfig, handshakeMs: number, private readonly log: Logger, private readonly listener: string) {
    this.cfg = cfg
    this.server = createServer({
      ...contextOptions(cfg, cfg.defaultPair),
      SNICallback: (name, cb) => cb(null, this.contextFor(name)),
      ...(cfg.alpn !== undefined ? { ALPNProtocols: cfg.alpn } : {}),
      // mTLS: ask for a certificate, then decide here (so the reason can be logged).
      requestCert: cfg.clientCa !== undefined,
      rejectUnauthorized: false,
      handshakeTimeout: handshakeMs,
    })
    this.buildTables(cfg)
    this.server.on('secureConnection', (ts: TLSSocket) => this.settle(ts, undefined))
    this.server.on('tlsClientError', (err: Error, ts: TLSSocket) => this.settle(ts, err))
    this.startWatch()
  }

  /** Hands `raw` to TLS; `done` gets the TLS socket once the handshake is over, or the failure. */
  terminate(raw: Socket, done: (o: TlsOutcome) => void): void {
    this.pending.set(raw, done)
    // The TLSSocket takes allowHalfOpen from `raw`. Off during the handshake, so a client that
    // hangs up (FIN, or a reset read as one) closes it at once and the handshake fails, instead
    // of waiting for the handshake timeout; on again once the handshake is done (settle), so an
    // established client's half-close is passed on to the backend.
    raw.allowHalfOpen = false
    this.server.emit('connection', raw)
  }

  /** Forget a connection whose client left during the handshake. */
  cancel(raw: Socket): void {
    this.pending.delete(raw)
  }

  /** New settings from a reload (files already read and checked by validation). */
  update(cfg: ListenerTlsConfig): void {
    this.apply(cfg)
    this.watch?.close()
    this.startWatch()
  }

  close(): void {
    this.watch?.close()
    this.watch = undefined
  }

  private apply(cfg: ListenerTlsConfig): void {
    this.server.setSecureContext(contextOptions(cfg, cfg.defaultPair))
    this.buildTables(cfg)
    this.cfg = cfg
  }

  private buildTables(cfg: ListenerTlsConfig): void {
    const exact = new Map<string, SecureContext>()
    const wildcard = new Map<string, SecureContext>()
    for (const c of cfg.certificates) {
      const ctx = createSecureContext(contextOptions(cfg, c.pair))
      for (const n of c.names) {
        const table = n.startsWith('*.') ? wildcard : exact
        if (!table.has(n.startsWith('*.') ? n.slice(2) : n)) table.set(n.startsWith('*.') ? n.slice(2) : n, ctx)
      }
    }
    this.exact = exact
    this.wildcard = wildcard
  }

  /** The certificate for a server name: exact, then a wildcard one label up; undefined = default. */
  contextFor(name: string): SecureContext | undefined {
    const n = name.toLowerCase()
    const hit = this.exact.get(n)
    if (hit !== undefined) return hit
    const dot = n.indexOf('.')
    return dot > 0 ? this.wildcard.get(n.slice(dot + 1)) : undefined
  }

  private settle(ts: TLSSocket, err: Error | undefined): void {
    const raw = parentOf(ts)
    const done = raw === undefined ? undefined : this.pending.get(raw)
    if (raw === undefined || done === undefined) {
      ts.destroy()
      return
    }
    this.pending.delete(raw)
    raw.allowHalfOpen = true
    ts.allowHalfOpen = true
    if (err !== undefined) {
      const nodeCode = errorCodeOf(err)
      // ECONNRESET: the client hung up during the handshake (Node's "socket hang up").
      const code = nodeCode === 'ERR_TLS_HANDSHAKE_TIMEOUT' ? 'SLUICE_ERR_HANDSHAKE_TIMEOUT' : nodeCode === 'ECONNRESET' ? 'SLUICE_ERR_CLIENT_SOCKET' : 'SLUICE_ERR_TLS_HANDSHAKE'
      ts.destroy()
      done({ error: new SluiceError(code, `TLS handshake failed: ${errorMessage(err)}`, { cause: err }) })
      return
    }
    if (this.cfg.clientCa !== undefined && !ts.authorized) {
      const why = ts.authorizationError === null || ts.authorizationError === undefined ? 'no client certificate' : String(ts.authorizationError)
      ts.destroy()
      done({ error: new SluiceError('SLUICE_ERR_TLS_HANDSHAKE', `client certificate rejected: ${why}`) })
      return
    }
    done({ socket: ts })
  }

  /** Re-reads every file when one changed; a bad set keeps the loaded certificates serving. */
  private startWatch(): void {
    const cfg = this.cfg
    if (cfg.watchIntervalMs <= 0) return
    this.watch = new TlsFileWatch(filesOf(cfg), cfg.watchIntervalMs, () => this.reloadFiles())
  }

  private reloadFiles(): void {
    const cfg = this.cfg
    const next = reread(cfg)
    if (typeof next === 'string') {
      this.log.error({ code: 'SLUICE_ERR_TLS_CERT', listener: this.listener }, `certificate files changed but cannot be loaded; the loaded certificates keep serving: ${next}`)
      return
    }
    try {
      this.apply(next)
    } catch (err) {
      this.log.error({ code: 'SLUICE_ERR_TLS_CERT', listener: this.listener }, `certificate files changed but cannot be used; the loaded certificates keep serving: ${errorMessage(err)}`)
      return
    }
    this.log.info({ listener: this.listener, files: filesOf(next) }, 'certificates reloaded from changed files')
  }
}

function contextOptions(cfg: ListenerTlsConfig, pair: TlsKeyPair): SecureContextOptions {
  return {
    cert: pair.cert,
    key: pair.key,
    minVersion: cfg.minVersion,
    ...(cfg.ciphers !== undefined ? { ciphers: cfg.ciphers } : {}),
    ...(cfg.clientCa !== undefined ? { ca: cfg.clientCa.pem } : {}),
  }
}

function filesOf(cfg: ListenerTlsConfig): string[] {
  const files = [cfg.defaultPair.certFile, cfg.defaultPair.keyFile]
  for (const c of cfg.certificates) files.push(c.pair.certFile, c.pair.keyFile)
  if (cfg.clientCa !== undefined) files.push(cfg.clientCa.file)
  return [...new Set(files)]
}

/** The same settings with every file read again; a message when one cannot be. */
function reread(cfg: ListenerTlsConfig): ListenerTlsConfig | string {
  const def = loadPair(cfg.defaultPair.certFile, cfg.defaultPair.keyFile)
  if (typeof def === 'string') return def
  const certificates: ListenerTlsConfig['certificates'] = []
  for (const c of cfg.certificates) {
    const pair = loadPair(c.pair.certFile, c.pair.keyFile)
    if (typeof pair === 'string') return pair
    certificates.push({ names: c.names, pair })
  }
  let clientCa = cfg.clientCa
  if (clientCa !== undefined) {
    const pem = readPem(clientCa.file)
    if (typeof pem === 'string') return pem
    clientCa = { file: clientCa.file, pem }
  }
  return { ...cfg, defaultPair: def, certificates, ...(clientCa !== undefined ? { clientCa } : {}) }
}

/**
 * The plain socket under a server-side TLSSocket. Node keeps it as `_parent` (not in the
 * typings); read it without widening types, and treat anything else as "unknown".
 */
function parentOf(ts: TLSSocket): Socket | undefined {
  const p: unknown = Reflect.get(ts, '_parent')
  return p !== null && typeof p === 'object' ? (p as Socket) : undefined
}

function errorCodeOf(err: Error): string | undefined {
  const c: unknown = Reflect.get(err, 'code')
  return typeof c === 'string' ? c : undefined
}
