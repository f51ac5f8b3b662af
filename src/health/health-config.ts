import type { ConfigReader, Located, MapView } from '../config/reader.js'
import { closest } from '../config/reader.js'
import type { HealthCheckConfig, PassiveConfig, ProxyProtocolVersion } from '../config/types.js'
import type { ProbeFactory } from './probe.js'
import { findProbe, probeOptionKeys, probeTypes } from './registry.js'

const COMMON_KEYS = ['type', 'interval', 'timeout', 'rise', 'fall', 'jitter', 'port', 'send_proxy']

export const HEALTH_DEFAULTS = {
  type: 'tcp',
  intervalMs: 2000,
  timeoutMs: 1000,
  rise: 2,
  fall: 3,
  /** The default jitter, as a fraction of the interval. */
  jitterFraction: 0.1,
  maxFailures: 3,
  ejectionTimeMs: 30_000,
} as const

/**
 * Reads a pool's `health_check` mapping: the common keys, then the keys of its type (which
 * the type's probe factory parses). A key that belongs to another type is named as such; an
 * unknown one is answered with the keys this type takes. `proxyProtocol` is the pool's
 * `proxy_protocol`, which `send_proxy` follows by default.
 */
export function readHealthCheck(reader: ConfigReader, at: Located, poolContext: string, proxyProtocol: ProxyProtocolVersion = 'off'): HealthCheckConfig | undefined {
  const context = `${poolContext} health_check`
  const m = reader.map(at, null, context)
  if (m === undefined) return undefined
  let type: string | undefined = HEALTH_DEFAULTS.type
  if (m.has('type')) {
    const t = reader.text(m.get('type'), `${context} type`)
    type = t !== undefined && findProbe(t) !== undefined ? t : undefined
    if (t !== undefined && type === undefined) {
      const near = closest(t, probeTypes())
      reader.report(m.get('type'), `${context} type "${t}" is not one of ${probeTypes().join(', ')}${near ? `; did you mean "${near}"?` : ''}`)
    }
  }
  const factory = type === undefined ? undefined : findProbe(type)
  checkKeys(reader, m, context, factory, m.has('type') && type === undefined)
  const intervalMs = m.has('interval') ? reader.duration(m.get('interval'), `${context} interval`, { minMs: 10 }) : HEALTH_DEFAULTS.intervalMs
  const timeoutMs = m.has('timeout') ? reader.duration(m.get('timeout'), `${context} timeout`, { minMs: 1 }) : Math.min(HEALTH_DEFAULTS.timeoutMs, intervalMs ?? HEALTH_DEFAULTS.timeoutMs)
  const rise = m.has('rise') ? reader.int(m.get('rise'), `${context} rise`, 1, 100) : HEALTH_DEFAULTS.rise
  const fall = m.has('fall') ? reader.int(m.get('fall'), `${context} fall`, 1, 100) : HEALTH_DEFAULTS.fall
  const jitterMs = m.has('jitter')
    ? reader.duration(m.get('jitter'), `${context} jitter`, { allowOff: true })
    : intervalMs === undefined ? undefined : Math.round(intervalMs * HEALTH_DEFAULTS.jitterFraction)
  const port = m.has('port') ? reader.int(m.get('port'), `${context} port`, 1, 65535) : 0
  const sendProxyAsked = m.has('send_proxy') ? reader.bool(m.get('send_proxy'), `${context} send_proxy`) : undefined
  if (intervalMs !== undefined && jitterMs !== undefined && jitterMs > intervalMs) {
    reader.report(m.get('jitter'), `${context} jitter must not exceed interval (a random extra delay of 0 to jitter is added to each interval)`)
    return undefined
  }
  if (intervalMs !== undefined && timeoutMs !== undefined && timeoutMs > intervalMs) {
    reader.report(m.get('timeout'), `${context} timeout must not exceed interval; a probe that outlasts its interval would delay the next one`)
    return undefined
  }
  const options = factory?.parseOptions(m, reader, context)
  if (factory === undefined || type === undefined || options === undefined || intervalMs === undefined || timeoutMs === undefined || rise === undefined || fall === undefined || jitterMs === undefined || port === undefined) {
    return undefined
  }
  if (m.has('send_proxy') && sendProxyAsked === undefined) return undefined
  const sendProxy = readSendProxy(reader, m, context, proxyProtocol, sendProxyAsked, port !== 0, factory.datagram?.(options) ?? false)
  if (sendProxy === false) return undefined
  return { type, intervalMs, timeoutMs, rise, fall, jitterMs, port, ...(sendProxy !== undefined ? { sendProxy } : {}), options }
}

