import type { BalancerFactory } from './types.js'
import { roundRobinFactory } from './round-robin.js'
import { leastConnectionsFactory } from './least-connections.js'
import { consistentHashFactory } from './consistent-hash.js'
import { maglevFactory } from './maglev.js'
import { randomFactory } from './random.js'
import { powerOfTwoFactory } from './power-of-two.js'
import { firstFactory } from './first.js'
import { peakEwmaFactory } from './peak-ewma.js'

/** Every algorithm sluice knows, looked up by the name written in `algorithm:`. */
const FACTORIES: readonly BalancerFactory[] = [
  roundRobinFactory,
  leastConnectionsFactory,
  consistentHashFactory,
  maglevFactory,
  randomFactory,
  powerOfTwoFactory,
  firstFactory,
  peakEwmaFactory,
] as BalancerFactory[]

export function balancerNames(): string[] {
  return FACTORIES.map((f) => f.name)
}

export function findBalancer(name: string): BalancerFactory | undefined {
  return FACTORIES.find((f) => f.name === name)
}

/** Keys that some algorithm reads, with the algorithms that read each. */
export function algorithmOptionKeys(): Map<string, string[]> {
  const out = new Map<string, string[]>()
  for (const f of FACTORIES) {
    for (const k of f.optionKeys) out.set(k, [...(out.get(k) ?? []), f.name])
  }
  return out
}
