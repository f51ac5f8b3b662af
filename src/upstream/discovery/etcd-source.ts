import { formatAddress, parseAddress } from '../../config/address.js'
import { DEFAULTS, type BackendConfig, type EtcdDiscoveryConfig } from '../../config/types.js'
import { errorMessage } from '../../errors.js'
import type { DiscoverySource, SourceEvents } from './source.js'

const REQUEST_TIMEOUT_MS = 5_000
const BACKOFF_FIRST_MS = 250
const BACKOFF_MAX_MS = 10_000

interface KeyValue {
  key?: string
  value?: string
  mod_revision?: string
}

interface RangeResponse {
  header?: { revision?: string }
  kvs?: KeyValue[]
}

interface WatchResponse {
  result?: {
    header?: { revision?: string }
    created?: boolean
    canceled?: boolean
    compact_revision?: string
    cancel_reason?: string
    events?: { type?: 'PUT' | 'DELETE'; kv?: KeyValue }[]
  }
  error?: { message?: string }
}

/**
 * `discovery.etcd`: each backend is the key PREFIX + host:port, its value JSON
 * `{"address": "host:port", "weight": N, "backup": B, "max_connections": N}` (all but address
 * optional). The prefix is read once (a range) and then watched from the revision after it;
 * a broken watch is resumed from the last revision seen, after a backoff (250ms doubling to
 * 10s, over the endpoints in turn); a watch refused because that revision was compacted
 * re-reads the whole prefix. It speaks etcd's v3 JSON gateway (/v3/kv/range, /v3/watch)
 * with fetch. A key whose value is not a backend is reported and keeps its last good value.
 */
export class EtcdSource implements DiscoverySource {
  readonly kind = 'etcd' as const
  private readonly members = new Map<string, BackendConfig>()
  private revision = 0
  private closed = false
  private readonly abort = new AbortController()
  private endpoint = 0
  private backoffMs = BACKOFF_FIRST_MS
  private timer: NodeJS.Timeout | undefined

  constructor(
    private readonly cfg: EtcdDiscoveryConfig,
    private readonly events: SourceEvents,
  ) {}

  async start(): Promise<void> {
    const ok = await this.fullRead()
    if (ok) void this.watchLoop()
    else this.retryLater(() => this.restart())
  }

  close(): void {
    this.closed = true
    clearTimeout(this.timer)
    this.abort.abort()
  }

  private async restart(): Promise<void> {
    if (await this.fullRead()) void this.watchLoop()
    else this.retryLater(() => this.restart())
  }

  private retryLater(fn: () => Promise<void>): void {
    if (this.closed) return
    const wait = this.backoffMs
    this.backoffMs = Math.min(BACKOFF_MAX_MS, this.backoffMs * 2)
    this.endpoint = (this.endpoint + 1) % this.cfg.endpoints.length
    this.timer = setTimeout(() => void fn(), wait)
    this.timer.unref()
  }

  private url(path: string): string {
    return `${this.cfg.endpoints[this.endpoint]}${path}`
  }

  /** Reads every key under the prefix; true when it worked (the set was sent). */
  private async fullRead(): Promise<boolean> {
    const bounded = boundedSignal(this.abort.signal, REQUEST_TIMEOUT_MS)
    try {
      const res = await fetch(this.url('/v3/kv/range'), {
        method: 'POST',
        body: JSON.stringify({ key: b64(this.cfg.prefix), range_end: b64(prefixEnd(this.cfg.prefix)) }),
        signal: bounded.signal,
      })
      if (!res.ok) throw new Error(`HTTP ${res.status} ${(await res.text()).slice(0, 200)}`)
      const body = (await res.json()) as RangeResponse
      const problems: string[] = []
      const previous = new Map(this.members)
      this.members.clear()
      for (const kv of body.kvs ?? []) {
        const key = unb64(kv.key)
        const b = parseValue(this.cfg.prefix, key, unb64(kv.value))
        if (typeof b === 'string') {
          problems.push(b)
          const old = previous.get(key)
          if (old !== undefined) this.members.set(key, old)
        } else this.members.set(key, b)
      }
      this.revision = Number(body.header?.revision ?? 0)
      this.backoffMs = BACKOFF_FIRST_MS
      if (problems.length > 0) this.events.failed(problems.join('; '), 'SLUICE_ERR_DISCOVERY_ETCD')
      this.events.set([...this.members.values()])
      return true
    } catch (err) {
      if (this.closed) return false
      this.events.failed(`${this.cfg.endpoints[this.endpoint]}: cannot read ${this.cfg.prefix}: ${errorMessage(err)}`, 'SLUICE_ERR_DISCOVERY_ETCD')
      return false
    } finally {
      bounded.done()
    }
  }

