import t from 'tap'
import type { Backend } from '../../src/upstream/backend.js'
import type { PickContext } from '../../src/balancer/types.js'
import { PowerOfTwo } from '../../src/balancer/power-of-two.js'
import { RandomBalancer } from '../../src/balancer/random.js'
import { First } from '../../src/balancer/first.js'
import { Rng, type RandomSource } from '../../src/balancer/rng.js'
import { SetExclusion, makeBackends } from './helpers.js'

const ctx: PickContext = { protocol: 'tcp', remoteAddress: '10.0.0.1', remotePort: 1 }

/** A seeded source so draws are reproducible. */
const seeded = (seed: number): RandomSource => new Rng(seed)

t.test('power-of-two: of the two drawn, the one with fewer connections wins', async (t) => {
  const [a, b] = makeBackends(2) as [Backend, Backend]
  const p = new PowerOfTwo([a, b], seeded(1))
  a.active = 5
  for (let i = 0; i < 200; i++) t.equal(p.pick(ctx), b, 'b is lighter', { diagnostic: false })
  b.active = 10
  for (let i = 0; i < 200; i++) t.equal(p.pick(ctx), a, 'now a is', { diagnostic: false })
})

t.test('power-of-two: connections held open spread evenly', async (t) => {
  const members = makeBackends(10)
  const p = new PowerOfTwo(members, seeded(2))
  for (let i = 0; i < 10_000; i++) (p.pick(ctx) as Backend).active++
  const loads = members.map((m) => m.active)
  t.ok(Math.max(...loads) - Math.min(...loads) <= 20, `max-min spread of held connections is small: ${loads.join(' ')}`)
})

t.test('power-of-two: load is compared per unit of weight', async (t) => {
  const [a, b] = makeBackends(2) as [Backend, Backend]
  a.weight = 4
  const p = new PowerOfTwo([a, b], seeded(3))
  for (let i = 0; i < 5000; i++) (p.pick(ctx) as Backend).active++
  t.ok(Math.abs(a.active / b.active - 4) < 0.1, `held connections follow weights 4:1 (${a.active}:${b.active})`)
})

t.test('power-of-two: both draws excluded → the least loaded of the rest', async (t) => {
  const members = makeBackends(4)
  const [a, b, c, d] = members as [Backend, Backend, Backend, Backend]
  const p = new PowerOfTwo(members, { next: () => 0 }) // always draws a, then b
  c.active = 3
  d.active = 1
  t.equal(p.pick(ctx, new SetExclusion(new Set([a, b]))), d)
  t.equal(p.pick(ctx, new SetExclusion(new Set([a]))), b, 'one draw excluded → the other')
})

t.test('random: a seeded source gives the weighted shares', async (t) => {
  const members = makeBackends(3).map((b, i) => ((b.weight = [1, 3, 6][i] as number), b))
  const r = new RandomBalancer(members, seeded(4))
  const counts = new Map<Backend, number>()
  for (let i = 0; i < 100_000; i++) {
    const b = r.pick(ctx) as Backend
    counts.set(b, (counts.get(b) ?? 0) + 1)
  }
  for (const b of members) t.ok(Math.abs((counts.get(b) ?? 0) / 100_000 - b.weight / 10) < 0.01, `weight ${b.weight}: ${(counts.get(b) ?? 0) / 1000}%`)
})

t.test('random: the fallback scan keeps the draw weighted among the rest', async (t) => {
  const members = makeBackends(3).map((b, i) => ((b.weight = [100, 1, 3][i] as number), b))
  const r = new RandomBalancer(members, seeded(5))
  const avoid = new SetExclusion(new Set([members[0] as Backend]))
  let heavy = 0
  for (let i = 0; i < 40_000; i++) if (r.pick(ctx, avoid) === members[2]) heavy++
  t.ok(Math.abs(heavy / 40_000 - 0.75) < 0.02, `weight 3 vs 1 among the rest: ${((heavy / 40_000) * 100).toFixed(1)}%`)
})

t.test('first: fills backends in list order, skipping full ones', async (t) => {
  const members = makeBackends(3)
  const f = new First([members[2] as Backend, members[0] as Backend, members[1] as Backend])
  const full = { has: (b: Backend): boolean => b.active >= 2 }
  const got: string[] = []
  for (let i = 0; i < 6; i++) {
    const b = f.pick(ctx, full) as Backend
    b.active++
    got.push(b.id.split('.')[3] as string)
  }
  t.same(got, ['0:5432', '0:5432', '1:5432', '1:5432', '2:5432', '2:5432'], 'two each, in list order')
  t.equal(f.pick(ctx, full), undefined, 'all full: nothing')
  ;(members[1] as Backend).active--
  t.equal(f.pick(ctx, full), members[1], 'a freed slot on the second is taken before anything else')
  f.onBackendDown(members[0] as Backend)
  f.onBackendUp(members[0] as Backend)
  ;(members[0] as Backend).active = 0
  t.equal(f.pick(ctx, full), members[0], 'back up: first in line again')
})
