import type { Backend } from '../upstream/backend.js'
import type { BalancerFactory } from './types.js'
import { StrideBalancer, type StrideSlot } from './stride-balancer.js'

/**
 * Weighted least-connections: the backend with the fewest active connections per unit of
 * weight wins; ties go round-robin by weight (as nginx does), so short-lived connections
 * that never overlap still spread by weight. The order is kept in a heap updated when a
 * connection opens or closes, never re-sorted on a pick.
 */
function less(a: StrideSlot, b: StrideSlot): boolean {
  // active/weight compared by cross-multiplication: exact for integers.
  const la = a.backend.active * b.backend.effectiveWeight
  const lb = b.backend.active * a.backend.effectiveWeight
  if (la !== lb) return la < lb
  if (a.pass !== b.pass) return a.pass < b.pass
  return a.order < b.order
}

export class LeastConnections extends StrideBalancer {
  constructor(members: readonly Backend[]) {
    super(members, less)
  }

  onWeightChange(backend: Backend): void {
    const slot = this.slots.get(backend)
    if (slot === undefined) return
    slot.stride = 1 / backend.effectiveWeight
    this.heap.update(slot)
  }

  onConnectionOpen(backend: Backend): void {
    this.moved(backend)
  }

  onConnectionClose(backend: Backend): void {
    this.moved(backend)
  }

  private moved(backend: Backend): void {
    const slot = this.slots.get(backend)
    if (slot !== undefined) this.heap.update(slot)
  }
}

export const leastConnectionsFactory: BalancerFactory<null> = {
  name: 'least-connections',
  needs: [],
  weighted: true,
  optionKeys: [],
  parseOptions: () => null,
  create: (members) => new LeastConnections(members),
}
