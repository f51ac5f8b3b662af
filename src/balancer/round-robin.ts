import type { Backend } from '../upstream/backend.js'
import type { Balancer, BalancerFactory, Exclusion, PickContext } from './types.js'
import { IndexedHeap, type HeapNode } from './indexed-heap.js'

/**
 * Smooth weighted round-robin by stride scheduling: each backend's k-th turn falls at
 * (k + ½) / weight on a shared virtual clock, so weights 5:1:1 interleave (a a b a c a a …)
 * instead of bursting (a a a a a b c). A pick is O(log n) with a heap; membership and
 * weight changes are O(log n) too. Equal weights give plain round-robin in backend order.
 */
interface Slot extends HeapNode {
  backend: Backend
  pass: number
  stride: number
  order: number
}

export class RoundRobin implements Balancer {
  private readonly heap = new IndexedHeap<Slot>((a, b) => a.pass < b.pass || (a.pass === b.pass && a.order < b.order))
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
    const stride = 1 / backend.effectiveWeight
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
