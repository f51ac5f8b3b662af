import { isIP } from 'node:net'
import { dirname, isAbsolute, resolve } from 'node:path'
import type { ConfigReader, Located } from '../../config/reader.js'
import type { DiscoveryConfig, DnsDiscoveryConfig, EtcdDiscoveryConfig, FileDiscoveryConfig } from '../../config/types.js'

export const DISCOVERY_DEFAULTS = {
  dnsIntervalMs: 10_000,
  dnsTimeoutMs: 2_000,
} as const

/** The kinds of discovery source, in the order their sets are merged after `backends`. */
export const DISCOVERY_SOURCES = ['dns', 'file', 'etcd'] as const
export type DiscoverySourceKind = (typeof DISCOVERY_SOURCES)[number]

/**
 * Reads a pool's `discovery` mapping (dns, file, etcd; any of them). `configFile` is where
 * the configuration came from: a relative discovery file path is taken from its directory.
 */
export function readDiscovery(reader: ConfigReader, at: Located, poolContext: string, configFile: string): DiscoveryConfig | undefined {
  const context = `${poolContext} discovery`
  const m = reader.map(at, DISCOVERY_SOURCES, context)
  if (m === undefined) return undefined
  if (m.keys().length === 0) {
    reader.report(at, `${context} is empty; give it dns, file or etcd (or remove it)`)
    return undefined
  }
  const out: DiscoveryConfig = {}
  let ok = true
  if (m.has('dns')) {
    const dns = readDns(reader, m.get('dns'), `${context}.dns`)
    if (dns === undefined) ok = false
    else out.dns = dns
  }
  if (m.has('file')) {
    const file = readFile(reader, m.get('file'), `${context}.file`, configFile)
    if (file === undefined) ok = false
    else out.file = file
  }
  if (m.has('etcd')) {
    const etcd = readEtcd(reader, m.get('etcd'), `${context}.etcd`)
    if (etcd === undefined) ok = false
    else out.etcd = etcd
  }
  return ok ? out : undefined
}

function readDns(reader: ConfigReader, at: Located, context: string): DnsDiscoveryConfig | undefined {
  const m = reader.map(at, ['name', 'type', 'port', 'interval', 'timeout', 'resolvers'], context)
  if (m === undefined || !m.require('name', context)) return undefined
  const name = reader.string(m.get('name'), `${context} name`, {
    pattern: /^[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$/,
    patternHint: 'is not a DNS name (labels of letters, digits, "-" and "_", separated by dots)',
  })
  const type = m.has('type') ? reader.oneOf(m.get('type'), `${context} type`, ['A', 'AAAA', 'SRV'] as const) : 'A'
  let port: number | undefined = 0
  if (type === 'SRV') {
    if (m.has('port')) reader.report(m.keyAt('port'), `${context}: type SRV takes each backend's port from its record; remove port`)
  } else if (type !== undefined) {
    port = m.require('port', `${context} (type ${type})`) ? reader.int(m.get('port'), `${context} port`, 1, 65535) : undefined
  }
  const intervalMs = m.has('interval') ? reader.duration(m.get('interval'), `${context} interval`, { minMs: 100 }) : DISCOVERY_DEFAULTS.dnsIntervalMs
  const timeoutMs = m.has('timeout') ? reader.duration(m.get('timeout'), `${context} timeout`, { minMs: 10 }) : DISCOVERY_DEFAULTS.dnsTimeoutMs
  const resolvers: { host: string; port: number }[] = []
  let resolversOk = true
  if (m.has('resolvers')) {
    const items = reader.seq(m.get('resolvers'), `${context} resolvers`)
    if (items === undefined) resolversOk = false
    for (const item of items ?? []) {
      const t = reader.text(item, `${context} resolvers item`)
      if (t === undefined) {
        resolversOk = false
        continue
      }
      const hp = reader.address(item, `${context} resolver (an IP address with its port, e.g. 127.0.0.1:8600)`, false)
      if (hp === undefined) {
        resolversOk = false
        continue
      }
      if (isIP(hp.host) === 0) {
        reader.report(item, `${context} resolver "${t}" must be an IP address, not a name (sluice would need a resolver to find it)`)
        resolversOk = false
        continue
      }
      resolvers.push(hp)
    }
  }
  if (name === undefined || type === undefined || port === undefined || intervalMs === undefined || timeoutMs === undefined || !resolversOk) return undefined
  return { name, type, port, intervalMs, timeoutMs, resolvers }
}

function readFile(reader: ConfigReader, at: Located, context: string, configFile: string): FileDiscoveryConfig | undefined {
  const m = reader.map(at, ['path'], context)
  if (m === undefined || !m.require('path', context)) return undefined
  const path = reader.string(m.get('path'), `${context} path`, { nonEmpty: true })
  if (path === undefined) return undefined
  return { path: isAbsolute(path) ? path : resolve(dirname(configFile), path) }
}

function readEtcd(reader: ConfigReader, at: Located, context: string): EtcdDiscoveryConfig | undefined {
  const m = reader.map(at, ['endpoints', 'prefix'], context)
  if (m === undefined) return undefined
  const hasEndpoints = m.require('endpoints', context)
  const hasPrefix = m.require('prefix', context)
  const endpoints: string[] = []
  let ok = hasEndpoints && hasPrefix
  if (hasEndpoints) {
    const items = reader.seq(m.get('endpoints'), `${context} endpoints`)
    if (items === undefined) ok = false
    else if (items.length === 0) {
      reader.report(m.get('endpoints'), `${context} endpoints is empty; give at least one, e.g. http://127.0.0.1:2379`)
      ok = false
    }
    for (const item of items ?? []) {
      const t = reader.text(item, `${context} endpoint`)
      if (t === undefined) {
        ok = false
        continue
      }
      let url: URL | undefined
      try {
        url = new URL(t)
      } catch {
        url = undefined
      }
      if (url === undefined || (url.protocol !== 'http:' && url.protocol !== 'https:') || url.host === '') {
        reader.report(item, `${context} endpoint "${t}" must be an http:// or https:// URL of etcd's client port, e.g. http://127.0.0.1:2379`)
        ok = false
        continue
      }
      endpoints.push(url.origin)
    }
  }
  const prefix = hasPrefix ? reader.string(m.get('prefix'), `${context} prefix`, { nonEmpty: true }) : undefined
  if (!ok || prefix === undefined) return undefined
  return { endpoints, prefix }
}
