import type { BackendConfig } from '../../config/types.js'
import { DISCOVERY_SOURCES, type DiscoverySourceKind } from './discovery-config.js'

/** What an operator asked through the admin API for one address. */
export type AdminEntry =
  | { kind: 'put'; weight?: number; backup?: boolean; maxConnections?: number; host: string; port: number }
  | { kind: 'delete' }

/** Where a backend of the merged set came from, for the log and the status. */
export type MemberSource = 'backends' | DiscoverySourceKind | 'admin'

/**
 * The membership of one pool, merged from its layers:
 *
 * 1. the configuration's `backends` (passed in: a reload replaces it);
 * 2. each discovery source's last good set (dns, file, etcd; a failing source keeps its set);
 * 3. the operator's run-time changes (PUT adds a backend or changes its settings, DELETE
 *    takes it out whatever source names it), which outlive reloads and discovery updates
 *    until another PUT/DELETE or a restart.
 *
 * An address named by several layers takes the settings of the first one that names it, in
 * the order above, then any settings a PUT gave it. The merged list keeps that order
 * (`backends` first), which only algorithm `first` looks at; hashes use the addresses.
 */
export class Membership {
  private readonly sets = new Map<DiscoverySourceKind, BackendConfig[]>()
  private readonly admin = new Map<string, AdminEntry>()

  /** A source's new set (its last good one until the next). */
  setSource(kind: DiscoverySourceKind, set: readonly BackendConfig[]): void {
    this.sets.set(kind, [...set])
  }

  /** A source no longer configured: its set leaves the membership. */
  dropSource(kind: DiscoverySourceKind): void {
    this.sets.delete(kind)
  }

  hasSource(kind: DiscoverySourceKind): boolean {
    return this.sets.has(kind)
  }

  sourceSet(kind: DiscoverySourceKind): readonly BackendConfig[] | undefined {
    return this.sets.get(kind)
  }

  /** PUT: adds `address` (or changes the settings given), overriding what the sources say. */
  put(address: string, host: string, port: number, settings: { weight?: number; backup?: boolean; maxConnections?: number }): void {
    const prev = this.admin.get(address)
    const base = prev?.kind === 'put' ? prev : { kind: 'put' as const, host, port }
    this.admin.set(address, {
      ...base,
      ...(settings.weight !== undefined ? { weight: settings.weight } : {}),
      ...(settings.backup !== undefined ? { backup: settings.backup } : {}),
      ...(settings.maxConnections !== undefined ? { maxConnections: settings.maxConnections } : {}),
    })
  }

  /** DELETE: takes `address` out, whichever layer names it. */
  delete(address: string): void {
    this.admin.set(address, { kind: 'delete' })
  }

  /** The merged list for the configuration's `backends`, each with where it came from. */
  merge(backends: readonly BackendConfig[]): { backend: BackendConfig; source: MemberSource }[] {
    const out = new Map<string, { backend: BackendConfig; source: MemberSource }>()
    for (const b of backends) if (!out.has(b.address)) out.set(b.address, { backend: b, source: 'backends' })
    for (const kind of DISCOVERY_SOURCES) {
      for (const b of this.sets.get(kind) ?? []) if (!out.has(b.address)) out.set(b.address, { backend: b, source: kind })
    }
    for (const [address, e] of this.admin) {
      if (e.kind === 'delete') {
        out.delete(address)
        continue
      }
      const have = out.get(address)
      const base: BackendConfig = have?.backend ?? { address, host: e.host, port: e.port, weight: 1, backup: false, maxConnections: 0 }
      out.set(address, {
        backend: { ...base, weight: e.weight ?? base.weight, backup: e.backup ?? base.backup, maxConnections: e.maxConnections ?? base.maxConnections },
        source: have?.source ?? 'admin',
      })
    }
    return [...out.values()]
  }
}

/** Whether two backend lists are the same set with the same settings (order aside). */
export function sameBackends(a: readonly BackendConfig[], b: readonly BackendConfig[]): boolean {
  if (a.length !== b.length) return false
  const byAddress = new Map(a.map((x) => [x.address, x]))
  for (const y of b) {
    const x = byAddress.get(y.address)
    if (x === undefined || x.weight !== y.weight || x.backup !== y.backup || x.maxConnections !== y.maxConnections) return false
  }
  return true
}
