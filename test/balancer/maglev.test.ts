import t from 'tap'
import type { Backend } from '../../src/upstream/backend.js'
import type { PickContext } from '../../src/balancer/types.js'
import { Maglev } from '../../src/balancer/maglev.js'
import { ConsistentHash } from '../../src/balancer/consistent-hash.js'
import { SetExclusion, makeBackends } from './helpers.js'

const ctx = (i: number): PickContext => ({ protocol: 'tcp', remoteAddress: `10.3.${(i >> 8) & 255}.${i & 255}`, remotePort: 1000 })

t.test('the table is filled, each backend with its share of slots', async (t) => {
  const members = makeBackends(7)
  const m = new Maglev(members, { key: 'source-ip', tableSize: 65537 })
  m.rebuild()
  const counts = new Array<number>(7).fill(0)
  let empty = 0
  for (let i = 0; i < m.table.size; i++) {
    const idx = m.table.indexAt(i)
    if (idx < 0) empty++
    else counts[idx] = (counts[idx] ?? 0) + 1
  }
  t.equal(empty, 0, 'every slot has a backend')
  for (const c of counts) t.ok(Math.abs(c / (65537 / 7) - 1) < 0.01, `slots ${c} ≈ M/N`)
})

t.test('a configurable (prime) table size', async (t) => {
  const m = new Maglev(makeBackends(3), { key: 'source-ip', tableSize: 251 })
  m.rebuild()
  t.equal(m.table.size, 251)
  t.equal(m.table.slots.length, 251)
  t.ok(m.pick(ctx(1)) !== undefined)
})

for (const alg of ['maglev', 'consistent-hash'] as const) {
  t.test(`${alg}: A/B canary with weights 90/10: ~10% of clients, and each stays put`, async (t) => {
    const [stable, canary] = makeBackends(2) as [Backend, Backend]
    stable.weight = 90
    canary.weight = 10
    const bal = alg === 'maglev' ? new Maglev([stable, canary], { key: 'source-ip', tableSize: 65537 }) : new ConsistentHash([stable, canary], { key: 'source-ip', vnodes: 160, balanceFactor: 0 })
    const first = Array.from({ length: 20_000 }, (_, i) => bal.pick(ctx(i)))
    const share = first.filter((b) => b === canary).length / first.length
    t.ok(share > 0.09 && share < 0.11, `canary share ${(share * 100).toFixed(2)}%`)
    const again = Array.from({ length: 20_000 }, (_, i) => bal.pick(ctx(i)))
    t.same(again, first, 'every client goes where it went before')
    // Promote the canary to 50/50: only clients move towards it, none away from it.
    canary.weight = 90
    bal.onWeightChange?.(canary)
    const promoted = Array.from({ length: 20_000 }, (_, i) => bal.pick(ctx(i)))
    const leftCanary = promoted.filter((b, i) => first[i] === canary && b !== canary).length
    t.ok(leftCanary / 20_000 < (alg === 'maglev' ? 0.01 : 0.0001), `canary clients that moved away on promotion: ${leftCanary}`)
    const share2 = promoted.filter((b) => b === canary).length / promoted.length
    t.ok(share2 > 0.45 && share2 < 0.55, `after promotion: ${(share2 * 100).toFixed(1)}%`)
  })
}

t.test('an excluded backend sends its keys to the next slot’s backend, deterministically', async (t) => {
  const members = makeBackends(5)
  const m = new Maglev(members, { key: 'source-ip', tableSize: 65537 })
  const b = m.pick(ctx(9)) as Backend
  const avoid = new SetExclusion(new Set([b]))
  const next = m.pick(ctx(9), avoid)
  t.ok(next !== undefined && next !== b)
  for (let i = 0; i < 10; i++) t.equal(m.pick(ctx(9), avoid), next, 'same retry target', { diagnostic: false })
})

t.test('membership changes are batched into one build on the next pick', async (t) => {
  const members = makeBackends(100)
  const m = new Maglev([], { key: 'source-ip', tableSize: 65537 })
  let builds = 0
  const build = m.table.build.bind(m.table)
  m.table.build = (x) => {
    builds++
    build(x)
  }
  for (const b of members) m.onBackendUp(b)
  t.equal(builds, 0, 'no build until a pick')
  m.pick(ctx(1))
  m.pick(ctx(2))
  t.equal(builds, 1, 'one build for 100 backends joining')
})
