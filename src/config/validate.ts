import { isIP } from 'node:net'
import type { Document } from 'yaml'
import { ConfigReader, closest, type Located, type MapView } from './reader.js'
import { formatAddress, type HostPort } from './address.js'
import { availableParallelism } from 'node:os'
import {
  DEFAULTS,
  type BackendConfig,
  type Config,
  type AnyListenerConfig,
  type DemoBackendConfig,
  type ListenerConfig,
  type LogLevel,
  type PoolConfig,
} from './types.js'
import { algorithmOptionKeys, findBalancer } from '../balancer/registry.js'
import { readAlgorithm } from '../balancer/algorithm-names.js'
import { readUdpSettings, refuseUdpSettingsOnTcp } from './udp-settings.js'
import { OPENING_KEYS, readOpening, readProxyProtocol } from '../proxy/proxy-settings.js'
import { readPoolTls } from './tls-settings.js'
import { readHealthCheck, readPassive } from '../health/health-config.js'
import { readAdmin } from '../admin/admin-config.js'
import { readDiscovery } from '../upstream/discovery/discovery-config.js'
import { ADMISSION_KEYS, readAccess, readLimits } from '../listener/admission-config.js'
import { QUEUE_KEYS, readQueue } from '../upstream/queue-config.js'
import { readProxyHeaderTimeout } from '../proxy/opening-timeouts.js'

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/
const NAME_HINT = 'must be 1-63 letters, digits, "_", "." or "-", starting with a letter or digit'
const LOG_LEVELS: readonly LogLevel[] = ['trace', 'debug', 'info', 'warn', 'error', 'fatal']

/**
 * Keys the configuration language names (see CONTRACT.md) whose features this version does
 * not have yet. They are refused with a clear message rather than silently ignored: a
 * security setting such as `access` that did nothing would be worse than an error.
 */
const NOT_YET: Readonly<Record<string, readonly string[]>> = {
  top: [],
  listener: [],
  pool: [],
}

const TOP_KEYS = ['workers', 'relay', 'shutdown_timeout', 'log', 'admin', 'listeners', 'pools', 'demo_backends']
const LISTENER_KEYS = ['name', 'protocol', 'listen', 'pool', 'max_connections', 'timeouts', 'udp', ...OPENING_KEYS, ...ADMISSION_KEYS]
const POOL_KEYS = ['algorithm', 'backends', 'connect_timeout', 'retries', 'slow_start', 'health_check', 'passive', 'proxy_protocol', 'tls', ...QUEUE_KEYS, 'discovery']
const BACKEND_KEYS = ['address', 'weight', 'backup', 'max_connections']

/** Checks a whole parsed document, reporting every problem to `reader`. */
export function validate(doc: Document, reader: ConfigReader): Config | undefined {
  const rootAt = reader.at(doc.contents ?? undefined, '')
  if (rootAt.node === undefined) {
    reader.report(rootAt, 'the configuration is empty; it needs at least "listeners" and "pools"')
    return undefined
  }
  const root = readMap(reader, rootAt, TOP_KEYS, 'top', 'the top level')
  if (root === undefined) return undefined

  const workers = root.has('workers') ? readWorkers(reader, root.get('workers')) : DEFAULTS.workers
  const relay = root.has('relay') ? reader.oneOf(root.get('relay'), 'relay (what carries established plain TCP connections)', ['auto', 'native', 'js'] as const) : DEFAULTS.relay
  const shutdownTimeoutMs = root.has('shutdown_timeout')
    ? reader.duration(root.get('shutdown_timeout'), 'shutdown_timeout', { allowOff: true })
    : DEFAULTS.shutdownTimeoutMs
  const log = readLog(reader, root)
  const admin = root.has('admin') ? readAdmin(reader, root.get('admin')) : undefined

  const pools = new Map<string, PoolConfig>()
  const declaredPools = new Set<string>()
  if (root.require('pools', 'the configuration')) readPools(reader, root.get('pools'), pools, declaredPools)
  const demoBackends = root.has('demo_backends') ? readDemoBackends(reader, root.get('demo_backends')) : []
  const listeners: ListenerConfig[] = []
  if (root.require('listeners', 'the configuration')) {
    readListeners(reader, root.get('listeners'), pools, declaredPools, demoBackends, listeners)
  }

  if (reader.issues.length > 0 || workers === undefined || relay === undefined || shutdownTimeoutMs === undefined || log === undefined) {
    return undefined
  }
  return { file: reader.file, workers, relay, shutdownTimeoutMs, log, listeners, pools, demoBackends, ...(admin !== undefined ? { admin } : {}) }
}

