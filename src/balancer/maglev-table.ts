import type { Backend } from '../upstream/backend.js'
import { hashString } from './murmur3.js'

const OFFSET_SEED = 0x1b56c4e9
const SKIP_SEED = 0x7feb352d

export const DEFAULT_TABLE_SIZE = 65_537

/**
 * Maglev's lookup table (Eisenbud et al., NSDI 2016, §3.4). Each backend walks its own
 * permutation of the M slots (offset + j·skip mod M, both from hashes of its id; M prime so
 * every skip visits every slot) and the backends take turns claiming their next free slot
 * until the table is full. Weights are honoured the way Envoy does it: a backend of weight w
 * takes a turn in w / max-weight of the rounds, so it ends with about w / Σw of the slots.
 *
 * Backends are ordered by id before building, so the table depends only on the set of
 * backends and their weights, never on the order they were listed or came up in.
 */
export class MaglevTable {
  /** Slot → index into `backends`. */
  readonly slots: Int32Array
  /** The backends in id order. */
  backends: Backend[] = []

  constructor(readonly size: number = DEFAULT_TABLE_SIZE) {
    this.slots = new Int32Array(size)
  }

  /** Fills the table for `members` (each with its `effectiveWeight`). */
  build(members: Iterable<Backend>): void {
    const backends = [...members].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
    this.backends = backends
    const m = this.size
    const slots = this.slots
    slots.fill(-1)
    const n = backends.length
    if (n === 0) return
    const pos = new Float64Array(n)
    const skip = new Float64Array(n)
    const weight = new Float64Array(n)
    const target = new Float64Array(n)
    let maxWeight = 0
    for (let i = 0; i < n; i++) {
      const b = backends[i] as Backend
      pos[i] = hashString(b.id, OFFSET_SEED) % m
      skip[i] = (hashString(b.id, SKIP_SEED) % (m - 1)) + 1
      weight[i] = b.effectiveWeight
      maxWeight = Math.max(maxWeight, b.effectiveWeight)
    }
    let filled = 0
    for (let round = 1; filled < m; round++) {
      for (let i = 0; i < n && filled < m; i++) {
        const w = weight[i] as number
        if (round * w < (target[i] as number)) continue
        target[i] = (target[i] as number) + maxWeight
        let c = pos[i] as number
        const s = skip[i] as number
        while ((slots[c] as number) >= 0) {
          c += s
          if (c >= m) c -= m
        }
        slots[c] = i
        c += s
        pos[i] = c >= m ? c - m : c
        filled++
      }
    }
  }

  /** The backend for a 32-bit key hash. The table must have at least one backend. */
  lookup(h: number): Backend {
    return this.backends[this.slots[h % this.size] as number] as Backend
  }

  /** The backend index in slot `i`. */
  indexAt(i: number): number {
    return this.slots[i] as number
  }
}