/**
 * Which PROXY header the probes send: by default the pool's own (`proxy_protocol`), as
 * HAProxy's `check-send-proxy` does, except when the check goes to another `port` (a health
 * endpoint apart from the service rarely expects one); `send_proxy` says otherwise. False
 * when the setting cannot be honoured (reported).
 */
function readSendProxy(reader: ConfigReader, m: MapView, context: string, pool: ProxyProtocolVersion, asked: boolean | undefined, ownPort: boolean, datagram: boolean): 'v1' | 'v2' | undefined | false {
  if (asked === false) return undefined
  if (asked === undefined) return pool === 'off' || ownPort || (pool === 'v1' && datagram) ? undefined : pool
  if (pool === 'off') {
    reader.report(m.get('send_proxy'), `${context} send_proxy: true needs the pool's proxy_protocol (v1 or v2), whose version the checks send; set proxy_protocol, or remove send_proxy`)
    return false
  }
  if (pool === 'v1' && datagram) {
    reader.report(m.get('send_proxy'), `${context} send_proxy: true cannot be honoured over UDP with proxy_protocol v1, which exists only for TCP; use transport: tcp, or proxy_protocol v2`)
    return false
  }
  return pool
}

/**
 * Reports every key the check does not take: one of another type ("applies to type http, not
 * tcp"), or an unknown one, with the nearest key of this type (or of any type) or else the
 * keys this type takes.
 */
function checkKeys(reader: ConfigReader, m: MapView, context: string, factory: ProbeFactory | undefined, typeWrong: boolean): void {
  const owners = probeOptionKeys()
  const allowed = factory === undefined ? [...COMMON_KEYS, ...owners.keys()] : [...COMMON_KEYS, ...factory.optionKeys]
  for (const key of m.keys()) {
    if (allowed.includes(key)) continue
    const types = owners.get(key)
    if (types !== undefined && factory !== undefined) {
      reader.report(m.keyAt(key), `"${key}" in ${context} applies to type ${types.join(' or ')}, not ${factory.type}`)
      continue
    }
    // With a misspelt type, the keys it would take are unknown: say only what is wrong with this one.
    if (typeWrong && types !== undefined) continue
    const near = closest(key, allowed)
    const other = near === undefined ? closest(key, [...owners.keys()]) : undefined
    const hint = near !== undefined
      ? `; did you mean "${near}"?`
      : other !== undefined
        ? `; did you mean "${other}" (a key of type ${(owners.get(other) ?? []).join(' or ')})?`
        : factory !== undefined
          ? `; type ${factory.type} takes ${allowed.join(', ')}`
          : `; the common keys are ${COMMON_KEYS.join(', ')}`
    reader.report(m.keyAt(key), `unknown key "${key}" in ${context}${hint}`)
  }
}

/** Reads a pool's `passive` mapping (ejection after consecutive connect failures). */
export function readPassive(reader: ConfigReader, at: Located, poolContext: string): PassiveConfig | undefined {
  const context = `${poolContext} passive`
  const m = reader.map(at, ['max_failures', 'ejection_time'], context)
  if (m === undefined) return undefined
  const maxFailures = m.has('max_failures') ? reader.int(m.get('max_failures'), `${context} max_failures`, 1, 1000) : HEALTH_DEFAULTS.maxFailures
  const ejectionTimeMs = m.has('ejection_time') ? reader.duration(m.get('ejection_time'), `${context} ejection_time`, { minMs: 10 }) : HEALTH_DEFAULTS.ejectionTimeMs
  if (maxFailures === undefined || ejectionTimeMs === undefined) return undefined
  return { maxFailures, ejectionTimeMs }
}
