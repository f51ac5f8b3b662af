import type { BackendConfig, Config } from '../config/types.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics/metrics.js'
import type { DiscoverySourceKind } from '../upstream/discovery/discovery-config.js'
import { Membership } from '../upstream/discovery/membership.js'
import { PoolDiscovery } from './pool-discovery.js'

/** What the membership of the pools needs from the control plane. */
export interface MembersHost {
  readonly log: Logger
  readonly metrics: Metrics
  /** The running configuration as read from the file (each pool's own `backends`). */
  readonly config: Config
  /** Applies a pool's whole new member list as one diff; what changed, or undefined. */
  applyMembership(pool: string, backends: BackendConfig[]): { added: string[]; removed: string[]; changed: string[] } | undefined
}

export type ChangeSource = DiscoverySourceKind | 'admin'

/**
 * The membership of every pool, in the control plane: a Membership (the merge of `backends`,
 * discovery sets and run-time changes) and the discovery sources feeding it. Every change,
 * whatever its source, is merged and applied as one diff, logged with what was added and
 * removed, and counted (sluice_membership_changes_total{pool,source}). While a reload is
 * being applied, changes wait and are applied after it.
 */
export class PoolMembers {
  private readonly memberships = new Map<string, Membership>()
  private readonly discoveries = new Map<string, PoolDiscovery>()
  private building = true
  private held = 0
  private readonly pending = new Map<string, ChangeSource>()

  constructor(private readonly host: MembersHost) {}

  /** Start-up has built the pools from effective(); from now on changes are applied. */
  set started(v: boolean) {
    this.building = !v
    this.pending.clear()
  }

  /** Follows `config`: memberships and sources for its pools; resolves after new sources' first attempts. */
  async sync(config: Config): Promise<void> {
    const firsts: Promise<void>[] = []
    for (const pc of config.pools.values()) {
      const m = this.membershipOf(pc.name)
      let d = this.discoveries.get(pc.name)
      if (d === undefined && pc.discovery === undefined) continue
      if (d === undefined) {
        d = new PoolDiscovery(pc.name, m, this.host.log, this.host.metrics, (source) => this.changed(pc.name, source))
        this.discoveries.set(pc.name, d)
      }
      firsts.push(d.update(pc.discovery))
    }
    for (const [name, d] of this.discoveries) {
      if (config.pools.has(name)) continue
      d.close()
      this.discoveries.delete(name)
    }
    for (const name of this.memberships.keys()) if (!config.pools.has(name)) this.memberships.delete(name)
    await Promise.all(firsts)
  }

  /** `config` with each pool's backends replaced by its merged membership. */
  effective(config: Config): Config {
    const pools = new Map(config.pools)
    for (const [name, pc] of config.pools) {
      const m = this.memberships.get(name)
      if (m !== undefined) pools.set(name, { ...pc, backends: m.merge(pc.backends).map((x) => x.backend) })
    }
    return { ...config, pools }
  }

  /** An operator's PUT: adds `address` to `pool`, or changes the settings given. */
  put(pool: string, address: string, host: string, port: number, settings: { weight?: number; backup?: boolean; maxConnections?: number }): void {
    this.membershipOf(pool).put(address, host, port, settings)
    this.host.metrics.discoveryUpdatesTotal.inc({ pool, source: 'admin', result: 'success' })
    this.changed(pool, 'admin')
  }

  /** An operator's DELETE: takes `address` out of `pool` (it drains), whatever source names it. */
  delete(pool: string, address: string): void {
    this.membershipOf(pool).delete(address)
    this.host.metrics.discoveryUpdatesTotal.inc({ pool, source: 'admin', result: 'success' })
    this.changed(pool, 'admin')
  }

  /** A reload is being applied: changes wait for it. */
  hold(): void {
    this.held++
  }

  release(): void {
    this.held = Math.max(0, this.held - 1)
    if (this.held > 0) return
    const waiting = [...this.pending]
    this.pending.clear()
    for (const [pool, source] of waiting) this.apply(pool, source)
  }

  close(): void {
    for (const d of this.discoveries.values()) d.close()
    this.discoveries.clear()
  }

  private membershipOf(pool: string): Membership {
    let m = this.memberships.get(pool)
    if (m === undefined) {
      m = new Membership()
      this.memberships.set(pool, m)
    }
    return m
  }

  private changed(pool: string, source: ChangeSource): void {
    if (this.building || this.held > 0) {
      this.pending.set(pool, source)
      return
    }
    this.apply(pool, source)
  }

  private apply(pool: string, source: ChangeSource): void {
    const pc = this.host.config.pools.get(pool)
    const m = this.memberships.get(pool)
    if (pc === undefined || m === undefined) return
    const merged = m.merge(pc.backends).map((x) => x.backend)
    const r = this.host.applyMembership(pool, merged)
    if (r === undefined) return
    this.host.metrics.membershipChangesTotal.inc({ pool, source })
    const parts = [r.added.length > 0 ? `added ${r.added.join(', ')}` : '', r.removed.length > 0 ? `removed ${r.removed.join(', ')} (draining)` : '', r.changed.length > 0 ? `changed ${r.changed.join(', ')}` : ''].filter((x) => x !== '')
    this.host.log.info({ pool, source, added: r.added, removed: r.removed, changed: r.changed, backends: merged.length }, `pool ${pool} membership (${source}): ${parts.join('; ')}; ${merged.length} backend${merged.length === 1 ? '' : 's'} now`)
  }
}
