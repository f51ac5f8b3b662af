import { readFileSync } from 'node:fs'
import { createSecureContext } from 'node:tls'
import type { ConfigReader, Located, MapView } from './reader.js'
import { DEFAULTS, type ListenerTlsConfig, type PoolTlsConfig, type TlsKeyPair } from './types.js'
import { errnoCode, errorMessage } from '../errors.js'
import { isSniPattern } from '../proxy/routes.js'

const LISTENER_TLS_KEYS = ['cert', 'key', 'certificates', 'min_version', 'ciphers', 'alpn', 'client_ca', 'watch_interval']
const POOL_TLS_KEYS = ['enabled', 'verify', 'ca', 'servername']
const MIN_VERSIONS = ['TLSv1.2', 'TLSv1.3'] as const

/** Reads a PEM file; a message naming the file and the reason when it cannot. */
export function readPem(file: string): Buffer | string {
  try {
    const pem = readFileSync(file)
    if (!pem.includes('-----BEGIN ')) return `${file} is not a PEM file (no "-----BEGIN" line)`
    return pem
  } catch (err) {
    const code = errnoCode(err)
    return `cannot read ${file}: ${code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : errorMessage(err)}`
  }
}

/** Reads a certificate and key and checks that they parse and belong together. */
export function loadPair(certFile: string, keyFile: string): TlsKeyPair | string {
  const cert = readPem(certFile)
  if (typeof cert === 'string') return cert
  const key = readPem(keyFile)
  if (typeof key === 'string') return key
  try {
    createSecureContext({ cert, key })
  } catch (err) {
    return `certificate ${certFile} with key ${keyFile}: ${errorMessage(err)}`
  }
  return { certFile, keyFile, cert, key }
}

/** `tls:` of a listener (TLS termination), with every file read and checked now. */
export function readListenerTls(reader: ConfigReader, at: Located, context: string): ListenerTlsConfig | undefined {
  const ctx = `${context} tls`
  const m = reader.map(at, LISTENER_TLS_KEYS, ctx)
  if (m === undefined) return undefined
  let ok = true
  const defaultPair = m.require('cert', ctx) && m.require('key', ctx) ? pairAt(reader, m, ctx) : undefined
  const certificates: ListenerTlsConfig['certificates'] = []
  if (m.has('certificates')) {
    for (const item of reader.seq(m.get('certificates'), `${ctx}.certificates`) ?? []) {
      const c = reader.map(item, ['names', 'cert', 'key'], `an item of ${ctx}.certificates`)
      if (c === undefined || !c.require('names', 'a certificate') || !c.require('cert', 'a certificate') || !c.require('key', 'a certificate')) {
        ok = false
        continue
      }
      const names = readNames(reader, c.get('names'), `${ctx}.certificates names`)
      const pair = pairAt(reader, c, ctx)
      if (names === undefined || pair === undefined) ok = false
      else certificates.push({ names, pair })
    }
  }
  const minVersion = m.has('min_version') ? reader.oneOf(m.get('min_version'), `${ctx}.min_version`, MIN_VERSIONS) : 'TLSv1.2'
  const ciphers = m.has('ciphers') ? reader.string(m.get('ciphers'), `${ctx}.ciphers`, { nonEmpty: true }) : undefined
  if (ciphers !== undefined) {
    try {
      createSecureContext({ ciphers })
    } catch (err) {
      reader.report(m.get('ciphers'), `${ctx}.ciphers "${ciphers}" is not a cipher list OpenSSL accepts: ${errorMessage(err)}`)
      ok = false
    }
  }
  let alpn: string[] | undefined
  if (m.has('alpn')) {
    alpn = []
    for (const item of reader.seq(m.get('alpn'), `${ctx}.alpn`) ?? []) {
      const p = reader.string(item, `${ctx}.alpn item`, { pattern: /^[\x21-\x7e]{1,255}$/, patternHint: 'must be a protocol name such as h2, http/1.1, imap' })
      if (p === undefined) ok = false
      else alpn.push(p)
    }
  }
  const clientCa = m.has('client_ca') ? pemAt(reader, m.get('client_ca'), `${ctx}.client_ca`) : undefined
  const watchIntervalMs = m.has('watch_interval') ? reader.duration(m.get('watch_interval'), `${ctx}.watch_interval`, { allowOff: true, minMs: 100 }) : DEFAULTS.tlsWatchIntervalMs
  if (!ok || defaultPair === undefined || minVersion === undefined || watchIntervalMs === undefined || (m.has('client_ca') && clientCa === undefined)) return undefined
  if (m.has('ciphers') && ciphers === undefined) return undefined
  return {
    defaultPair,
    certificates,
    minVersion,
    ...(ciphers !== undefined ? { ciphers } : {}),
    ...(alpn !== undefined ? { alpn } : {}),
    ...(clientCa !== undefined ? { clientCa } : {}),
    watchIntervalMs,
  }
}

