import { randomInt } from 'node:crypto'

/** Uniform random integers for picks. */
export interface RandomSource {
  /** A uniform integer in [0, 2^31). */
  next(): number
}

/** 2^31: the range of `RandomSource.next`. */
export const RANDOM_RANGE = 2 ** 31

/**
 * Mulberry32, a small fast generator with a 32-bit state, good enough to spread connections
 * (not for anything secret). It returns 31-bit integers on purpose: V8 keeps those as small
 * integers, where Math.random's doubles would be boxed in the heap whenever they cross a call
 * that is not inlined — an allocation per pick. Each instance is seeded from the OS, so
 * separate processes do not draw in lockstep.
 */
export class Rng implements RandomSource {
  private state: number

  constructor(seed: number = randomInt(0, 2 ** 32)) {
    this.state = seed | 0
  }

  next(): number {
    const a = (this.state = (this.state + 0x6d2b79f5) | 0)
    let t = Math.imul(a ^ (a >>> 15), 1 | a)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return (t ^ (t >>> 14)) >>> 1
  }
}
