import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { createHash, timingSafeEqual } from 'node:crypto'
import { readFileSync } from 'node:fs'
import type { AdminConfig } from '../config/types.js'
import type { ControlApi } from '../control/control-api.js'
import { memberAction } from './backend-members.js'
import type { ErrorCode } from '../errors.js'
import { errnoCode, errorMessage } from '../errors.js'
import { bindError } from '../listener/bind-error.js'
import { formatAddress } from '../config/address.js'
import { LogThrottle } from '../log-throttle.js'
import { reloadFromFile } from '../reload.js'
import { buildStatus } from './admin-status.js'
import { backendAction, isBackendAction } from './backend-actions.js'

/** Admin requests answered at once; more get 503 (SLUICE_ERR_ADMIN_BUSY) with Retry-After. */
export const MAX_IN_FLIGHT = 16

const BACKEND_PATH = /^\/api\/pools\/([^/]+)\/backends\/([^/]+)\/([a-z]+)$/
/** PUT (add, or change settings) and DELETE (remove; it drains) of one backend. */
const MEMBER_PATH = /^\/api\/pools\/([^/]+)\/backends\/([^/]+)$/
/** A PUT body is a small JSON object; anything longer is refused. */
const MAX_BODY_BYTES = 16 * 1024

/**
 * The admin HTTP API and dashboard (node:http, no framework): /metrics, /api/status,
 * backend drain/enable/disable, /api/reload, /healthz, /readyz and the page at /.
 * With a token configured every call but /healthz needs `Authorization: Bearer TOKEN`.
 */
export class AdminServer {
  private readonly server: Server
  private tokenDigest: Buffer | undefined
  private readonly throttle = new LogThrottle(10_000)
  private closing = false
  /** Requests being answered now (every path but /healthz). */
  private inFlight = 0

  constructor(
    private cfg: AdminConfig,
    private readonly daemon: ControlApi,
  ) {
    this.tokenDigest = digest(cfg.token)
    this.server = createServer({ requestTimeout: 30_000, headersTimeout: 10_000 }, (req, res) => {
      this.handle(req, res).catch((err: unknown) => {
        daemon.log.error({ code: 'SLUICE_ERR_ADMIN_REQUEST', path: req.url }, `admin API: ${errorMessage(err)}`)
        if (!res.headersSent) sendError(res, 500, 'SLUICE_ERR_ADMIN_REQUEST', 'internal error; see the sluice log')
        else res.destroy()
      })
    })
    this.server.on('error', (err) => {
      daemon.log.error({ code: 'SLUICE_ERR_ADMIN_LISTEN', errno: errnoCode(err) }, `admin API error: ${errorMessage(err)}`)
    })
  }

  get config(): AdminConfig {
    return this.cfg
  }

