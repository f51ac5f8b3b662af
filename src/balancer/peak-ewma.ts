import type { Backend } from '../upstream/backend.js'
import type { BalancerFactory, Exclusion, PickContext } from './types.js'
import { WeightedSetBalancer } from './weighted-set-balancer.js'
import { Rng, type RandomSource } from './rng.js'

export interface PeakEwmaOptions {
  /** Time constant of the moving average, ms: older samples weigh e^(-age/decay). */
  decayMs: number
}

export const DEFAULT_EWMA_DECAY_MS = 10_000
/** Cost classes, cheapest first: never measured and idle (try it), measured, never measured with connections in flight (avoid it). */
const IDLE_UNMEASURED = 0
const MEASURED = 1
const BUSY_UNMEASURED = 2
/** Bound on the decay exponent between two stamps, so exp() stays finite. */
const MAX_EXPONENT = 700

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
export class PeakEwma extends WeightedSetBalancer<Latency> {
  constructor(
    members: readonly Backend[],
    private readonly options: PeakEwmaOptions,
    private readonly random: RandomSource = new Rng(),
    private readonly now: () => number = () => performance.now(),
  ) {
    super(members, () => ({ ewma: -1, stamp: 0 }))
  }

  pick(_ctx: PickContext, avoid?: Exclusion): Backend | undefined {
    const set = this.set
    const n = set.size
    if (n === 0) return undefined
    const i = set.draw(this.random)
    const j = n === 1 ? i : set.drawOther(i, this.random)
    const skipI = avoid !== undefined && avoid.has(set.items[i] as Backend)
    const skipJ = avoid !== undefined && avoid.has(set.items[j] as Backend)
    if (skipI && skipJ) return this.cheapest(avoid as Exclusion)
    if (skipI) return set.items[j]
    if (skipJ) return set.items[i]
    return this.cheaper(j, i) ? set.items[j] : set.items[i]
  }

  /**
   * Whether member `j` costs less than member `i` now. Both averages decay by the same factor
   * from their own stamps to now, so comparing them needs only the difference of the stamps:
   * no clock read on a pick.
   */
  cheaper(j: number, i: number): boolean {
    const bj = this.set.items[j] as Backend
    const bi = this.set.items[i] as Backend
    const lj = this.set.data[j] as Latency
    const li = this.set.data[i] as Latency
    const cj = costClass(lj, bj)
    const ci = costClass(li, bi)
    if (cj !== ci) return cj < ci
    if (cj === IDLE_UNMEASURED) return false
    if (cj === BUSY_UNMEASURED) return bj.active * bi.effectiveWeight < bi.active * bj.effectiveWeight
    const d = Math.max(-MAX_EXPONENT, Math.min(MAX_EXPONENT, (lj.stamp - li.stamp) / this.options.decayMs))
    return lj.ewma * (bj.active + 1) * bi.effectiveWeight * Math.exp(d) < li.ewma * (bi.active + 1) * bj.effectiveWeight
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
  private cheapest(avoid: Exclusion): Backend | undefined {
    let best = -1
    const items = this.set.items
    for (let k = 0; k < items.length; k++) {
      if (avoid.has(items[k] as Backend)) continue
      if (best < 0 || this.cheaper(k, best)) best = k
    }
    return best < 0 ? undefined : items[best]
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

function costClass(l: Latency, b: Backend): number {
  if (l.ewma >= 0) return MEASURED
  return b.active === 0 ? IDLE_UNMEASURED : BUSY_UNMEASURED
}
