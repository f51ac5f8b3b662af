import type { Backend } from '../upstream/backend.js'
import type { Balancer, BalancerFactory, Exclusion, PickContext } from './types.js'
import { IndexedHeap, type HeapNode } from './indexed-heap.js'

/**
 * Weighted least-connections: the backend with the fewest active connections per unit of
 * weight wins; ties go round-robin by weight (as nginx does), so short-lived connections
 * that never overlap still spread by weight. The order is kept in a heap updated when a
 * connection opens or closes, never re-sorted on a pick.
 */
interface Slot extends HeapNode {
  backend: Backend
  /** Tie-break: smooth weighted round-robin among equally loaded backends. */
  pass: number
  stride: number
  order: number
}

function less(a: Slot, b: Slot): boolean {
  // active/weight compared by cross-multiplication: exact for integers.
  const la = a.backend.active * b.backend.effectiveWeight
  const lb = b.backend.active * a.backend.effectiveWeight
  if (la !== lb) return la < lb
  if (a.pass !== b.pass) return a.pass < b.pass
  return a.order < b.order
}

export class LeastConnections implements Balancer {
  private readonly heap = new IndexedHeap<Slot>(less)
  private readonly slots = new Map<Backend, Slot>()
  private clock = 0
  private nextOrder = 0

  constructor(members: readonly Backend[]) {
    for (const b of members) this.onBackendUp(b)
  }

  pick(_ctx: PickContext, avoid?: Exclusion): Backend | undefined {
    let slot = this.heap.peek()
    if (slot === undefined) return undefined
    if (avoid !== undefined && avoid.has(slot.backend)) {
      slot = this.heap.leastWhere((s) => avoid.has(s.backend))
      if (slot === undefined) return undefined
    }
    this.clock = slot.pass
    slot.pass += slot.stride
    this.heap.update(slot)
    return slot.backend
  }

  onBackendUp(backend: Backend): void {
    if (this.slots.has(backend)) return
    const stride = 1 / backend.effectiveWeight
    const slot: Slot = { backend, pass: this.clock + stride / 2, stride, order: this.nextOrder++, pos: -1 }
    this.slots.set(backend, slot)
    this.heap.push(slot)
  }

  onBackendDown(backend: Backend): void {
    const slot = this.slots.get(backend)
    if (slot === undefined) return
    this.slots.delete(backend)
    this.heap.remove(slot)
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
