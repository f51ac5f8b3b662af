import type { ConfigReader, MapView } from '../config/reader.js'
import { closest } from '../config/reader.js'
import { DEFAULTS, type ListenerConfig, type ListenerTlsConfig, type ProxyProtocolVersion, type RouteConfig } from '../config/types.js'
import { parseCidr } from '../config/cidr.js'
import { readListenerTls } from '../config/tls-settings.js'
import { isSniPattern } from './routes.js'

/**
 * The listener keys that decide how a TCP connection is opened and routed before a backend
 * is picked — `tls`, `sni_passthrough`, `sni_peek_timeout`, `routes`, `proxy_protocol_accept`,
 * `proxy_protocol_trusted` — and the pool key `proxy_protocol`. See docs/tls.md and
 * docs/proxy-protocol.md.
 */
export const OPENING_KEYS = ['tls', 'sni_passthrough', 'sni_peek_timeout', 'routes', 'proxy_protocol_accept', 'proxy_protocol_trusted'] as const

export type OpeningSettings = Pick<ListenerConfig, 'tls' | 'sniPassthrough' | 'sniPeekTimeoutMs' | 'routes' | 'proxyProtocolAccept' | 'proxyProtocolTrusted'>

const PROXY_VERSIONS: readonly ProxyProtocolVersion[] = ['off', 'v1', 'v2']

/** Reads the opening keys of a TCP listener; undefined after reporting a problem. */
export function readOpening(reader: ConfigReader, m: MapView, context: string, poolNames: ReadonlySet<string>): OpeningSettings | undefined {
  let ok = true
  let tls: ListenerTlsConfig | undefined
  if (m.has('tls')) {
    tls = readListenerTls(reader, m.get('tls'), context)
    if (tls === undefined) ok = false
  }
  const sniPassthrough = m.has('sni_passthrough') ? reader.bool(m.get('sni_passthrough'), `${context} sni_passthrough`) : false
  if (sniPassthrough === undefined) ok = false
  if (sniPassthrough === true && m.has('tls')) {
    reader.report(m.keyAt('sni_passthrough'), `${context} has both tls (terminate TLS here) and sni_passthrough (pass TLS through untouched); choose one`)
    ok = false
  }
  let sniPeekTimeoutMs: number | undefined = DEFAULTS.sniPeekTimeoutMs
  if (m.has('sni_peek_timeout')) {
    sniPeekTimeoutMs = reader.duration(m.get('sni_peek_timeout'), `${context} sni_peek_timeout`)
    if (sniPeekTimeoutMs === undefined) ok = false
    else if (sniPassthrough !== true) {
      reader.report(m.keyAt('sni_peek_timeout'), `${context}: sni_peek_timeout only applies with sni_passthrough: true`)
      ok = false
    }
  }
  const canSni = m.has('tls') || sniPassthrough === true
  const routes = m.has('routes') ? readRoutes(reader, m, context, poolNames, canSni) : []
  if (routes === undefined) ok = false
  const proxyProtocolAccept = m.has('proxy_protocol_accept') ? reader.bool(m.get('proxy_protocol_accept'), `${context} proxy_protocol_accept`) : false
  if (proxyProtocolAccept === undefined) ok = false
  let proxyProtocolTrusted: string[] | undefined
  if (m.has('proxy_protocol_trusted')) {
    if (proxyProtocolAccept !== true) {
      reader.report(m.keyAt('proxy_protocol_trusted'), `${context}: proxy_protocol_trusted only applies with proxy_protocol_accept: true`)
      ok = false
    }
    proxyProtocolTrusted = []
    for (const item of reader.seq(m.get('proxy_protocol_trusted'), `${context} proxy_protocol_trusted`) ?? []) {
      const c = cidrAt(reader, item, `${context} proxy_protocol_trusted`)
      if (c === undefined) ok = false
      else proxyProtocolTrusted.push(c)
    }
  }
  if (!ok) return undefined
  return {
    ...(tls !== undefined ? { tls } : {}),
    sniPassthrough: sniPassthrough === true,
    sniPeekTimeoutMs,
    routes,
    proxyProtocolAccept: proxyProtocolAccept === true,
    ...(proxyProtocolTrusted !== undefined ? { proxyProtocolTrusted } : {}),
  }
}

function readRoutes(reader: ConfigReader, m: MapView, context: string, poolNames: ReadonlySet<string>, canSni: boolean): RouteConfig[] | undefined {
  const items = reader.seq(m.get('routes'), `${context} routes`)
  if (items === undefined) return undefined
  const out: RouteConfig[] = []
  let ok = true
  for (const item of items) {
    const rctx = `a route of ${context}`
    const r = reader.map(item, ['sni', 'source', 'pool'], rctx)
    if (r === undefined || !r.require('pool', rctx)) {
      ok = false
      continue
    }
    const pool = reader.string(r.get('pool'), `${rctx} pool`)
    if (pool !== undefined && !poolNames.has(pool)) {
      const near = closest(pool, [...poolNames])
      reader.report(r.get('pool'), `${rctx} uses pool "${pool}", which is not defined under pools${near ? `; did you mean "${near}"?` : ''}`)
      ok = false
    }
    if (!r.has('sni') && !r.has('source')) {
      reader.report(item, `${rctx} has neither sni nor source, so it would match everything; use the listener's pool for that`)
      ok = false
    }
    let sni: string | undefined
    if (r.has('sni')) {
      const t = reader.string(r.get('sni'), `${rctx} sni`)
      if (t !== undefined && !isSniPattern(t.toLowerCase())) {
        reader.report(r.get('sni'), `${rctx}: sni "${t}" must be a host name (a.example.com) or a wildcard (*.example.com)`)
        ok = false
      } else if (t !== undefined && !canSni) {
        reader.report(r.get('sni'), `${rctx} matches on sni, but ${context} neither terminates TLS (tls) nor reads the server name (sni_passthrough: true)`)
        ok = false
      } else if (t === undefined) ok = false
      else sni = t.toLowerCase()
    }
    const source = r.has('source') ? cidrAt(reader, r.get('source'), `${rctx} source`) : undefined
    if (r.has('source') && source === undefined) ok = false
    if (pool !== undefined) out.push({ ...(sni !== undefined ? { sni } : {}), ...(source !== undefined ? { source } : {}), pool })
  }
  return ok ? out : undefined
}

function cidrAt(reader: ConfigReader, at: Parameters<ConfigReader['text']>[0], context: string): string | undefined {
  const t = reader.string(at, context)
  if (t === undefined) return undefined
  const c = parseCidr(t)
  if (typeof c === 'string') {
    reader.report(at, `${context}: ${c}`)
    return undefined
  }
  return c.text
}

/** The pool key `proxy_protocol` (default off). */
export function readProxyProtocol(reader: ConfigReader, pool: MapView, context: string): ProxyProtocolVersion | undefined {
  if (!pool.has('proxy_protocol')) return 'off'
  const at = pool.get('proxy_protocol')
  // YAML reads a bare `off` as the boolean false.
  if (at.node !== undefined && 'value' in at.node && at.node.value === false) return 'off'
  return reader.oneOf(at, `${context} proxy_protocol`, PROXY_VERSIONS)
}
