import type { Backend } from '../upstream/backend.js'
import type { BalancerFactory, Exclusion, PickContext } from './types.js'
import { WeightedSetBalancer } from './weighted-set-balancer.js'
import { Rng, type RandomSource } from './rng.js'

/** Draws to try before scanning for a backend outside the exclusion set. */
export const REDRAWS = 3

/**
 * Weighted random: each connection goes to a backend drawn with probability proportional to
 * its weight, O(1) per pick (alias method). No shared state between picks, so it is what to
 * use when several independent sluice processes front the same backends and none should
 * need to know what the others did. Excluded backends are redrawn, then skipped by a scan
 * that keeps the draw weighted among the rest.
 */
export class RandomBalancer extends WeightedSetBalancer {
  constructor(members: readonly Backend[], private readonly random: RandomSource = new Rng()) {
    super(members, () => undefined)
  }

  pick(_ctx: PickContext, avoid?: Exclusion): Backend | undefined {
    const set = this.set
    if (set.size === 0) return undefined
    for (let i = 0; i < REDRAWS; i++) {
      const b = set.items[set.draw(this.random)] as Backend
      if (avoid === undefined || !avoid.has(b)) return b
    }
    const i = set.drawExcluding(avoid as Exclusion, this.random)
    return i < 0 ? undefined : set.items[i]
  }

}

export const randomFactory: BalancerFactory<null> = {
  name: 'random',
  needs: [],
  weighted: true,
  optionKeys: [],
  parseOptions: () => null,
  create: (members) => new RandomBalancer(members),
}
