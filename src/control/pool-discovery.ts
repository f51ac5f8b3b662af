import type { DiscoveryConfig } from '../config/types.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics/metrics.js'
import { DISCOVERY_SOURCES, type DiscoverySourceKind } from '../upstream/discovery/discovery-config.js'
import { DnsSource } from '../upstream/discovery/dns-source.js'
import { EtcdSource } from '../upstream/discovery/etcd-source.js'
import { FileSource } from '../upstream/discovery/file-source.js'
import type { Membership } from '../upstream/discovery/membership.js'
import type { DiscoverySource, SourceEvents } from '../upstream/discovery/source.js'

/** Start-up waits this long at most for each source's first answer before the listeners accept. */
const FIRST_RESULT_WAIT_MS = 5_000

interface Running {
  source: DiscoverySource
  /** The source's settings, to tell whether a reload changed them. */
  key: string
  failing: boolean
  lastFailure: string
}

/**
 * Runs the discovery sources of one pool in the control plane and feeds their sets into the
 * pool's Membership; `changed` is called after each new good set (the daemon then applies the
 * merged membership as one diff). A failing source keeps its last good set; it is logged
 * when it starts failing, when its failure changes and when it recovers, never once per
 * attempt, and every attempt is counted in sluice_discovery_updates_total{pool,source,result}.
 */
export class PoolDiscovery {
  private readonly running = new Map<DiscoverySourceKind, Running>()

  constructor(
    readonly pool: string,
    private readonly membership: Membership,
    private readonly log: Logger,
    private readonly metrics: Metrics,
    private readonly changed: (source: DiscoverySourceKind) => void,
  ) {}

  /**
   * Starts, restarts (changed settings) or stops each source to match `cfg`. A source that
   * keeps its settings keeps running; one whose settings changed keeps its last set until the
   * new one answers; one no longer configured takes its set out. Resolves once every started
   * source has had its first attempt (bounded).
   */
  async update(cfg: DiscoveryConfig | undefined): Promise<void> {
    const firsts: Promise<void>[] = []
    for (const kind of DISCOVERY_SOURCES) {
      const want = cfg?.[kind]
      const have = this.running.get(kind)
      const key = want === undefined ? '' : JSON.stringify(want)
      if (have !== undefined && have.key === key) continue
      have?.source.close()
      this.running.delete(kind)
      if (want === undefined) {
        if (have !== undefined) {
          this.membership.dropSource(kind)
          this.changed(kind)
        }
        continue
      }
      const r: Running = { source: undefined as unknown as DiscoverySource, key, failing: false, lastFailure: '' }
      const events = this.eventsFor(kind, r)
      r.source = kind === 'dns' ? new DnsSource(cfg!.dns!, events) : kind === 'file' ? new FileSource(cfg!.file!, events) : new EtcdSource(cfg!.etcd!, events)
      this.running.set(kind, r)
      firsts.push(bounded(r.source.start()))
    }
    await Promise.all(firsts)
  }

  close(): void {
    for (const r of this.running.values()) r.source.close()
    this.running.clear()
  }

  private eventsFor(kind: DiscoverySourceKind, r: Running): SourceEvents {
    return {
      set: (backends) => {
        if (this.running.get(kind) !== r) return
        this.metrics.discoveryUpdatesTotal.inc({ pool: this.pool, source: kind, result: 'success' })
        this.metrics.discoveryBackends.set({ pool: this.pool, source: kind }, backends.length)
        if (r.failing) {
          r.failing = false
          r.lastFailure = ''
          this.log.info({ pool: this.pool, source: kind, backends: backends.length }, `discovery ${kind} of pool ${this.pool} works again (${backends.length} backend${backends.length === 1 ? '' : 's'})`)
        }
        this.membership.setSource(kind, backends)
        this.changed(kind)
      },
      failed: (detail, code) => {
        if (this.running.get(kind) !== r) return
        this.metrics.discoveryUpdatesTotal.inc({ pool: this.pool, source: kind, result: 'failure' })
        if (r.failing && r.lastFailure === detail) return
        r.failing = true
        r.lastFailure = detail
        const kept = this.membership.sourceSet(kind)
        const keeps = kept === undefined ? 'it has given no backends yet' : `its last good set of ${kept.length} backend${kept.length === 1 ? '' : 's'} stays`
        this.log.warn({ code, pool: this.pool, source: kind, detail }, `discovery ${kind} of pool ${this.pool} failed; ${keeps}: ${detail}`)
      },
    }
  }
}

function bounded(p: Promise<void>): Promise<void> {
  let timer: NodeJS.Timeout | undefined
  const wait = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, FIRST_RESULT_WAIT_MS)
    timer.unref()
  })
  return Promise.race([p.catch(() => undefined), wait]).finally(() => clearTimeout(timer))
}
