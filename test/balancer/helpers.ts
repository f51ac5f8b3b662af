import type { Backend } from '../../src/upstream/backend.js'
import type { Balancer, BalancerFactory, Exclusion, PickContext } from '../../src/balancer/types.js'
import { findBalancer } from '../../src/balancer/registry.js'
import { parseConfig } from '../../src/config/load.js'

export { makeBackend, makeBackends, clientCtx } from '../../bench/hash-quality.js'

/** Backends excluded by membership in a set. */
export class SetExclusion implements Exclusion {
  constructor(readonly set: ReadonlySet<Backend> = new Set()) {}
  has(b: Backend): boolean {
    return this.set.has(b)
  }
}

/** The algorithm's options as validation produces them from `extra` pool YAML (e.g. "hash_key: sni"). */
export function optionsFor(algorithm: string, extra = ''): unknown {
  const yaml = `
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p:
    algorithm: ${algorithm}
    backends: [10.0.0.1:80]
${extra.split('\n').map((l) => `    ${l}`).join('\n')}
`
  return parseConfig(yaml, 'test.yaml', {}).pools.get('p')?.algorithmOptions
}

/** A balancer made by the registry's factory, with options as if read from YAML. */
export function create(algorithm: string, members: readonly Backend[], extra = ''): Balancer {
  const f = findBalancer(algorithm) as BalancerFactory | undefined
  if (f === undefined) throw new TypeError(`no algorithm ${algorithm}`)
  return f.create(members, optionsFor(algorithm, extra))
}

/** Picks `n` times (client i for the i-th pick) and counts picks per backend id. */
export function spread(bal: Balancer, n: number, avoid?: Exclusion, ctxOf?: (i: number) => PickContext): Map<string, number> {
  const counts = new Map<string, number>()
  const base: PickContext = { protocol: 'tcp', remoteAddress: '', remotePort: 0 }
  for (let i = 0; i < n; i++) {
    const ctx = ctxOf?.(i) ?? { ...base, remoteAddress: `172.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, remotePort: 1024 + (i % 60000) }
    const b = bal.pick(ctx, avoid)
    const id = b?.id ?? 'none'
    counts.set(id, (counts.get(id) ?? 0) + 1)
  }
  return counts
}