/** `reader.map` with the not-yet-available keys explained instead of called unknown. */
function readMap(reader: ConfigReader, at: Located, keys: readonly string[], kind: keyof typeof NOT_YET | 'other', context: string, extra: readonly string[] = []): MapView | undefined {
  const notYet = kind === 'other' ? [] : (NOT_YET[kind] ?? [])
  const view = reader.map(at, [...keys, ...extra, ...notYet], context)
  if (view === undefined) return undefined
  for (const key of notYet) {
    if (view.has(key)) {
      reader.report(view.keyAt(key), `"${key}" in ${context} is not available in this version of sluice yet; remove it to run this file`)
    }
  }
  return view
}

/** Node 22.12 is the first with `reusePort` for net and dgram, which several workers need. */
export function reusePortAvailable(version = process.versions.node): boolean {
  const [major = 0, minor = 0] = version.split('.').map(Number)
  return major > 22 || (major === 22 && minor >= 12)
}

/** `workers: N | auto`: data-plane threads; above 1 they share each port through SO_REUSEPORT. */
function readWorkers(reader: ConfigReader, at: Located): number | undefined {
  const t = reader.text(at, 'workers')
  if (t === undefined) return undefined
  // auto: one per CPU this process may use; 1 on a Node.js without reusePort.
  if (t === 'auto') return reusePortAvailable() ? availableParallelism() : 1
  const n = reader.int(at, 'workers (a number of worker threads, or auto: one per CPU)', 1, 256)
  if (n === undefined) return undefined
  if (n > 1 && !reusePortAvailable()) {
    reader.report(at, `workers: ${t} needs Node.js 22.12 or newer (SO_REUSEPORT for several threads on one port); this is Node.js ${process.versions.node}: use workers: 1 or a newer Node.js`)
    return undefined
  }
  return n
}

function readLog(reader: ConfigReader, root: MapView): Config['log'] | undefined {
  if (!root.has('log')) return { level: DEFAULTS.logLevel, accessLog: DEFAULTS.accessLog }
  const m = reader.map(root.get('log'), ['level', 'access_log'], 'log')
  if (m === undefined) return undefined
  const level = m.has('level') ? reader.oneOf(m.get('level'), 'log.level', LOG_LEVELS) : DEFAULTS.logLevel
  const accessLog = m.has('access_log') ? reader.bool(m.get('access_log'), 'log.access_log') : DEFAULTS.accessLog
  if (level === undefined || accessLog === undefined) return undefined
  return { level, accessLog }
}

