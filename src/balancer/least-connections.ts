import type { Backend } from '../upstream/backend.js'
import type { BalancerFactory } from './types.js'
import { IndexedHeap } from './indexed-heap.js'
import { StrideBalancer, endsFirst, startsFirst, type StrideSlot } from './stride-balancer.js'

/**
 * Weighted least-connections: the backend with the fewest active connections per unit of
 * weight wins; ties go in round-robin's smooth weighted order (as nginx does), so short-lived
 * connections that never overlap still spread by weight. The order is kept in heaps updated
 * when a connection opens or closes, never re-sorted on a pick.
 */

/** Fewer active connections per unit of (effective) weight, by cross-multiplication: exact for integers. */
function load(a: StrideSlot, b: StrideSlot): number {
  return a.backend.active * b.weight - b.backend.active * a.weight
}

class ReadyByLoad extends IndexedHeap<StrideSlot> {
  protected less(a: StrideSlot, b: StrideSlot): boolean {
    const d = load(a, b)
    return d < 0 || (d === 0 && endsFirst(a, b))
  }
}

class WaitingByLoad extends IndexedHeap<StrideSlot> {
  protected less(a: StrideSlot, b: StrideSlot): boolean {
    const d = load(a, b)
    return d < 0 || (d === 0 && startsFirst(a, b))
  }
}

export class LeastConnections extends StrideBalancer {
  constructor(members: readonly Backend[]) {
    super(members, new ReadyByLoad(), new WaitingByLoad())
  }

  protected lighter(a: StrideSlot, b: StrideSlot): boolean {
    return load(a, b) < 0
  }

  onConnectionOpen(backend: Backend): void {
    this.moved(backend)
  }

  onConnectionClose(backend: Backend): void {
    this.moved(backend)
  }

  onLoadChanged(backend: Backend): void {
    this.moved(backend)
  }

  private moved(backend: Backend): void {
    const slot = this.slots.get(backend)
    if (slot !== undefined) this.reorder(slot)
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