  /** Binds admin.listen; rejects with SLUICE_ERR_ADMIN_LISTEN and a reason. */
  listen(): Promise<void> {
    const { host, port, listen } = this.cfg
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => {
        this.server.off('listening', onListening)
        reject(bindError('SLUICE_ERR_ADMIN_LISTEN', 'the admin API', listen, err))
      }
      const onListening = (): void => {
        this.server.off('error', onError)
        resolve()
      }
      this.server.once('error', onError)
      this.server.once('listening', onListening)
      this.server.listen({ host: host === '' ? undefined : host, port })
    })
  }

  /** The bound address (the real port when admin.listen said port 0). */
  address(): { host: string; port: number; text: string } {
    const a = this.server.address()
    if (a === null || typeof a === 'string') return { host: this.cfg.host, port: this.cfg.port, text: this.cfg.listen }
    return { host: a.address, port: a.port, text: formatAddress(a.address, a.port) }
  }

  /** Takes a reloaded admin section whose address did not change (a new token applies at once). */
  update(cfg: AdminConfig): void {
    this.cfg = cfg
    this.tokenDigest = digest(cfg.token)
  }

  /**
   * Stops accepting; requests in flight get their answer (then their connection closes), idle
   * keep-alive connections close now, and whatever is still open after `graceMs` is cut.
   */
  close(graceMs = 2000): Promise<void> {
    this.closing = true
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.server.closeAllConnections(), graceMs)
      timer.unref()
      this.server.close(() => {
        clearTimeout(timer)
        resolve()
      })
      this.server.closeIdleConnections()
    })
  }

  destroy(): void {
    this.closing = true
    this.server.close()
    this.server.closeAllConnections()
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    // Only a PUT has a body sluice reads; every other body is discarded.
    if (req.method !== 'PUT') req.resume()
    // Closing (moved by a reload, or stopping): answer, then end the connection.
    if (this.closing) res.shouldKeepAlive = false
    const path = (req.url ?? '/').split('?')[0] ?? '/'
    const method = req.method ?? 'GET'
    if (path === '/healthz') {
      if (this.onlyGet(method, res)) sendText(res, 200, 'ok\n')
      return
    }
    // A bound on the admin work in flight: a flood of scrapes or status calls cannot queue up
    // unbounded work on the event loop (shared with the data plane when workers is 1).
    if (this.inFlight >= MAX_IN_FLIGHT) {
      const suppressed = this.throttle.take('busy')
      if (suppressed !== false) this.daemon.log.warn({ code: 'SLUICE_ERR_ADMIN_BUSY', in_flight: this.inFlight, suppressed: suppressed || undefined }, `admin API: ${MAX_IN_FLIGHT} requests already in flight; answering 503`)
      res.setHeader('retry-after', '1')
      sendError(res, 503, 'SLUICE_ERR_ADMIN_BUSY', `the admin API already has ${MAX_IN_FLIGHT} requests in flight; retry in a second`)
      return
    }
    this.inFlight++
    try {
      await this.route(req, res, path, method)
    } finally {
      this.inFlight--
    }
  }

  private async route(req: IncomingMessage, res: ServerResponse, path: string, method: string): Promise<void> {
    const authorized = this.authorized(req)
    if (path === '/' || path === '/index.html') {
      // The page holds no data (it asks the API with the token typed into it), so a browser
      // without the token still gets it, with 401, to type the token in.
      if (!this.onlyGet(method, res)) return
      res.writeHead(authorized ? 200 : 401, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store', ...securityHeaders() })
      res.end(dashboardHtml())
      return
    }
    if (!authorized) {
      req.resume()
      const key = req.socket.remoteAddress ?? '?'
      const suppressed = this.throttle.take('auth')
      if (suppressed !== false) this.daemon.log.warn({ code: 'SLUICE_ERR_ADMIN_AUTH', client: key, path, suppressed: suppressed || undefined }, 'admin API: missing or wrong bearer token')
      res.setHeader('www-authenticate', 'Bearer realm="sluice"')
      sendError(res, 401, 'SLUICE_ERR_ADMIN_AUTH', req.headers.authorization === undefined ? 'this admin API needs "Authorization: Bearer TOKEN" (admin.token)' : 'wrong bearer token')
      return
    }
    if (path === '/metrics') {
      if (!this.onlyGet(method, res)) return
      const text = await this.daemon.metricsText()
      res.writeHead(200, { 'content-type': this.daemon.metricsContentType, 'cache-control': 'no-store' })
      res.end(text)
      return
    }
    if (path === '/readyz') {
      if (!this.onlyGet(method, res)) return
      const ready = this.daemon.ready
      sendText(res, ready ? 200 : 503, ready ? 'ready\n' : 'not ready\n')
      return
    }
    if (path === '/api/status') {
      if (!this.onlyGet(method, res)) return
      const admin = { listen: this.address().text, token_required: this.tokenDigest !== undefined }
      sendJson(res, 200, await buildStatus(this.daemon, VERSION, admin))
      return
    }
    if (path === '/api/reload') {
      if (!this.onlyPost(method, res)) return
      const outcome = await reloadFromFile(this.daemon, this.daemon.config.file, 'api')
      if (this.closing) res.shouldKeepAlive = false
      if (outcome.ok) {
        sendJson(res, 200, outcome)
        return
      }
      // 503 while stopping (no reload is taken any more), 422 for a file or change that was refused.
      const error = { code: outcome.code ?? 'SLUICE_ERR_RELOAD', message: outcome.message }
      sendJson(res, outcome.result === 'refused' ? 503 : 422, { ...outcome, error })
      return
    }
    const member = MEMBER_PATH.exec(path)
    if (member !== null) {
      await this.member(req, res, member[1] ?? '', member[2] ?? '', method)
      return
    }
    req.resume()
    const m = BACKEND_PATH.exec(path)
    if (m !== null) {
      const action = m[3] ?? ''
      if (!isBackendAction(action)) {
        sendError(res, 404, 'SLUICE_ERR_ADMIN_NOT_FOUND', `no backend action "${action}"; use drain, enable or disable`)
        return
      }
      if (!this.onlyPost(method, res)) return
      const pool = decode(m[1] ?? '')
      const address = decode(m[2] ?? '')
      if (pool === undefined || address === undefined) {
        sendError(res, 400, 'SLUICE_ERR_ADMIN_REQUEST', 'bad percent-encoding in the path')
        return
      }
      const r = backendAction(this.daemon, pool, address, action)
      if ('error' in r) sendError(res, r.status, r.code, r.error)
      else sendJson(res, 200, r)
      return
    }
    sendError(res, 404, 'SLUICE_ERR_ADMIN_NOT_FOUND', `no such admin endpoint: ${method} ${path}; see GET /api/status, /metrics, /healthz, /readyz`)
  }

  private async member(req: IncomingMessage, res: ServerResponse, rawPool: string, rawAddress: string, method: string): Promise<void> {
    if (method !== 'PUT' && method !== 'DELETE') {
      req.resume()
      res.setHeader('allow', 'PUT, DELETE')
      sendError(res, 405, 'SLUICE_ERR_ADMIN_REQUEST', `${method} is not allowed here; use PUT (add or change a backend) or DELETE (remove it)`)
      return
    }
    const pool = decode(rawPool)
    const address = decode(rawAddress)
    const body = method === 'PUT' ? await readBody(req, MAX_BODY_BYTES) : ''
    if (body === undefined) {
      sendError(res, 413, 'SLUICE_ERR_ADMIN_REQUEST', `the body is longer than ${MAX_BODY_BYTES} bytes; send {"weight": N, "backup": B, "max_connections": N}`)
      return
    }
    if (pool === undefined || address === undefined) {
      sendError(res, 400, 'SLUICE_ERR_ADMIN_REQUEST', 'bad percent-encoding in the path')
      return
    }
    const r = memberAction(this.daemon, pool, address, method === 'PUT' ? 'put' : 'delete', body)
    if ('error' in r) sendError(res, r.status, r.code, r.error)
    // The backend's status JSON, with the pool and whether it is new to it.
    else sendJson(res, r.added === true ? 201 : 200, { ...r.backend, pool: r.pool, action: r.action, ...(r.added !== undefined ? { added: r.added } : {}) })
  }

  private authorized(req: IncomingMessage): boolean {
    if (this.tokenDigest === undefined) return true
    const h = req.headers.authorization
    const m = h === undefined ? null : /^Bearer[ ]+(\S+)\s*$/i.exec(h)
    if (m === null) return false
    // Compare digests: equal lengths for timingSafeEqual, and no length leak.
    return timingSafeEqual(digest(m[1]) as Buffer, this.tokenDigest)
  }

  private onlyGet(method: string, res: ServerResponse): boolean {
    if (method === 'GET' || method === 'HEAD') return true
    res.setHeader('allow', 'GET, HEAD')
    sendError(res, 405, 'SLUICE_ERR_ADMIN_REQUEST', `${method} is not allowed here; use GET`)
    return false
  }

  private onlyPost(method: string, res: ServerResponse): boolean {
    if (method === 'POST') return true
    res.setHeader('allow', 'POST')
    sendError(res, 405, 'SLUICE_ERR_ADMIN_REQUEST', `${method} is not allowed here; use POST`)
    return false
  }
}