function readPools(reader: ConfigReader, at: Located, out: Map<string, PoolConfig>, declared: Set<string>): void {
  const poolsView = reader.map(at, null, 'pools')
  if (poolsView === undefined) return
  const optionOwners = algorithmOptionKeys()
  for (const name of poolsView.keys()) {
    declared.add(name)
    const context = `pool "${name}"`
    if (!NAME.test(name)) reader.report(poolsView.keyAt(name), `pool name "${name}" ${NAME_HINT}`)
    const pool = readMap(reader, poolsView.get(name), POOL_KEYS, 'pool', context, [...optionOwners.keys()])
    if (pool === undefined) continue
    const algorithm = pool.has('algorithm')
      ? readAlgorithm(reader, pool.get('algorithm'), `${context} algorithm`)
      : DEFAULTS.algorithm
    const factory = algorithm === undefined ? undefined : findBalancer(algorithm)
    for (const [key, owners] of optionOwners) {
      if (factory !== undefined && pool.has(key) && !factory.optionKeys.includes(key)) {
        reader.report(pool.keyAt(key), `"${key}" in ${context} applies to algorithm ${owners.join(' or ')}, not ${factory.name}`)
      }
    }
    const algorithmOptions = factory?.parseOptions(pool, reader, context)
    const connectTimeoutMs = pool.has('connect_timeout')
      ? reader.duration(pool.get('connect_timeout'), `${context} connect_timeout`)
      : DEFAULTS.connectTimeoutMs
    const retries = pool.has('retries') ? reader.int(pool.get('retries'), `${context} retries`, 0, 100) : DEFAULTS.retries
    const slowStartMs = pool.has('slow_start') ? reader.duration(pool.get('slow_start'), `${context} slow_start`, { allowOff: true }) : 0
    if (slowStartMs !== undefined && slowStartMs > 0 && factory !== undefined && !factory.weighted) {
      reader.report(pool.keyAt('slow_start'), `${context}: slow_start ramps backends' weights, which algorithm ${factory.name} does not use; remove slow_start or pick a weighted algorithm`)
    }
    // A pool with discovery may leave backends out: its sources give them.
    const discovery = pool.has('discovery') ? readDiscovery(reader, pool.get('discovery'), context, reader.file) : undefined
    const backends = pool.has('discovery') && !pool.has('backends') ? [] : pool.require('backends', context) ? readBackends(reader, pool.get('backends'), context) : undefined
    if (pool.has('discovery') && discovery === undefined) continue
    const proxyProtocol = readProxyProtocol(reader, pool, context)
    const healthCheck = pool.has('health_check') ? readHealthCheck(reader, pool.get('health_check'), context, proxyProtocol) : undefined
    const passive = pool.has('passive') ? readPassive(reader, pool.get('passive'), context) : undefined
    if ((pool.has('health_check') && healthCheck === undefined) || (pool.has('passive') && passive === undefined)) continue
    const tls = pool.has('tls') ? readPoolTls(reader, pool.get('tls'), context) : undefined
    if (proxyProtocol === undefined || tls === false) continue
    const queue = readQueue(reader, pool, context)
    if (queue === undefined) continue
    if (algorithm === undefined || connectTimeoutMs === undefined || retries === undefined || backends === undefined || slowStartMs === undefined) continue
    out.set(name, { name, algorithm, algorithmOptions, backends, connectTimeoutMs, retries, slowStartMs, healthCheck, passive, proxyProtocol, ...(tls !== undefined ? { tls } : {}), ...(discovery !== undefined ? { discovery } : {}), ...queue })
  }
}

/** A list of backends in the shape of a pool's `backends` (also what a discovery file holds). */
export function readBackends(reader: ConfigReader, at: Located, context: string): BackendConfig[] | undefined {
  const items = reader.seq(at, `${context} backends`)
  if (items === undefined) return undefined
  if (items.length === 0) {
    reader.report(at, `${context} has an empty backends list; give it at least one backend address`)
    return undefined
  }
  const out: BackendConfig[] = []
  const seen = new Set<string>()
  let ok = true
  for (const item of items) {
    const b = readBackend(reader, item, context)
    if (b === undefined) {
      ok = false
      continue
    }
    if (seen.has(b.address)) {
      reader.report(item, `${context} lists backend ${b.address} twice; give each backend once (use weight for a larger share)`)
      ok = false
    }
    seen.add(b.address)
    out.push(b)
  }
  return ok ? out : undefined
}

function readBackend(reader: ConfigReader, at: Located, context: string): BackendConfig | undefined {
  const bctx = `a backend of ${context}`
  let addrAt = at
  let m: MapView | undefined
  if (at.node !== undefined && 'items' in at.node) {
    m = reader.map(at, BACKEND_KEYS, bctx)
    if (m === undefined || !m.require('address', bctx)) return undefined
    addrAt = m.get('address')
  }
  const hp = reader.address(addrAt, `${context} backend address`, false)
  const weight = m?.has('weight') ? reader.int(m.get('weight'), `${bctx} weight`, 1, DEFAULTS.maxWeight) : DEFAULTS.weight
  const backup = m?.has('backup') ? reader.bool(m.get('backup'), `${bctx} backup`) : false
  const maxConnections = m?.has('max_connections') ? reader.int(m.get('max_connections'), `${bctx} max_connections`, 0, 10_000_000) : 0
  if (hp === undefined || weight === undefined || backup === undefined || maxConnections === undefined) return undefined
  return { address: formatAddress(hp.host, hp.port), host: hp.host, port: hp.port, weight, backup, maxConnections }
}

