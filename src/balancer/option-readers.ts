import { isMap, isScalar, isSeq } from 'yaml'
import type { MapView } from '../config/reader.js'

/** Readers for algorithm options that the generic ConfigReader has no shape for. */

export function isPrime(n: number): boolean {
  if (!Number.isInteger(n) || n < 2) return false
  if (n % 2 === 0) return n === 2
  for (let d = 3; d * d <= n; d += 2) if (n % d === 0) return false
  return true
}

/** The primes nearest `n` below and above it (for "did you mean" hints). */
export function nearestPrimes(n: number): [number, number] {
  let below = Math.max(2, n - 1)
  while (below > 2 && !isPrime(below)) below--
  let above = n + 1
  while (!isPrime(above)) above++
  return [below, above]
}

/**
 * The sum of the weights written in the pool's backends list, read leniently (the backends
 * list is checked, with its errors reported, elsewhere); for sanity limits on table sizes.
 */
export function listedWeightTotal(pool: MapView, defaultWeight: number): { count: number; total: number } {
  const node = pool.has('backends') ? pool.get('backends').node : undefined
  if (!isSeq(node)) return { count: 0, total: 0 }
  let total = 0
  for (const item of node.items) {
    let w = defaultWeight
    if (isMap(item)) {
      const v = item.get('weight', true)
      if (isScalar(v) && typeof v.value === 'number' && v.value > 0) w = v.value
    }
    total += w
  }
  return { count: node.items.length, total }
}
