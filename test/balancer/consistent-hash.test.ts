import t from 'tap'
import type { Backend } from '../../src/upstream/backend.js'
import type { PickContext } from '../../src/balancer/types.js'
import { ConsistentHash } from '../../src/balancer/consistent-hash.js'
import { SetExclusion, makeBackends } from './helpers.js'

const ctx = (i: number): PickContext => ({ protocol: 'tcp', remoteAddress: `10.2.${(i >> 8) & 255}.${i & 255}`, remotePort: 1000 })
const ring = (members: readonly Backend[], balanceFactor = 0): ConsistentHash => new ConsistentHash(members, { key: 'source-ip', vnodes: 160, balanceFactor })

t.test('vnodes in proportion to weight', async (t) => {
  const [a, b] = makeBackends(2) as [Backend, Backend]
  b.weight = 3
  const c = ring([a, b])
  c.ring.prepare()
  t.equal(c.ring.pointsOf(a), 160)
  t.equal(c.ring.pointsOf(b), 480)
  t.equal(c.ring.size, 640)
})

t.test('bounded load: no backend holds more than factor × its share of open connections', async (t) => {
  const members = makeBackends(4)
  const c = ring(members, 1.25)
  // Every client hashes to the same place: plain hashing would pile them all on one backend.
  const same = ctx(7)
  const first = c.pick(same) as Backend
  for (let i = 0; i < 100; i++) {
    const b = c.pick(same) as Backend
    b.active++
    c.onConnectionOpen(b)
  }
  const loads = members.map((m) => m.active)
  t.equal(loads.reduce((x, y) => x + y, 0), 100)
  for (const m of members) t.ok(m.active <= Math.ceil(1.25 * 25), `${m.id} holds ${m.active} ≤ ceil(1.25 × 25)`)
  t.ok(first.active >= 25, 'the hashed backend is still filled first, up to the bound')
  // Connections close: the client returns to its own backend.
  for (const m of members) {
    while (m.active > 0) {
      m.active--
      c.onConnectionClose(m)
    }
  }
  t.equal(c.pick(same), first, 'with the load gone, the key is on its own backend again')
})

t.test('bounded load respects weights', async (t) => {
  const [a, b] = makeBackends(2) as [Backend, Backend]
  a.weight = 3
  const c = ring([a, b], 1)
  for (let i = 0; i < 400; i++) {
    const x = c.pick(ctx(i)) as Backend
    x.active++
    c.onConnectionOpen(x)
  }
  t.ok(a.active <= 300 && b.active <= 100, `factor 1: exactly the weighted shares (${a.active}/${b.active})`)
})

t.test('without a bound, load does not change where a key goes', async (t) => {
  const members = makeBackends(3)
  const c = ring(members)
  const b = c.pick(ctx(1)) as Backend
  b.active = 1000
  t.equal(c.pick(ctx(1)), b)
})

t.test('an excluded backend sends its keys round the ring to the next backend, deterministically', async (t) => {
  const members = makeBackends(5)
  const c = ring(members)
  const b = c.pick(ctx(3)) as Backend
  const avoid = new SetExclusion(new Set([b]))
  const next = c.pick(ctx(3), avoid)
  t.not(next, b)
  t.equal(c.pick(ctx(3), avoid), next, 'the same retry target every time')
  c.onBackendDown(b)
  t.equal(c.pick(ctx(3)), next, 'the same backend that takes its keys when it goes down')
})

t.test('growing a backend (slow start) only moves keys towards it', async (t) => {
  const members = makeBackends(5)
  const c = ring(members)
  const x = members[2] as Backend
  x.ramp = 0.1
  c.onWeightChange(x)
  const owner = (i: number): Backend => c.pick(ctx(i)) as Backend
  let before = Array.from({ length: 5000 }, (_, i) => owner(i))
  for (const ramp of [0.3, 0.6, 1]) {
    x.ramp = ramp
    c.onWeightChange(x)
    const after = Array.from({ length: 5000 }, (_, i) => owner(i))
    const wrong = after.filter((b, i) => b !== before[i] && b !== x).length
    t.equal(wrong, 0, `ramp ${ramp}: every key that moved went to the ramping backend`)
    before = after
  }
})