function readDemoBackends(reader: ConfigReader, at: Located): DemoBackendConfig[] {
  const items = reader.seq(at, 'demo_backends') ?? []
  const out: DemoBackendConfig[] = []
  for (const item of items) {
    const m = reader.map(item, ['name', 'listen', 'protocol'], 'a demo backend')
    if (m === undefined || !m.require('listen', 'a demo backend')) continue
    const hp = reader.address(m.get('listen'), 'demo backend listen', true)
    const name = m.has('name') ? reader.string(m.get('name'), 'demo backend name', { nonEmpty: true }) : undefined
    const protocol = m.has('protocol') ? reader.oneOf(m.get('protocol'), 'demo backend protocol', ['tcp', 'udp'] as const) : 'tcp'
    if (hp === undefined || protocol === undefined) continue
    const listen = formatAddress(hp.host, hp.port)
    out.push({ name: name ?? listen, host: hp.host === '' ? '127.0.0.1' : hp.host, port: hp.port, listen, protocol })
  }
  return out
}

function readListeners(
  reader: ConfigReader,
  at: Located,
  pools: Map<string, PoolConfig>,
  declaredPools: ReadonlySet<string>,
  demo: readonly DemoBackendConfig[],
  out: AnyListenerConfig[],
): void {
  const items = reader.seq(at, 'listeners')
  if (items === undefined) return
  if (items.length === 0) reader.report(at, 'listeners is empty; sluice needs at least one listener')
  const names = new Set<string>()
  // TCP and UDP have separate port spaces: a udp and a tcp listener may share a port.
  const bound: { hp: HostPort; what: string; proto: 'tcp' | 'udp' }[] = demo.map((d) => ({ hp: d, what: `demo backend "${d.name}"`, proto: d.protocol }))
  for (const item of items) {
    const m = readMap(reader, item, LISTENER_KEYS, 'listener', 'a listener')
    if (m === undefined) continue
    const okName = m.require('name', 'a listener')
    const name = okName ? reader.string(m.get('name'), 'listener name', { pattern: NAME, patternHint: NAME_HINT }) : undefined
    const context = `listener "${name ?? '?'}"`
    if (name !== undefined) {
      if (names.has(name)) reader.report(m.get('name'), `listener name "${name}" is used twice; names must be unique`)
      names.add(name)
    }
    const protocol = m.has('protocol') ? reader.oneOf(m.get('protocol'), `${context} protocol`, ['tcp', 'udp'] as const) : 'tcp'
    const hp = m.require('listen', context) ? reader.address(m.get('listen'), `${context} listen`, true) : undefined
    if (hp !== undefined && hp.port !== 0) {
      const proto = protocol ?? 'tcp'
      const clash = bound.find((b) => b.proto === proto && b.hp.port === hp.port && overlaps(b.hp.host, hp.host))
      if (clash) reader.report(m.get('listen'), `${context} listens on port ${hp.port}, already taken by ${clash.what}`)
      bound.push({ hp, what: context, proto })
    }
    let pool: string | undefined
    if (m.require('pool', context)) {
      pool = reader.string(m.get('pool'), `${context} pool`)
      if (pool !== undefined && !pools.has(pool)) {
        const near = closest(pool, [...declaredPools])
        const known = declaredPools.size > 0 ? `; defined pools: ${[...declaredPools].join(', ')}` : ''
        // A pool that exists but failed its own checks was already reported; do not pile on.
        if (!declaredPools.has(pool)) {
          reader.report(m.get('pool'), `${context} uses pool "${pool}", which is not defined under pools${near ? `; did you mean "${near}"?` : known}`)
        }
        pool = undefined
      }
    }
    if (protocol === 'udp') {
      refuseOpeningOnUdp(reader, m, context, pool === undefined ? undefined : pools.get(pool))
      const udp = readUdpSettings(reader, m, context, LISTENER_KEYS)
      const access = readAccess(reader, m, context)
      const limits = readLimits(reader, m, context, 'udp', udp?.mode)
      if (name === undefined || hp === undefined || pool === undefined || udp === undefined || access === false || limits === false) continue
      out.push({ name, protocol, host: hp.host, port: hp.port, listen: formatAddress(hp.host, hp.port), pool, udp, ...(access !== undefined ? { access } : {}), ...(limits !== undefined ? { limits } : {}) })
      continue
    }
    refuseUdpSettingsOnTcp(reader, m, context)
    const maxConnections = m.has('max_connections')
      ? reader.int(m.get('max_connections'), `${context} max_connections`, 1, 10_000_000)
      : DEFAULTS.maxConnections
    const timeouts = readTimeouts(reader, m, context)
    const opening = readOpening(reader, m, context, declaredPools)
    const access = readAccess(reader, m, context)
    const limits = readLimits(reader, m, context, 'tcp')
    if (name === undefined || protocol !== 'tcp' || hp === undefined || pool === undefined || maxConnections === undefined || timeouts === undefined || opening === undefined) continue
    if (access === false || limits === false) continue
    out.push({
      name,
      protocol,
      host: hp.host,
      port: hp.port,
      listen: formatAddress(hp.host, hp.port),
      pool,
      maxConnections,
      timeouts,
      ...opening,
      ...(access !== undefined ? { access } : {}),
      ...(limits !== undefined ? { limits } : {}),
    })
  }
}