/** `tls:` of a pool (TLS towards the backends); undefined when absent or `enabled: false`. */
export function readPoolTls(reader: ConfigReader, at: Located, context: string): PoolTlsConfig | undefined | false {
  const ctx = `${context} tls`
  const m = reader.map(at, POOL_TLS_KEYS, ctx)
  if (m === undefined) return false
  const enabled = m.has('enabled') ? reader.bool(m.get('enabled'), `${ctx}.enabled`) : true
  const verify = m.has('verify') ? reader.bool(m.get('verify'), `${ctx}.verify`) : true
  const ca = m.has('ca') ? pemAt(reader, m.get('ca'), `${ctx}.ca`) : undefined
  const servername = m.has('servername')
    ? reader.string(m.get('servername'), `${ctx}.servername`, { pattern: /^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})$/, patternHint: 'must be a host name (what the backend\'s certificate names)' })
    : undefined
  if (enabled === undefined || verify === undefined || (m.has('ca') && ca === undefined) || (m.has('servername') && servername === undefined)) return false
  if (!enabled) return undefined
  return { verify, ...(ca !== undefined ? { ca } : {}), ...(servername !== undefined ? { servername: servername.toLowerCase() } : {}) }
}

function readNames(reader: ConfigReader, at: Located, context: string): string[] | undefined {
  const items = reader.seq(at, context)
  if (items === undefined) return undefined
  if (items.length === 0) {
    reader.report(at, `${context} is empty; list the server names this certificate serves`)
    return undefined
  }
  const out: string[] = []
  for (const item of items) {
    const n = reader.string(item, context)
    if (n === undefined) return undefined
    const name = n.toLowerCase()
    if (!isSniPattern(name)) {
      reader.report(item, `${context}: "${n}" is not a host name or a wildcard such as *.example.com`)
      return undefined
    }
    out.push(name)
  }
  return out
}

function pairAt(reader: ConfigReader, m: MapView, ctx: string): TlsKeyPair | undefined {
  const certFile = reader.string(m.get('cert'), `${ctx} cert`, { nonEmpty: true })
  const keyFile = reader.string(m.get('key'), `${ctx} key`, { nonEmpty: true })
  if (certFile === undefined || keyFile === undefined) return undefined
  const pair = loadPair(certFile, keyFile)
  if (typeof pair === 'string') {
    reader.report(m.get('cert'), `${ctx}: ${pair}`)
    return undefined
  }
  return pair
}

function pemAt(reader: ConfigReader, at: Located, context: string): { file: string; pem: Buffer } | undefined {
  const file = reader.string(at, context, { nonEmpty: true })
  if (file === undefined) return undefined
  const pem = readPem(file)
  if (typeof pem === 'string') {
    reader.report(at, `${context}: ${pem}`)
    return undefined
  }
  try {
    createSecureContext({ ca: pem })
  } catch (err) {
    reader.report(at, `${context}: ${file} holds no usable CA certificate: ${errorMessage(err)}`)
    return undefined
  }
  return { file, pem }
}
