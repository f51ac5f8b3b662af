import t from 'tap'
import { Registry } from 'prom-client'
import type { Backend } from '../../src/upstream/backend.js'
import type { PickContext } from '../../src/balancer/types.js'
import { SLOW_START_FLOOR, SlowStart } from '../../src/balancer/slow-start.js'
import { Pool } from '../../src/upstream/pool.js'
import { Metrics } from '../../src/metrics/metrics.js'
import { parseConfig } from '../../src/config/load.js'
import { makeBackends } from './helpers.js'

t.test('a joining backend ramps linearly from 10% to its full weight over the period', async (t) => {
  const clock = { now: 0 }
  const changed: string[] = []
  const s = new SlowStart(10_000, (b) => changed.push(`${b.id}@${b.ramp.toFixed(2)}`), () => clock.now)
  const [b] = makeBackends(1) as [Backend]
  b.weight = 10
  s.join(b)
  t.equal(b.ramp, SLOW_START_FLOOR)
  t.equal(b.effectiveWeight, 1, '10% of weight 10')
  t.ok(s.active)
  s.tick()
  t.equal(b.ramp, SLOW_START_FLOOR, 'still at the floor while elapsed/period < 10%')
  clock.now = 5000
  s.tick()
  t.equal(b.ramp, 0.5, 'half way: half the weight')
  t.equal(b.effectiveWeight, 5)
  clock.now = 5100
  s.tick()
  t.equal(b.ramp, 0.5, 'no step before the step interval (period/50 = 200ms) has passed')
  clock.now = 10_000
  s.tick()
  t.equal(b.ramp, 1)
  t.equal(b.effectiveWeight, 10)
  t.notOk(s.active, 'done ramping')
  t.same(changed, [`${b.id}@0.50`, `${b.id}@1.00`], 'the balancer was told at each step that changed the weight')
})

t.test('a backend that leaves the rotation mid-ramp is dropped; rejoining restarts its ramp', async (t) => {
  const clock = { now: 0 }
  const s = new SlowStart(1000, () => {}, () => clock.now)
  const [b] = makeBackends(1) as [Backend]
  s.join(b)
  clock.now = 500
  b.state = 'down'
  s.tick()
  t.notOk(s.active)
  t.equal(b.ramp, 1)
  b.state = 'up'
  s.join(b)
  t.equal(b.ramp, SLOW_START_FLOOR, 'starts over')
})

t.test('period 0 means off; configuring 0 ends ramps at once', async (t) => {
  const [a, b] = makeBackends(2) as [Backend, Backend]
  const off = new SlowStart(0, () => {})
  off.join(a)
  t.equal(a.ramp, 1)
  const told: Backend[] = []
  const s = new SlowStart(60_000, (x) => told.push(x))
  s.join(b)
  s.configure(0)
  t.equal(b.ramp, 1)
  t.same(told, [b])
  t.notOk(s.active)
})

const ctx: PickContext = { protocol: 'tcp', remoteAddress: '10.0.0.1', remotePort: 1 }

function pool(algorithm: string, slowStart: string, backends: string[]): Pool {
  const cfg = parseConfig(
    `
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p: { algorithm: ${algorithm}, slow_start: ${slowStart}, backends: [${backends.join(', ')}] }
`,
    'x.yaml',
    {},
  )
  return new Pool(cfg.pools.get('p') as NonNullable<ReturnType<typeof cfg.pools.get>>, new Metrics(new Registry()))
}

function share(p: Pool, b: Backend, picks = 11_000): number {
  let n = 0
  for (let i = 0; i < picks; i++) if (p.pick({ ...ctx, remoteAddress: `10.0.${(i >> 8) & 255}.${i & 255}` }) === b) n++
  return n / picks
}

for (const algorithm of ['round-robin', 'least-connections', 'random', 'consistent-hash', 'maglev']) {
  t.test(`pool (${algorithm}): backends at start-up take full weight; one coming back up starts at 10%`, async (t) => {
    const p = pool(algorithm, '1h', ['10.0.0.1:80', '10.0.0.2:80'])
    const [a, b] = p.backends as [Backend, Backend]
    t.equal(a.ramp, 1, 'no slow start at start-up')
    t.ok(Math.abs(share(p, b) - 0.5) < 0.05, 'even split at start')
    p.setState(b, 'down')
    p.setState(b, 'up')
    t.equal(b.ramp, SLOW_START_FLOOR)
    const s = share(p, b)
    t.ok(Math.abs(s - 0.1 / 1.1) < 0.03, `back up: ${(s * 100).toFixed(1)}% of connections (10% weight vs 100%: ${((0.1 / 1.1) * 100).toFixed(1)}%)`)
  })
}

t.test('pool: a backend added by a reload slow-starts; one that stays keeps its weight', async (t) => {
  const p = pool('round-robin', '1h', ['10.0.0.1:80'])
  const next = parseConfig(
    `
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p: { algorithm: round-robin, slow_start: 1h, backends: [10.0.0.1:80, 10.0.0.2:80] }
`,
    'x.yaml',
    {},
  )
  p.update(next.pools.get('p') as NonNullable<ReturnType<typeof next.pools.get>>)
  const [a, b] = p.backends as [Backend, Backend]
  t.equal(a.ramp, 1)
  t.equal(b.ramp, SLOW_START_FLOOR)
  t.ok(Math.abs(share(p, b) - 0.1 / 1.1) < 0.01, 'the new backend gets ~9% at first')
})

t.test('pool without slow_start: a backend coming back takes its full share at once', async (t) => {
  const p = pool('round-robin', 'off', ['10.0.0.1:80', '10.0.0.2:80'])
  const b = p.backends[1] as Backend
  p.setState(b, 'down')
  p.setState(b, 'up')
  t.equal(b.ramp, 1)
  t.ok(Math.abs(share(p, b) - 0.5) < 0.01)
})