/** The request body as text, or undefined when it is longer than `max` bytes (the rest is discarded). */
function readBody(req: IncomingMessage, max: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = []
    let size = 0
    let over = false
    req.on('data', (c: Buffer) => {
      size += c.length
      if (size > max) over = true
      else chunks.push(c)
    })
    req.on('end', () => resolve(over ? undefined : Buffer.concat(chunks).toString('utf8')))
    req.on('error', () => resolve(undefined))
  })
}

function digest(token: string | undefined): Buffer | undefined {
  return token === undefined ? undefined : createHash('sha256').update(token).digest()
}

function decode(segment: string): string | undefined {
  try {
    return decodeURIComponent(segment)
  } catch {
    return undefined
  }
}

function securityHeaders(): Record<string, string> {
  return {
    'x-content-type-options': 'nosniff',
    'x-frame-options': 'DENY',
    'content-security-policy': "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'",
  }
}

function sendText(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-store' })
  res.end(text)
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' })
  res.end(JSON.stringify(body, null, 2) + '\n')
}

export function sendError(res: ServerResponse, status: number, code: ErrorCode, message: string): void {
  sendJson(res, status, { error: { code, message } })
}

let dashboard: string | undefined
/** The dashboard page, read once from beside this module (the build copies it to dist/admin/). */
function dashboardHtml(): string {
  dashboard ??= readFileSync(new URL('./dashboard.html', import.meta.url), 'utf8')
  return dashboard
}

const VERSION = ((): string => {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: string }
    return pkg.version ?? '0.0.0'
  } catch {
    return '0.0.0'
  }
})()
