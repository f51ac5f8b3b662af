import { SluiceError, errnoCode, errorMessage } from '../errors.js'
import type { ReloadOutcome } from '../reload.js'
import type { BackendStatus, StatusDocument } from './admin-status.js'
import type { ActionDone, BackendAction } from './backend-actions.js'

export const DEFAULT_ADMIN_URL = 'http://127.0.0.1:9090'

const WHY: Readonly<Record<string, string>> = {
  ECONNREFUSED: 'connection refused',
  ENOTFOUND: 'host not found',
  EHOSTUNREACH: 'host unreachable',
  ECONNRESET: 'connection reset',
  ETIMEDOUT: 'timed out',
}

interface Reply {
  status: number
  body: unknown
}

/**
 * Talks to a running sluice's admin API for `sluice status`, `sluice backend ...` and
 * `sluice reload`. Every failure is a SluiceError with one line an operator can act on.
 */
export class AdminClient {
  private readonly base: URL

  constructor(
    url: string,
    private readonly token: string | undefined,
    private readonly timeoutMs = 15_000,
  ) {
    this.base = new URL(url.endsWith('/') ? url : url + '/')
  }

  async status(): Promise<StatusDocument> {
    const r = await this.request('GET', 'api/status')
    return this.expectOk(r) as StatusDocument
  }

  async backend(pool: string, address: string, action: BackendAction): Promise<ActionDone> {
    const r = await this.request('POST', `api/pools/${encodeURIComponent(pool)}/backends/${encodeURIComponent(address)}/${action}`)
    return this.expectOk(r) as ActionDone
  }

  /** PUT: adds the backend to the pool (or changes the settings given). */
  async putBackend(pool: string, address: string, settings: { weight?: number; backup?: boolean; max_connections?: number }): Promise<MemberReply> {
    const r = await this.request('PUT', `api/pools/${encodeURIComponent(pool)}/backends/${encodeURIComponent(address)}`, JSON.stringify(settings))
    return this.expectOk(r.status === 201 ? { ...r, status: 200 } : r) as MemberReply
  }

  /** DELETE: removes the backend from the pool (its open connections finish). */
  async deleteBackend(pool: string, address: string): Promise<MemberReply> {
    const r = await this.request('DELETE', `api/pools/${encodeURIComponent(pool)}/backends/${encodeURIComponent(address)}`)
    return this.expectOk(r) as MemberReply
  }

  /** The outcome of the reload; a refused one (422) is an outcome too, not an exception. */
  async reload(): Promise<ReloadOutcome> {
    const r = await this.request('POST', 'api/reload')
    if (r.status === 422 && isObject(r.body) && 'ok' in r.body) return r.body as unknown as ReloadOutcome
    return this.expectOk(r) as ReloadOutcome
  }

  private expectOk(r: Reply): unknown {
    if (r.status === 200) return r.body
    const message = isObject(r.body) && isObject(r.body.error) && typeof r.body.error.message === 'string' ? r.body.error.message : `HTTP ${r.status}`
    if (r.status === 401) {
      const hint = this.token === undefined ? 'no token was given: pass --token or set SLUICE_ADMIN_TOKEN' : 'the token is wrong: check --token or SLUICE_ADMIN_TOKEN against admin.token'
      throw new SluiceError('SLUICE_ERR_ADMIN_AUTH', `the admin API at ${this.origin} refused the request (401): ${hint}`)
    }
    if (r.status === 404) throw new SluiceError('SLUICE_ERR_ADMIN_NOT_FOUND', `the admin API at ${this.origin}: ${message}`)
    throw new SluiceError('SLUICE_ERR_ADMIN_REQUEST', `the admin API at ${this.origin} answered ${r.status}: ${message}`)
  }

  private get origin(): string {
    return this.base.href.replace(/\/$/, '')
  }

  private async request(method: 'GET' | 'POST' | 'PUT' | 'DELETE', path: string, payload?: string): Promise<Reply> {
    const headers: Record<string, string> = { accept: 'application/json' }
    if (payload !== undefined) headers['content-type'] = 'application/json'
    if (this.token !== undefined) headers.authorization = `Bearer ${this.token}`
    let res: Response
    try {
      res = await fetch(new URL(path, this.base), { method, headers, ...(payload !== undefined ? { body: payload } : {}), signal: AbortSignal.timeout(this.timeoutMs), redirect: 'error' })
    } catch (err) {
      throw new SluiceError('SLUICE_ERR_ADMIN_UNREACHABLE', `cannot reach the admin API at ${this.origin}: ${reason(err)} (is sluice running with admin.listen at this address? see --admin)`, { cause: err })
    }
    const text = await res.text().catch(() => '')
    let body: unknown
    try {
      body = JSON.parse(text)
    } catch {
      if (res.status === 200 || res.status === 401 || res.status === 404 || res.status === 422) {
        throw new SluiceError('SLUICE_ERR_ADMIN_UNREACHABLE', `${this.origin} answered HTTP ${res.status} but not with JSON: is it a sluice admin API?`)
      }
      body = undefined
    }
    return { status: res.status, body }
  }
}

/** What PUT/DELETE of a backend answer: its status, the pool, and (PUT) whether it is new. */
export type MemberReply = BackendStatus & { pool: string; action: 'put' | 'delete'; added?: boolean }

function reason(err: unknown): string {
  if (err instanceof Error && (err.name === 'TimeoutError' || err.name === 'AbortError')) return 'no answer in time'
  const cause = err instanceof Error ? err.cause : undefined
  const code = errnoCode(cause) ?? errnoCode(err)
  if (code !== undefined) return `${WHY[code] ?? errorMessage(cause ?? err)} (${code})`
  return errorMessage(cause ?? err)
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null
}
