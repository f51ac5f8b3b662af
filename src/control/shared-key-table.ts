/**
 * Counts per key (a client address, say) that every worker thread updates in one
 * SharedArrayBuffer, with no message between threads: the table the per-source limits use
 * (open connections per source). Fixed size, so a flood of distinct keys cannot grow memory:
 * when a key finds no free entry in its probe window, `acquire` says so (`full`) and the
 * caller decides (and counts it).
 *
 * Each entry is one 64-bit word: a 40-bit tag of the key's hash (never 0) and a 24-bit count.
 * A key lives in one of PROBE entries from its hash; every change is one compare-and-swap of
 * the whole word, so a count and its tag never tear, and the last release empties the entry
 * again (count 0 = free): nothing needs sweeping. Two keys whose hashes share the tag and
 * the window share a count: about one chance in 2^36 per pair of keys.
 */

const PROBE = 16
const COUNT_BITS = 24n
const COUNT_MASK = (1n << COUNT_BITS) - 1n
/** Largest count an entry holds. */
export const MAX_KEY_COUNT = Number(COUNT_MASK)

export type Acquired = 'ok' | 'limit' | 'full'

export class SharedKeyTable {
  private readonly words: BigUint64Array
  private readonly mask: number

  constructor(readonly buffer: SharedArrayBuffer) {
    this.words = new BigUint64Array(buffer)
    if ((this.words.length & (this.words.length - 1)) !== 0) throw new TypeError('a SharedKeyTable holds a power of two entries')
    this.mask = this.words.length - 1
  }

  /** A zeroed table of at least `entries` entries (rounded up to a power of two). */
  static create(entries: number): SharedKeyTable {
    let n = 16
    while (n < entries) n *= 2
    return new SharedKeyTable(new SharedArrayBuffer(n * BigUint64Array.BYTES_PER_ELEMENT))
  }

  get capacity(): number {
    return this.words.length
  }

  /** Adds one to `key`'s count unless it is already `max`: 'ok', 'limit', or 'full' (no room for a new key). */
  acquire(key: string, max: number): Acquired {
    const [start, tag] = this.hash(key)
    const words = this.words
    const limit = BigInt(Math.min(max, MAX_KEY_COUNT))
    for (let i = 0; i < PROBE; i++) {
      const slot = (start + i) & this.mask
      for (;;) {
        const w = Atomics.load(words, slot)
        if (w === 0n) {
          // A free entry: claim it with a count of one (unless another thread got there first).
          if (limit < 1n) return 'limit'
          if (Atomics.compareExchange(words, slot, 0n, (tag << COUNT_BITS) | 1n) === 0n) return 'ok'
          continue
        }
        if (w >> COUNT_BITS !== tag) break
        const count = w & COUNT_MASK
        if (count >= limit) return 'limit'
        if (Atomics.compareExchange(words, slot, w, w + 1n) === w) return 'ok'
      }
    }
    return 'full'
  }

  /** Takes one off `key`'s count (after a successful acquire); the last one frees the entry. */
  release(key: string): void {
    const [start, tag] = this.hash(key)
    const words = this.words
    for (let i = 0; i < PROBE; i++) {
      const slot = (start + i) & this.mask
      for (;;) {
        const w = Atomics.load(words, slot)
        if (w === 0n || w >> COUNT_BITS !== tag) break
        const next = (w & COUNT_MASK) <= 1n ? 0n : w - 1n
        if (Atomics.compareExchange(words, slot, w, next) === w) return
      }
    }
  }

  /** `key`'s count now (0 when it holds none). */
  count(key: string): number {
    const [start, tag] = this.hash(key)
    for (let i = 0; i < PROBE; i++) {
      const w = Atomics.load(this.words, (start + i) & this.mask)
      if (w !== 0n && w >> COUNT_BITS === tag) return Number(w & COUNT_MASK)
    }
    return 0
  }

  /** Entries in use, by a scan (for metrics). */
  used(): number {
    let n = 0
    for (let i = 0; i < this.words.length; i++) if (Atomics.load(this.words, i) !== 0n) n++
    return n
  }

  /** The first entry to probe, and the key's 40-bit tag (never 0). */
  private hash(key: string): [number, bigint] {
    return hashKey(key, this.mask)
  }
}

/**
 * FNV-1a, 64 bits, of `key`: the first entry to probe (`& mask`) and a 40-bit tag of the
 * key (never 0). Shared by the tables in SharedArrayBuffers that every worker indexes alike.
 */
export function hashKey(key: string, mask: number): [number, bigint] {
  let lo = 0x84222325
  let hi = 0xcbf29ce4
  for (let i = 0; i < key.length; i++) {
    lo ^= key.charCodeAt(i)
    // Multiply the 64-bit state by the FNV prime 0x100000001b3, in 32-bit halves.
    const l = lo * 0x1b3
    const carry = Math.floor(l / 0x100000000)
    hi = (Math.imul(hi, 0x1b3) + Math.imul(lo, 0x100) + carry) >>> 0
    lo = l >>> 0
  }
  const tag = ((BigInt(hi) << 8n) | BigInt(lo >>> 24)) & 0xffffffffffn
  return [lo & mask, tag === 0n ? 1n : tag]
}
