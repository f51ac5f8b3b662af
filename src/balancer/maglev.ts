import type { Backend } from '../upstream/backend.js'
import type { Balancer, BalancerFactory, Exclusion, PickContext } from './types.js'
import { DEFAULT_TABLE_SIZE, MaglevTable } from './maglev-table.js'
import { keyHash, parseHashKey, type HashKey } from './hash-key.js'
import { isPrime, listedWeightTotal, nearestPrimes } from './option-readers.js'

export interface MaglevOptions {
  key: HashKey
  tableSize: number
}

export const MAX_TABLE_SIZE = 9_999_991

/**
 * Maglev hashing: a pick is one table lookup, O(1) and allocation-free, and when a backend
 * leaves, only its own slots (≈ 1/N of keys) change hands, plus a small share of others that
 * the paper measures and test/balancer/hash-quality.test.ts keeps under 1%. The table is
 * rebuilt once on the first pick after membership or weights change (a whole pool coming up
 * at start-up is one build). A key whose backend is excluded (full, or already tried for this
 * connection) goes to the next slot's backend, so retries stay deterministic too.
 */
export class Maglev implements Balancer {
  readonly table: MaglevTable
  private readonly members = new Set<Backend>()
  private dirty = false
  private seen = new Uint32Array(0)
  private epoch = 0

  constructor(members: readonly Backend[], private readonly options: MaglevOptions) {
    this.table = new MaglevTable(options.tableSize)
    for (const b of members) this.onBackendUp(b)
  }

  pick(ctx: PickContext, avoid?: Exclusion): Backend | undefined {
    if (this.dirty) this.rebuild()
    if (this.members.size === 0) return undefined
    const table = this.table
    const slot = keyHash(ctx, this.options.key) % table.size
    const b = table.backends[table.indexAt(slot)] as Backend
    if (avoid === undefined || !avoid.has(b)) return b
    return this.probe(slot, avoid)
  }

  /** The first backend after `start` in table order that is not excluded. */
  private probe(start: number, avoid: Exclusion): Backend | undefined {
    const table = this.table
    const n = table.backends.length
    if (this.seen.length < n) this.seen = new Uint32Array(n * 2)
    const seen = this.seen
    const epoch = (this.epoch = (this.epoch + 1) >>> 0 || 1)
    let distinct = 0
    for (let k = 0, i = start; k < table.size && distinct < n; k++, i = i + 1 === table.size ? 0 : i + 1) {
      const idx = table.indexAt(i)
      if (seen[idx] === epoch) continue
      seen[idx] = epoch
      distinct++
      const b = table.backends[idx] as Backend
      if (!avoid.has(b)) return b
    }
    return undefined
  }

  /** Builds the table now (normally done lazily by the next pick). */
  rebuild(): void {
    this.dirty = false
    this.table.build(this.members)
  }

  onBackendUp(b: Backend): void {
    if (this.members.has(b)) return
    this.members.add(b)
    this.dirty = true
  }

  onBackendDown(b: Backend): void {
    if (this.members.delete(b)) this.dirty = true
  }

  onWeightChange(b: Backend): void {
    if (this.members.has(b)) this.dirty = true
  }
}

export const maglevFactory: BalancerFactory<MaglevOptions> = {
  name: 'maglev',
  needs: ['address'],
  weighted: true,
  optionKeys: ['hash_key', 'table_size'],
  parseOptions(pool, reader, context) {
    const key = parseHashKey(pool, reader, context) ?? 'source-ip'
    if (!pool.has('table_size')) return { key, tableSize: DEFAULT_TABLE_SIZE }
    const at = pool.get('table_size')
    const size = reader.int(at, `${context} table_size`, 3, MAX_TABLE_SIZE)
    if (size === undefined) return { key, tableSize: DEFAULT_TABLE_SIZE }
    if (!isPrime(size)) {
      const [below, above] = nearestPrimes(size)
      reader.report(at, `${context} table_size ${size} is not a prime number; Maglev needs a prime, e.g. ${below} or ${above} (the default is ${DEFAULT_TABLE_SIZE})`)
      return { key, tableSize: DEFAULT_TABLE_SIZE }
    }
    const { count } = listedWeightTotal(pool, 1)
    if (size < count * 10) {
      reader.report(at, `${context} table_size ${size} is too small for ${count} backends; use a prime of at least 10 × (better 100 ×) the number of backends`)
    }
    return { key, tableSize: size }
  },
  create: (members, options) => new Maglev(members, options),
}
