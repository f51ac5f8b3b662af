import type { Backend } from '../upstream/backend.js'
import type { BalancerFactory, Exclusion, PickContext } from './types.js'
import { WeightedSetBalancer } from './weighted-set-balancer.js'
import { Rng, type RandomSource } from './rng.js'

/**
 * Power of two choices (Mitzenmacher): draw two backends at random (weighted), send the
 * connection to the one with fewer active connections per unit of weight. Nearly as even as
 * least-connections, O(1) per pick, and it does not herd: several processes that each see
 * only their own counts do not all pile onto the same "least loaded" backend at once.
 */
export class PowerOfTwo extends WeightedSetBalancer {
  constructor(members: readonly Backend[], private readonly random: RandomSource = new Rng()) {
    super(members, () => undefined)
  }

  pick(_ctx: PickContext, avoid?: Exclusion): Backend | undefined {
    const set = this.set
    const n = set.size
    if (n === 0) return undefined
    const i = set.draw(this.random)
    const a = set.items[i] as Backend
    if (n === 1) return avoid !== undefined && avoid.has(a) ? undefined : a
    const b = set.items[set.drawOther(i, this.random)] as Backend
    if (avoid !== undefined) {
      const skipA = avoid.has(a)
      const skipB = avoid.has(b)
      if (skipA && skipB) return this.leastLoaded(avoid)
      if (skipA) return b
      if (skipB) return a
    }
    return lighter(b, a) ? b : a
  }

  /** The least loaded backend outside `avoid` (a scan, for when both draws were excluded). */
  private leastLoaded(avoid: Exclusion): Backend | undefined {
    let best: Backend | undefined
    for (const b of this.set.items) {
      if (!avoid.has(b) && (best === undefined || lighter(b, best))) best = b
    }
    return best
  }

}

/** Whether `x` holds fewer active connections per unit of weight than `y`. */
function lighter(x: Backend, y: Backend): boolean {
  return x.active * y.effectiveWeight < y.active * x.effectiveWeight
}

export const powerOfTwoFactory: BalancerFactory<null> = {
  name: 'power-of-two',
  needs: [],
  weighted: true,
  optionKeys: [],
  parseOptions: () => null,
  create: (members) => new PowerOfTwo(members),
}
