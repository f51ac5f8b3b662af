import type { Backend } from '../upstream/backend.js'
import type { Balancer, Exclusion, PickContext } from './types.js'
import { IndexedHeap, type HeapNode } from './indexed-heap.js'

/** A backend's place in the schedule: its k-th turn falls at (k + ½) × stride on the clock. */
export interface StrideSlot extends HeapNode {
  backend: Backend
  pass: number
  /** 1 / effective weight. */
  stride: number
  /** Join order: the last tie-break, so equal backends go in a stable order. */
  order: number
}

/**
 * Stride scheduling kept in a heap, shared by round-robin (ordered by pass alone) and
 * least-connections (ordered by load, then pass). A pick takes the least slot that is not
 * excluded and moves it one stride on: O(log n), no allocation. A backend that joins starts
 * half a stride after the current clock, so it neither bursts nor waits a full round.
 */
export abstract class StrideBalancer implements Balancer {
  protected readonly heap: IndexedHeap<StrideSlot>
  protected readonly slots = new Map<Backend, StrideSlot>()
  private clock = 0
  private nextOrder = 0

  constructor(members: readonly Backend[], less: (a: StrideSlot, b: StrideSlot) => boolean) {
    this.heap = new IndexedHeap<StrideSlot>(less)
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
    const slot: StrideSlot = { backend, pass: this.clock + stride / 2, stride, order: this.nextOrder++, pos: -1 }
    this.slots.set(backend, slot)
    this.heap.push(slot)
  }

  onBackendDown(backend: Backend): void {
    const slot = this.slots.get(backend)
    if (slot === undefined) return
    this.slots.delete(backend)
    this.heap.remove(slot)
  }

  abstract onWeightChange(backend: Backend): void
}
