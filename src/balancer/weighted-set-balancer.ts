import type { Backend } from '../upstream/backend.js'
import type { Balancer, Exclusion, PickContext } from './types.js'
import { WeightedSet } from './weighted-set.js'

/**
 * The membership half shared by the algorithms that draw from a WeightedSet (random,
 * power-of-two, peak-ewma): joins, leaves and weight changes update the set; each subclass
 * only says how to pick. `T` is the per-backend state the algorithm keeps beside the weight.
 */
export abstract class WeightedSetBalancer<T = undefined> implements Balancer {
  protected readonly set: WeightedSet<T>

  constructor(members: readonly Backend[], init: (b: Backend) => T) {
    this.set = new WeightedSet<T>(init)
    for (const b of members) this.set.add(b)
  }

  abstract pick(ctx: PickContext, avoid?: Exclusion): Backend | undefined

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
