/** A tiny seeded generator (mulberry32) for property tests: the same seed, the same cases. */
export function seeded(seed: number): { next(): number; int(min: number, max: number): number; bytes(n: number): Buffer; pick<T>(xs: readonly T[]): T } {
  let a = seed >>> 0
  const next = (): number => {
    a = (a + 0x6d2b79f5) >>> 0
    let x = a
    x = Math.imul(x ^ (x >>> 15), x | 1)
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
  const int = (min: number, max: number): number => min + Math.floor(next() * (max - min + 1))
  return {
    next,
    int,
    bytes: (n) => {
      const b = Buffer.alloc(n)
      for (let i = 0; i < n; i++) b[i] = int(0, 255)
      return b
    },
    pick: <T>(xs: readonly T[]): T => xs[int(0, xs.length - 1)] as T,
  }
}