/** Opening keys that only mean something on TCP, and pool settings a UDP listener cannot honour. */
function refuseOpeningOnUdp(reader: ConfigReader, m: MapView, context: string, pool: PoolConfig | undefined): void {
  for (const key of ['routes', 'sni_peek_timeout', 'proxy_protocol_trusted']) {
    if (m.has(key)) reader.report(m.keyAt(key), `"${key}" does not apply to ${context}, which is protocol udp; remove it`)
  }
  if (pool?.proxyProtocol === 'v1') {
    reader.report(m.get('pool'), `${context} is udp, but its pool "${pool.name}" sends proxy_protocol v1, which exists only for TCP; use v2 (it has a DGRAM form)`)
  }
  if (pool?.tls !== undefined) {
    reader.report(m.get('pool'), `${context} is udp, but its pool "${pool.name}" has tls; sluice does not speak DTLS to backends`)
  }
}

function readTimeouts(reader: ConfigReader, m: MapView, context: string): ListenerConfig['timeouts'] | undefined {
  if (!m.has('timeouts')) return { idleMs: DEFAULTS.idleMs, handshakeMs: DEFAULTS.handshakeMs }
  const t = reader.map(m.get('timeouts'), ['idle', 'handshake', 'proxy_header'], `${context} timeouts`)
  if (t === undefined) return undefined
  const idleMs = t.has('idle') ? reader.duration(t.get('idle'), `${context} timeouts.idle`, { allowOff: true }) : DEFAULTS.idleMs
  const handshakeMs = t.has('handshake') ? reader.duration(t.get('handshake'), `${context} timeouts.handshake`) : DEFAULTS.handshakeMs
  const proxyHeaderMs = readProxyHeaderTimeout(reader, m, t, context)
  if (idleMs === undefined || handshakeMs === undefined || proxyHeaderMs === false) return undefined
  return { idleMs, handshakeMs, ...(proxyHeaderMs !== undefined ? { proxyHeaderMs } : {}) }
}

/** Whether two listen hosts on the same port would collide (wildcards cover their family). */
function overlaps(a: string, b: string): boolean {
  if (a === b || a === '' || b === '' || a === '::' || b === '::') return true
  const v4 = (h: string): boolean => isIP(h) === 4
  return (a === '0.0.0.0' && v4(b)) || (b === '0.0.0.0' && v4(a))
}
