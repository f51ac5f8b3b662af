import type { Backend } from '../upstream/backend.js'
import type { BalancerFactory } from './types.js'
import { EndsFirstHeap, StartsFirstHeap, StrideBalancer } from './stride-balancer.js'

/**
 * Smooth weighted round-robin: StrideBalancer's schedule alone. Weights 5:1:1 give
 * a b a a c a a (the heavy backend spread between the light ones, never more than 3 in a row
 * across rounds) instead of bursting (a a a a a b c). A pick is O(log n); membership and
 * weight changes are O(log n) too. Equal weights give plain round-robin in backend order.
 */
export class RoundRobin extends StrideBalancer {
  constructor(members: readonly Backend[]) {
    super(members, new EndsFirstHeap(), new StartsFirstHeap())
  }

  protected lighter(): boolean {
    return false
  }
}

export const roundRobinFactory: BalancerFactory<null> = {
  name: 'round-robin',
  needs: [],
  weighted: true,
  optionKeys: [],
  parseOptions: () => null,
  create: (members) => new RoundRobin(members),
}
