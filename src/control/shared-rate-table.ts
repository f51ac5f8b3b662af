import { hashKey } from './shared-key-table.js'

/**
 * Token buckets per key (a client address, say) that every worker thread takes from in one
 * SharedArrayBuffer, with no message between threads: the per-source rates
 * (`per_source_rate`, `per_source_datagrams`) are exact for the whole daemon.
 *
 * A bucket is kept as GCRA does it (the generic cell rate algorithm of ATM, also used by
 * rate limiters such as redis-cell): one number per key, the "theoretical arrival time"
 * (TAT). A bucket of `burst` tokens refilled at `rate` per second is the same as: each
 * admitted event pushes the TAT `1/rate` seconds on; an event is admitted when the TAT is at
 * most `(burst - 1)/rate` seconds ahead of now. A refused event changes nothing (it takes no
 * token). A TAT in the past is a full bucket, the same as no entry at all: such an entry is
 * free for any key, so entries expire by themselves and a flood of distinct sources can
 * only fill the table for as long as each of their buckets is not full again (`full`).
 *
 * Each entry is one 64-bit word: a 24-bit tag of the key's hash (never 0) and the TAT in
 * microseconds, modulo 2^40 (12.7 days; `sweep` clears entries long in the past, so none
 * is ever old enough to wrap). Every change is one compare-and-swap of the whole word. A key
 * lives in the first of PROBE entries from its hash that holds its tag, else takes the first
 * free one: two workers racing for a new key race for the same entry, so it never has two.
 */

const PROBE = 16
const TIME_BITS = 40n
const TIME_MASK = (1n << TIME_BITS) - 1n
const HALF = 1n << (TIME_BITS - 1n)
const TAG_MASK = 0xffffffn

export type Taken = 'ok' | 'limit' | 'full'

/** Microseconds since the epoch, alike in every thread (performance.now() alone is per thread). */
export function nowMicros(): bigint {
  return BigInt(Math.round((performance.timeOrigin + performance.now()) * 1000))
}

export class SharedRateTable {
  private readonly words: BigUint64Array
  private readonly mask: number
  private sweepAt = 0

  constructor(readonly buffer: SharedArrayBuffer) {
    this.words = new BigUint64Array(buffer)
    if ((this.words.length & (this.words.length - 1)) !== 0) throw new TypeError('a SharedRateTable holds a power of two entries')
    this.mask = this.words.length - 1
  }

  /** A zeroed table of at least `entries` entries (rounded up to a power of two). */
  static create(entries: number): SharedRateTable {
    let n = 16
    while (n < entries) n *= 2
    return new SharedRateTable(new SharedArrayBuffer(n * BigUint64Array.BYTES_PER_ELEMENT))
  }

  get capacity(): number {
    return this.words.length
  }

  /**
   * Takes one token from `key`'s bucket, refilled at `perSecond` and holding `burst` tokens:
   * 'ok', 'limit' (empty: nothing taken), or 'full' (no entry free for a new key).
   */
  take(key: string, perSecond: number, burst: number, now: bigint = nowMicros()): Taken {
    const [start, tag40] = hashKey(key, this.mask)
    const tag = (tag40 & TAG_MASK) === 0n ? 1n : tag40 & TAG_MASK
    const interval = BigInt(Math.max(1, Math.ceil(1_000_000 / perSecond)))
    const tolerance = interval * BigInt(Math.max(0, Math.floor(burst) - 1))
    const t = now & TIME_MASK
    const words = this.words
    for (;;) {
      let free = -1
      let freeWord = 0n
      let found = -1
      let w = 0n
      for (let i = 0; i < PROBE; i++) {
        const slot = (start + i) & this.mask
        const v = Atomics.load(words, slot)
        if (v !== 0n && v >> TIME_BITS === tag) {
          found = slot
          w = v
          break
        }
        if (free < 0 && (v === 0n || ahead(v & TIME_MASK, t) <= 0n)) {
          free = slot
          freeWord = v
        }
      }
      if (found >= 0) {
        let lead = ahead(w & TIME_MASK, t)
        if (lead < 0n) lead = 0n
        if (lead > tolerance) return 'limit'
        const next = (tag << TIME_BITS) | ((t + lead + interval) & TIME_MASK)
        if (Atomics.compareExchange(words, found, w, next) === w) return 'ok'
        continue
      }
      if (free < 0) return 'full'
      const next = (tag << TIME_BITS) | ((t + interval) & TIME_MASK)
      if (Atomics.compareExchange(words, free, freeWord, next) === freeWord) return 'ok'
    }
  }

  /**
   * Clears up to `count` entries whose bucket is full again (TAT in the past), going round
   * the table from where the last sweep stopped: called now and then, it keeps every entry
   * from growing old enough for its time to wrap.
   */
  sweep(count: number, now: bigint = nowMicros()): void {
    const t = now & TIME_MASK
    const words = this.words
    for (let i = 0; i < count; i++) {
      const slot = this.sweepAt
      this.sweepAt = (slot + 1) & this.mask
      const v = Atomics.load(words, slot)
      if (v !== 0n && ahead(v & TIME_MASK, t) <= 0n) Atomics.compareExchange(words, slot, v, 0n)
    }
  }

  /** Entries whose bucket is not full (in use), by a scan (for metrics and tests). */
  used(now: bigint = nowMicros()): number {
    const t = now & TIME_MASK
    let n = 0
    for (let i = 0; i < this.words.length; i++) {
      const v = Atomics.load(this.words, i)
      if (v !== 0n && ahead(v & TIME_MASK, t) > 0n) n++
    }
    return n
  }
}

/** How far `tat` is ahead of `now` (microseconds, both modulo 2^40): negative when it is behind. */
function ahead(tat: bigint, now: bigint): bigint {
  const d = (tat - now) & TIME_MASK
  return d >= HALF ? d - (1n << TIME_BITS) : d
}
