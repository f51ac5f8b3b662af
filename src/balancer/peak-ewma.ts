import type { Backend } from '../upstream/backend.js'
import type { Balancer, BalancerFactory, Exclusion, PickContext } from './types.js'
import { WeightedSet, type Random } from './weighted-set.js'

export interface PeakEwmaOptions {
  /** Time constant of the moving average, ms: older samples weigh e^(-age/decay). */
  decayMs: number
}

export const DEFAULT_EWMA_DECAY_MS = 10_000
/** Cost of a backend with connections in flight but no latency measured yet: avoid it. */
const UNMEASURED_BUSY = 1e12

interface Latency {
  /** Moving average of connect latency, ms; -1 before the first sample. */
  ewma: number
  /** When `ewma` was last updated (the clock's ms). */
  stamp: number
}

/**
 * Peak-EWMA (Finagle, Linkerd): each backend's cost is a moving average of its connect
 * latency × (active connections + 1) ÷ weight, and a pick draws two backends and takes the
 * cheaper. "Peak": a sample above the average replaces it at once, so a backend that slows
 * down is avoided straight away, and the average decays towards zero while no samples come,
 * so an idle backend is tried again. Backends never measured cost 0 while idle (they are
 * tried first) and are avoided while they have connections in flight and no answer yet.
 */
export class PeakEwma implements Balancer {
  private readonly set = new WeightedSet<Latency>(() => ({ ewma: -1, stamp: 0 }))

  constructor(
    members: readonly Backend[],
    private readonly options: PeakEwmaOptions,
    private readonly random: Random = Math.random,
    private readonly now: () => number = () => performance.now(),
  ) {
    for (const b of members) this.onBackendUp(b)
  }

  pick(_ctx: PickContext, avoid?: Exclusion): Backend | undefined {
    const set = this.set
    const n = set.size
    if (n === 0) return undefined
    const i = set.draw(this.random())
    let j = n === 1 ? i : set.draw(this.random())
    if (j === i && n > 1) j = set.draw(this.random())
    const skipI = avoid !== undefined && avoid.has(set.items[i] as Backend)
    const skipJ = avoid !== undefined && avoid.has(set.items[j] as Backend)
    const now = this.now()
    if (skipI && skipJ) return this.cheapest(avoid as Exclusion, now)
    if (skipI) return set.items[j]
    if (skipJ) return set.items[i]
    return this.cost(j, now) < this.cost(i, now) ? set.items[j] : set.items[i]
  }

  /** The current cost of member `i`. */
  cost(i: number, now: number): number {
    const b = this.set.items[i] as Backend
    const l = this.set.data[i] as Latency
    if (l.ewma < 0) return b.active === 0 ? 0 : UNMEASURED_BUSY * (b.active + 1)
    const decayed = l.ewma * Math.exp(-Math.max(0, now - l.stamp) / this.options.decayMs)
    return (decayed * (b.active + 1)) / b.effectiveWeight
  }

  /** The moving average for `b` as of now (undefined before its first sample or when not a member). */
  latencyOf(b: Backend): number | undefined {
    const l = this.set.dataOf(b)
    if (l === undefined || l.ewma < 0) return undefined
    return l.ewma * Math.exp(-Math.max(0, this.now() - l.stamp) / this.options.decayMs)
  }

  onConnectLatency(b: Backend, ms: number): void {
    const l = this.set.dataOf(b)
    if (l === undefined) return
    const now = this.now()
    if (l.ewma < 0 || ms > l.ewma) {
      l.ewma = ms
    } else {
      const w = Math.exp(-Math.max(0, now - l.stamp) / this.options.decayMs)
      l.ewma = l.ewma * w + ms * (1 - w)
    }
    l.stamp = now
  }

  /** The cheapest member outside `avoid` (a scan, for when both draws were excluded). */
  private cheapest(avoid: Exclusion, now: number): Backend | undefined {
    let best = -1
    let bestCost = Infinity
    const items = this.set.items
    for (let i = 0; i < items.length; i++) {
      if (avoid.has(items[i] as Backend)) continue
      const c = this.cost(i, now)
      if (best < 0 || c < bestCost) {
        best = i
        bestCost = c
      }
    }
    return best < 0 ? undefined : items[best]
  }

  onBackendUp(b: Backend): void {
    this.set.add(b)
  }

  onBackendDown(b: Backend): void {
    this.set.remove(b)
  }

  onWeightChange(b: Backend): void {
    this.set.reweigh(b)
  }
}

export const peakEwmaFactory: BalancerFactory<PeakEwmaOptions> = {
  name: 'peak-ewma',
  needs: [],
  weighted: true,
  optionKeys: ['ewma_decay'],
  parseOptions(pool, reader, context) {
    if (!pool.has('ewma_decay')) return { decayMs: DEFAULT_EWMA_DECAY_MS }
    const ms = reader.duration(pool.get('ewma_decay'), `${context} ewma_decay`, { minMs: 10 })
    return { decayMs: ms ?? DEFAULT_EWMA_DECAY_MS }
  },
  create: (members, options) => new PeakEwma(members, options),
}
