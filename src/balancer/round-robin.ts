import type { Backend } from '../upstream/backend.js'
import type { BalancerFactory } from './types.js'
import { StrideBalancer, type StrideSlot } from './stride-balancer.js'

/**
 * Smooth weighted round-robin by stride scheduling: each backend's k-th turn falls at
 * (k + ½) / weight on a shared virtual clock, so weights 5:1:1 interleave (a a b a c a a …)
 * instead of bursting (a a a a a b c). A pick is O(log n) with a heap; membership and
 * weight changes are O(log n) too. Equal weights give plain round-robin in backend order.
 */
function less(a: StrideSlot, b: StrideSlot): boolean {
  return a.pass < b.pass || (a.pass === b.pass && a.order < b.order)
}

export class RoundRobin extends StrideBalancer {
  constructor(members: readonly Backend[]) {
    super(members, less)
  }

  onWeightChange(backend: Backend): void {
    const slot = this.slots.get(backend)
    if (slot === undefined) return
    const stride = 1 / backend.effectiveWeight
    // Keep the next turn where the new weight would have put it: re-centre on the half stride.
    slot.pass = slot.pass - slot.stride / 2 + stride / 2
    slot.stride = stride
    this.heap.update(slot)
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
