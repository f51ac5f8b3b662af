import { getServers } from 'node:dns'
import { formatAddress, parseAddress } from '../../config/address.js'
import { DEFAULTS, type BackendConfig, type DnsDiscoveryConfig } from '../../config/types.js'
import { errorMessage } from '../../errors.js'
import { dnsQuery, DnsQueryError, RCODE_NAMES, TYPE, type DnsRecord } from './dns-client.js'
import type { DiscoverySource, SourceEvents } from './source.js'

/** A TTL of 0 (dnsmasq's default for its hosts) must not turn into a query loop. */
const MIN_REFRESH_MS = 1_000

/**
 * `discovery.dns`: the backends are the addresses of a name (A or AAAA, all on `port`) or the
 * targets of its SRV records (each with its port; weights keep their ratios; records of a
 * higher priority number than the lowest are backups). Re-resolved every `interval`, and no
 * later than the smallest TTL of the records used. Any failure (no answer, SERVFAIL,
 * NXDOMAIN, an empty answer, an SRV target with no address) keeps the last good set.
 */
export class DnsSource implements DiscoverySource {
  readonly kind = 'dns' as const
  private timer: NodeJS.Timeout | undefined
  private closed = false

  constructor(
    private readonly cfg: DnsDiscoveryConfig,
    private readonly events: SourceEvents,
  ) {}

  async start(): Promise<void> {
    await this.round()
  }

  close(): void {
    this.closed = true
    clearTimeout(this.timer)
  }

  private async round(): Promise<void> {
    let nextMs = this.cfg.intervalMs
    try {
      const { backends, ttlMs } = await resolveBackends(this.cfg)
      if (this.closed) return
      this.events.set(backends)
      nextMs = Math.max(Math.min(this.cfg.intervalMs, MIN_REFRESH_MS), Math.min(this.cfg.intervalMs, ttlMs))
    } catch (err) {
      if (this.closed) return
      this.events.failed(`${this.cfg.type} ${this.cfg.name}: ${errorMessage(err)}`, 'SLUICE_ERR_DISCOVERY_DNS')
    }
    this.timer = setTimeout(() => void this.round(), nextMs)
    this.timer.unref()
  }
}

/** The servers to ask: the configured resolvers, else the system's (/etc/resolv.conf). */
export function resolversOf(cfg: DnsDiscoveryConfig): { host: string; port: number }[] {
  if (cfg.resolvers.length > 0) return cfg.resolvers
  const out: { host: string; port: number }[] = []
  for (const s of getServers()) {
    const hp = parseAddress(s.includes(']') || /^[\d.]+:\d+$/.test(s) ? s : s.includes(':') ? `[${s}]:53` : `${s}:53`, false)
    if (typeof hp !== 'string') out.push(hp)
  }
  return out.length > 0 ? out : [{ host: '127.0.0.1', port: 53 }]
}

/** Asks each server in turn until one answers; a SERVFAIL or NXDOMAIN is an answer (a failure). */
async function ask(cfg: DnsDiscoveryConfig, name: string, type: number): Promise<{ answers: DnsRecord[]; additionals: DnsRecord[] }> {
  const servers = resolversOf(cfg)
  const errors: string[] = []
  for (const server of servers) {
    try {
      const a = await dnsQuery(server, name, type, cfg.timeoutMs)
      if (a.rcode !== 0) throw new Error(`${name}: ${RCODE_NAMES[a.rcode] ?? `rcode ${a.rcode}`} from ${formatAddress(server.host, server.port)}`)
      return a
    } catch (err) {
      // No answer from this server (timeout, unreachable, malformed): ask the next one.
      if (!(err instanceof DnsQueryError)) throw err
      errors.push(errorMessage(err))
    }
  }
  throw new Error(errors.join('; '))
}

/** One resolution: the backends, and how long the answer may be trusted (the smallest TTL, ms). */
export async function resolveBackends(cfg: DnsDiscoveryConfig): Promise<{ backends: BackendConfig[]; ttlMs: number }> {
  const type = cfg.type === 'SRV' ? TYPE.SRV : cfg.type === 'AAAA' ? TYPE.AAAA : TYPE.A
  const { answers, additionals: extra } = await ask(cfg, cfg.name, type)
  let ttl = Infinity
  if (cfg.type !== 'SRV') {
    const out: BackendConfig[] = []
    for (const r of answers) {
      ttl = Math.min(ttl, r.ttl)
      if (r.data.type === cfg.type) pushUnique(out, backend(r.data.address, cfg.port, DEFAULTS.weight, false))
    }
    if (out.length === 0) throw new Error(`${cfg.name}: the answer has no ${cfg.type} record (an empty answer keeps the last good set)`)
    return { backends: out, ttlMs: ttl * 1000 }
  }
  const srv = answers.flatMap((r) => (r.data.type === 'SRV' ? [{ ...r.data, ttl: r.ttl }] : []))
  if (srv.length === 0) throw new Error(`${cfg.name}: the answer has no SRV record (an empty answer keeps the last good set)`)
  const maxWeight = Math.max(...srv.map((s) => s.weight))
  const minPriority = Math.min(...srv.map((s) => s.priority))
  const out: BackendConfig[] = []
  for (const s of srv) {
    ttl = Math.min(ttl, s.ttl)
    let addrs = extra.filter((r) => r.name === s.target && (r.data.type === 'A' || r.data.type === 'AAAA'))
    if (addrs.length === 0) {
      // No glue in the additional section: look the target up (A, then AAAA).
      addrs = await lookupTarget(cfg, s.target)
    }
    for (const a of addrs) {
      ttl = Math.min(ttl, a.ttl)
      if (a.data.type === 'A' || a.data.type === 'AAAA') pushUnique(out, backend(a.data.address, s.port, srvWeight(s.weight, maxWeight), s.priority > minPriority))
    }
  }
  return { backends: out, ttlMs: ttl * 1000 }
}

async function lookupTarget(cfg: DnsDiscoveryConfig, target: string): Promise<DnsRecord[]> {
  const failures: string[] = []
  for (const type of [TYPE.A, TYPE.AAAA]) {
    try {
      const rs = (await ask(cfg, target, type)).answers.filter((r) => r.data.type === 'A' || r.data.type === 'AAAA')
      if (rs.length > 0) return rs
    } catch (err) {
      failures.push(errorMessage(err))
    }
  }
  throw new Error(`SRV target ${target} of ${cfg.name} does not resolve to an address${failures.length > 0 ? ` (${failures.join('; ')})` : ''}`)
}

/** SRV weights keep their ratios, scaled into 1..1000 only when one exceeds 1000; 0 counts as 1. */
export function srvWeight(w: number, max: number): number {
  const scaled = max > DEFAULTS.maxWeight ? Math.round((w * DEFAULTS.maxWeight) / max) : w
  return Math.max(1, scaled)
}

function backend(host: string, port: number, weight: number, backup: boolean): BackendConfig {
  return { address: formatAddress(host, port), host, port, weight, backup, maxConnections: 0 }
}

function pushUnique(out: BackendConfig[], b: BackendConfig): void {
  if (!out.some((x) => x.address === b.address)) out.push(b)
}
