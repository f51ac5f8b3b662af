import type { ConfigReader, Located, MapView } from '../config/reader.js'
import type { AccessConfig, SourceLimitsConfig } from '../config/types.js'
import { parseCidr } from '../config/cidr.js'

/** The listener keys this module reads. */
export const ADMISSION_KEYS = ['access', 'limits'] as const

const LIMIT_KEYS = ['per_source_connections', 'per_source_rate', 'per_source_datagrams']
const RATE = /^(\d+(?:\.\d+)?)\s*\/\s*(s|sec|second|m|min|minute)$/

/** `access: {allow, deny}` of a listener, or undefined when absent; false after an error. */
export function readAccess(reader: ConfigReader, m: MapView, context: string): AccessConfig | undefined | false {
  if (!m.has('access')) return undefined
  const a = reader.map(m.get('access'), ['allow', 'deny'], `${context} access`)
  if (a === undefined) return false
  let ok = true
  const out: AccessConfig = {}
  for (const key of ['allow', 'deny'] as const) {
    if (!a.has(key)) continue
    const list = cidrList(reader, a.get(key), `${context} access.${key}`)
    if (list === undefined) ok = false
    else out[key] = list
  }
  if (ok && out.allow !== undefined && out.allow.length === 0) {
    reader.report(a.get('allow'), `${context} access.allow is empty, which would refuse every client; list the CIDRs to allow, or leave allow out to allow every address`)
    ok = false
  }
  return ok ? out : false
}

function cidrList(reader: ConfigReader, at: Located, context: string): string[] | undefined {
  const items = reader.seq(at, context)
  if (items === undefined) return undefined
  const out: string[] = []
  let ok = true
  for (const item of items) {
    const t = reader.string(item, context)
    if (t === undefined) {
      ok = false
      continue
    }
    const c = parseCidr(t)
    if (typeof c === 'string') {
      reader.report(item, `${context}: ${c}`)
      ok = false
      continue
    }
    out.push(c.text)
  }
  return ok ? out : undefined
}

/**
 * `limits:` of a listener, or undefined when absent; false after an error. `per_source_datagrams`
 * is for udp listeners only; in udp.mode dns (no sessions) only it applies.
 */
export function readLimits(reader: ConfigReader, m: MapView, context: string, protocol: 'tcp' | 'udp', udpMode?: 'session' | 'dns'): SourceLimitsConfig | undefined | false {
  if (!m.has('limits')) return undefined
  const l = reader.map(m.get('limits'), LIMIT_KEYS, `${context} limits`)
  if (l === undefined) return false
  let ok = true
  const out: SourceLimitsConfig = {}
  if (l.has('per_source_connections')) {
    const what = protocol === 'tcp' ? 'open connections' : 'live sessions'
    const n = reader.int(l.get('per_source_connections'), `${context} limits.per_source_connections (${what} per client address)`, 1, 1_000_000)
    if (n === undefined) ok = false
    else out.perSourceConnections = n
  }
  if (l.has('per_source_rate')) {
    const r = readRate(reader, l.get('per_source_rate'), `${context} limits.per_source_rate`)
    if (r === undefined) ok = false
    else out.perSourceRate = r
  }
  if (l.has('per_source_datagrams')) {
    if (protocol === 'tcp') {
      reader.report(l.keyAt('per_source_datagrams'), `${context} limits.per_source_datagrams applies to udp listeners only; a tcp listener limits new connections with per_source_rate`)
      ok = false
    } else {
      const r = readRate(reader, l.get('per_source_datagrams'), `${context} limits.per_source_datagrams`)
      if (r === undefined) ok = false
      else out.perSourceDatagrams = r
    }
  }
  if (protocol === 'udp' && udpMode === 'dns') {
    for (const key of ['per_source_connections', 'per_source_rate']) {
      if (l.has(key)) {
        reader.report(l.keyAt(key), `${context} limits.${key} counts udp sessions, which udp.mode dns does not keep; limit each source's queries with per_source_datagrams`)
        ok = false
      }
    }
  }
  return ok ? out : false
}

/** `100/s` or `600/m`: a rate in events per second. */
function readRate(reader: ConfigReader, at: Located, context: string): number | undefined {
  const t = reader.text(at, context)
  if (t === undefined) return undefined
  const r = RATE.exec(t.trim())
  if (r === null) {
    reader.report(at, `${context} must be a rate such as 100/s or 600/m, not "${t}"`)
    return undefined
  }
  const n = Number(r[1])
  const perSecond = r[2]!.startsWith('s') ? n : n / 60
  if (!(perSecond > 0) || perSecond > 10_000_000) {
    reader.report(at, `${context} is ${t}; it must be more than 0 and at most 10000000/s`)
    return undefined
  }
  return perSecond
}
