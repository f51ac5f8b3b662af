import type { BalancerFactory } from './types.js'
import { roundRobinFactory } from './round-robin.js'
import { leastConnectionsFactory } from './least-connections.js'

/** Every algorithm sluice knows, looked up by the name written in `algorithm:`. */
const FACTORIES: readonly BalancerFactory[] = [roundRobinFactory, leastConnectionsFactory] as BalancerFactory[]

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
