import type { ConfigReader, Located } from '../config/reader.js'
import { closest } from '../config/reader.js'
import type { HealthCheckConfig, PassiveConfig } from '../config/types.js'
import { findProbe, probeOptionKeys, probeTypes } from './registry.js'

const COMMON_KEYS = ['type', 'interval', 'timeout', 'rise', 'fall', 'jitter', 'port']

export const HEALTH_DEFAULTS = {
  type: 'tcp',
  intervalMs: 2000,
  timeoutMs: 1000,
  rise: 2,
  fall: 3,
  jitterMs: 0,
  maxFailures: 3,
  ejectionTimeMs: 30_000,
} as const

/**
 * Reads a pool's `health_check` mapping: the common keys, then the keys of its type (which
 * the type's probe factory parses). A key that belongs to another type is named as such.
 */
export function readHealthCheck(reader: ConfigReader, at: Located, poolContext: string): HealthCheckConfig | undefined {
  const context = `${poolContext} health_check`
  const owners = probeOptionKeys()
  const m = reader.map(at, [...COMMON_KEYS, ...owners.keys()], context)
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
  if (factory !== undefined) {
    for (const [key, types] of owners) {
      if (m.has(key) && !factory.optionKeys.includes(key)) {
        reader.report(m.keyAt(key), `"${key}" in ${context} applies to type ${types.join(' or ')}, not ${factory.type}`)
      }
    }
  }
  const intervalMs = m.has('interval') ? reader.duration(m.get('interval'), `${context} interval`, { minMs: 10 }) : HEALTH_DEFAULTS.intervalMs
  const timeoutMs = m.has('timeout') ? reader.duration(m.get('timeout'), `${context} timeout`, { minMs: 1 }) : Math.min(HEALTH_DEFAULTS.timeoutMs, intervalMs ?? HEALTH_DEFAULTS.timeoutMs)
  const rise = m.has('rise') ? reader.int(m.get('rise'), `${context} rise`, 1, 100) : HEALTH_DEFAULTS.rise
  const fall = m.has('fall') ? reader.int(m.get('fall'), `${context} fall`, 1, 100) : HEALTH_DEFAULTS.fall
  const jitterMs = m.has('jitter') ? reader.duration(m.get('jitter'), `${context} jitter`, { allowOff: true }) : HEALTH_DEFAULTS.jitterMs
  const port = m.has('port') ? reader.int(m.get('port'), `${context} port`, 1, 65535) : 0
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
  return { type, intervalMs, timeoutMs, rise, fall, jitterMs, port, options }
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
