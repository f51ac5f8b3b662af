import type { Backend } from '../upstream/backend.js'
import type { Balancer, BalancerFactory, Exclusion, PickContext } from './types.js'
import { WeightedSet } from './weighted-set.js'
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
export class RandomBalancer implements Balancer {
  private readonly set = new WeightedSet<undefined>(() => undefined)

  constructor(members: readonly Backend[], private readonly random: RandomSource = new Rng()) {
    for (const b of members) this.onBackendUp(b)
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

export const randomFactory: BalancerFactory<null> = {
  name: 'random',
  needs: [],
  weighted: true,
  optionKeys: [],
  parseOptions: () => null,
  create: (members) => new RandomBalancer(members),
}