  /** Watches from the revision after the last one seen until the stream breaks, then resumes. */
  private async watchLoop(): Promise<void> {
    let compacted = false
    try {
      const res = await fetch(this.url('/v3/watch'), {
        method: 'POST',
        body: JSON.stringify({ create_request: { key: b64(this.cfg.prefix), range_end: b64(prefixEnd(this.cfg.prefix)), start_revision: String(this.revision + 1) } }),
        signal: this.abort.signal,
      })
      if (!res.ok || res.body === null) throw new Error(`HTTP ${res.status}`)
      const decoder = new TextDecoder()
      let buf = ''
      for await (const chunk of res.body) {
        buf += decoder.decode(chunk as Uint8Array, { stream: true })
        let nl: number
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl).trim()
          buf = buf.slice(nl + 1)
          if (line === '') continue
          const r = this.onWatch(JSON.parse(line) as WatchResponse)
          if (r === 'compacted') {
            compacted = true
            throw new Error(`revision ${this.revision + 1} was compacted`)
          }
        }
      }
      throw new Error('the watch stream ended')
    } catch (err) {
      if (this.closed) return
      this.events.failed(`${this.cfg.endpoints[this.endpoint]}: watch on ${this.cfg.prefix} broken (${errorMessage(err)}); ${compacted ? 'reading the prefix again' : `resuming from revision ${this.revision + 1}`}`, 'SLUICE_ERR_DISCOVERY_ETCD')
      this.retryLater(compacted ? () => this.restart() : () => this.watchLoop())
    }
  }

  private onWatch(w: WatchResponse): 'ok' | 'compacted' {
    if (w.error !== undefined) throw new Error(w.error.message ?? 'watch error')
    const r = w.result
    if (r === undefined) return 'ok'
    if (Number(r.compact_revision ?? 0) > 0) return 'compacted'
    if (r.canceled === true) throw new Error(`watch canceled: ${r.cancel_reason ?? 'no reason given'}`)
    if (r.created === true) this.backoffMs = BACKOFF_FIRST_MS
    const evs = r.events ?? []
    if (evs.length === 0) return 'ok'
    const problems: string[] = []
    for (const e of evs) {
      const key = unb64(e.kv?.key)
      if (e.type === 'DELETE') this.members.delete(key)
      else {
        const b = parseValue(this.cfg.prefix, key, unb64(e.kv?.value))
        if (typeof b === 'string') problems.push(b)
        else this.members.set(key, b)
      }
      this.revision = Math.max(this.revision, Number(e.kv?.mod_revision ?? 0))
    }
    this.revision = Math.max(this.revision, Number(r.header?.revision ?? 0))
    if (problems.length > 0) this.events.failed(problems.join('; '), 'SLUICE_ERR_DISCOVERY_ETCD')
    this.events.set([...this.members.values()])
    return 'ok'
  }
}

/**
 * One key's value as a backend, or what is wrong with it. The key must be PREFIX + the
 * value's address, so a key names exactly one backend.
 */
export function parseValue(prefix: string, key: string, value: string): BackendConfig | string {
  const where = `etcd key ${key}`
  let v: unknown
  try {
    v = JSON.parse(value)
  } catch {
    return `${where}: the value is not JSON (expected {"address": "host:port", "weight": N, "backup": B, "max_connections": N}): ${value.slice(0, 80)}`
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return `${where}: the value must be a JSON object with "address", not ${value.slice(0, 80)}`
  const o = v as Record<string, unknown>
  for (const k of Object.keys(o)) if (!['address', 'weight', 'backup', 'max_connections'].includes(k)) return `${where}: unknown field "${k}"; known: address, weight, backup, max_connections`
  if (typeof o.address !== 'string') return `${where}: "address" (host:port) is missing or not a string`
  const hp = parseAddress(o.address, false)
  if (typeof hp === 'string') return `${where}: address ${hp}`
  const address = formatAddress(hp.host, hp.port)
  if (key.slice(prefix.length) !== address && key.slice(prefix.length) !== o.address) return `${where}: the key must be the prefix followed by the address ${address}`
  const weight = o.weight === undefined ? DEFAULTS.weight : o.weight
  if (typeof weight !== 'number' || !Number.isInteger(weight) || weight < 1 || weight > DEFAULTS.maxWeight) return `${where}: "weight" must be a whole number from 1 to ${DEFAULTS.maxWeight}`
  const backup = o.backup === undefined ? false : o.backup
  if (typeof backup !== 'boolean') return `${where}: "backup" must be true or false`
  const max = o.max_connections === undefined ? 0 : o.max_connections
  if (typeof max !== 'number' || !Number.isInteger(max) || max < 0 || max > 10_000_000) return `${where}: "max_connections" must be a whole number from 0 to 10000000`
  return { address, host: hp.host, port: hp.port, weight, backup, maxConnections: max }
}

function b64(s: string | Buffer): string {
  return (typeof s === 'string' ? Buffer.from(s, 'utf8') : s).toString('base64')
}

function unb64(s: string | undefined): string {
  return s === undefined ? '' : Buffer.from(s, 'base64').toString('utf8')
}

/** The end of the range of keys starting with `prefix` (etcd's "prefix + 1"). */
export function prefixEnd(prefix: string): Buffer {
  const bytes = Buffer.from(prefix, 'utf8')
  for (let i = bytes.length - 1; i >= 0; i--) {
    if ((bytes[i] as number) < 0xff) {
      const out = Buffer.from(bytes.subarray(0, i + 1))
      out[i] = (out[i] as number) + 1
      return out
    }
  }
  return Buffer.from([0])
}

/**
 * A signal that aborts when `parent` does or after `ms`, whichever comes first; done() lets
 * go of its timer and of its listener on `parent` once the request has ended.
 */
function boundedSignal(parent: AbortSignal, ms: number): { signal: AbortSignal; done(): void } {
  const c = new AbortController()
  const onAbort = (): void => c.abort(parent.reason)
  const timer = setTimeout(() => c.abort(new DOMException(`no answer within ${ms}ms`, 'TimeoutError')), ms)
  timer.unref()
  if (parent.aborted) onAbort()
  else parent.addEventListener('abort', onAbort, { once: true })
  return {
    signal: c.signal,
    done: () => {
      clearTimeout(timer)
      parent.removeEventListener('abort', onAbort)
    },
  }
}
