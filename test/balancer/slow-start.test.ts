import t from 'tap'
import { Registry } from 'prom-client'
import type { Backend } from '../../src/upstream/backend.js'
import type { PickContext } from '../../src/balancer/types.js'
import { SLOW_START_FLOOR, SlowStart, rampAt } from '../../src/balancer/slow-start.js'
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
  t.equal(b.ramp, SLOW_START_FLOOR, 'at the floor when it joins')
  clock.now = 1000
  s.tick()
  t.equal(b.ramp.toFixed(2), '0.19', 'a tenth of the way: 10% + 90% × 0.1, already above the floor')
  clock.now = 5000
  s.tick()
  t.equal(b.ramp, 0.55, 'half way: half way from 10% to 100%')
  t.equal(b.effectiveWeight, 5.5)
  clock.now = 5100
  s.tick()
  t.equal(b.ramp, 0.55, 'no step before the step interval (period/50 = 200ms) has passed')
  clock.now = 10_000
  s.tick()
  t.equal(b.ramp, 1)
  t.equal(b.effectiveWeight, 10)
  t.notOk(s.active, 'done ramping')
  t.same(changed, [`${b.id}@0.19`, `${b.id}@0.55`, `${b.id}@1.00`], 'the balancer was told at each step that changed the weight')
})

t.test('rampAt: 10% at the start, linear, full weight at the end of the period', async (t) => {
  t.equal(rampAt(0, 10_000), 0.1)
  t.equal(rampAt(2_500, 10_000), 0.325)
  t.equal(rampAt(10_000, 10_000), 1)
  t.equal(rampAt(60_000, 10_000), 1)
  t.equal(rampAt(-5, 10_000), 0.1, 'a clock read before the join counts as the join')
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

function pool(algorithm: string, slowStart: string, backends: string[], now?: () => number): Pool {
  const cfg = parseConfig(
    `
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p: { algorithm: ${algorithm}, slow_start: ${slowStart}, backends: [${backends.join(', ')}] }
`,
    'x.yaml',
    {},
  )
  return new Pool(cfg.pools.get('p') as NonNullable<ReturnType<typeof cfg.pools.get>>, new Metrics(new Registry()), now)
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

t.test('pool: a first check that passes starts a backend at full weight; one that failed ramps when it comes up', async (t) => {
  const p = pool('round-robin', '1h', ['10.0.0.1:80', '10.0.0.2:80', '10.0.0.3:80'])
  const [a, b, c] = p.backends as [Backend, Backend, Backend]
  // What the health owner does at start-up: out of rotation until the first probe, then its verdict.
  for (const x of [a, b, c]) p.setState(x, 'down')
  p.setState(a, 'up', true)
  p.setState(b, 'down', true)
  p.setState(c, 'up', true)
  t.equal(a.ramp, 1, 'a backend the pool started with, whose first check passed: full weight')
  t.equal(c.ramp, 1)
  t.equal(b.state, 'down')
  // b's server comes up later and a check passes: it has been down, so it ramps.
  p.setState(b, 'up')
  t.equal(b.ramp, SLOW_START_FLOOR, 'the backend that was down at start-up ramps from 10% when it comes up')
  const s = share(p, b)
  t.ok(Math.abs(s - 0.1 / 2.1) < 0.01, `its share: ${(s * 100).toFixed(1)}% (10% of a weight against two full ones: ${((0.1 / 2.1) * 100).toFixed(1)}%)`)
  // Later verdicts are never a start: down and up again ramps.
  p.setState(a, 'down')
  p.setState(a, 'up', true)
  t.equal(a.ramp, SLOW_START_FLOOR, 'a second entry into the rotation ramps even if called a first check')
})

t.test('pool: a backend added by a reload ramps from its first passing check', async (t) => {
  const clock = { now: 0 }
  const p = pool('round-robin', '10s', ['10.0.0.1:80'], () => clock.now)
  const next = parseConfig(
    `
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p: { algorithm: round-robin, slow_start: 10s, backends: [10.0.0.1:80, 10.0.0.2:80] }
`,
    'x.yaml',
    {},
  )
  p.update(next.pools.get('p') as NonNullable<ReturnType<typeof next.pools.get>>)
  const b = p.backends[1] as Backend
  p.setState(b, 'down') // waits for its first probe
  clock.now = 8000 // a slow first probe; meanwhile the pool serves
  share(p, b, 100)
  p.setState(b, 'up', true)
  share(p, b, 100)
  t.equal(b.ramp, SLOW_START_FLOOR, 'the ramp starts when it becomes usable, not when the reload added it')
})

/**
 * The ramp's shape, 100 ms at a time, on a clock the test moves: three backends of weight 1,
 * slow_start 10s, the middle one comes back at t = 0. In each window its share must follow
 * weight r(t) against two of weight 1, r(t) = 10% + 90% × t / 10s, give or take the step the
 * ramp moves in (period/50 = 200 ms): r(t - 200 ms) ≤ its weight ≤ r(t).
 */
for (const [algorithm, picks, random] of [
  ['round-robin', 1000, false],
  ['least-connections', 1000, false],
  ['random', 20_000, true],
  ['power-of-two', 20_000, true],
] as const) {
  t.test(`pool (${algorithm}): per 100 ms, the share of a returning backend rises from 10% of its weight to all of it`, async (t) => {
    const clock = { now: 0 }
    const p = pool(algorithm, '10s', ['10.0.0.1:80', '10.0.0.2:80', '10.0.0.3:80'], () => clock.now)
    const b = p.backends[1] as Backend
    const period = 10_000
    const r = (ms: number): number => 0.1 + (0.9 * Math.min(period, Math.max(0, ms))) / period
    const shareOf = (w: number): number => w / (w + 2)
    // A schedule is off by a pick or two per window; a random draw by its sampling error (4.5 sd).
    const slackAt = (share: number): number => (random ? 4.5 * Math.sqrt((share * (1 - share)) / picks) : 2 / picks)
    p.setState(b, 'down')
    p.setState(b, 'up')
    const shares: number[] = []
    const off: string[] = []
    for (let k = 0; k < 110; k++) {
      clock.now = k * 100
      let n = 0
      for (let i = 0; i < picks; i++) if (p.pick({ ...ctx, remoteAddress: `10.${k}.${(i >> 8) & 255}.${i & 255}` }) === b) n++
      const got = n / picks
      shares.push(got)
      // Over the window [t, t + 100 ms) the weight in effect is at least r(t - 200 ms), at most r(t).
      const lo = shareOf(r(clock.now - 200)) - slackAt(shareOf(r(clock.now - 200)))
      const hi = shareOf(r(clock.now)) + slackAt(shareOf(r(clock.now)))
      if (got < lo || got > hi) off.push(`${clock.now} ms: ${(got * 100).toFixed(2)}% not in ${(lo * 100).toFixed(2)}–${(hi * 100).toFixed(2)}%`)
    }
    t.same(off, [], 'every 100 ms window follows the ramp')
    t.ok(Math.abs((shares[0] as number) - shareOf(0.1)) <= slackAt(shareOf(0.1)), `first 100 ms: ${((shares[0] as number) * 100).toFixed(2)}% (weight 10% against two full: ${(shareOf(0.1) * 100).toFixed(2)}%)`)
    t.ok((shares[9] as number) > (shares[0] as number) + 0.02, `it rises within the first second: ${((shares[9] as number) * 100).toFixed(2)}% at 900 ms`)
    t.ok(Math.abs((shares[105] as number) - 1 / 3) <= slackAt(1 / 3), `after the period: its full third (${((shares[105] as number) * 100).toFixed(2)}%)`)
    t.equal(b.ramp, 1, 'done ramping')
  })
}

t.test('pool: two workers that hear of a return at different moments ramp alike, from the control plane\'s timestamp', async (t) => {
  // Each worker thread has a monotonic clock of its own (a different origin); the message
  // carries the decision's wall-clock time (epoch ms), which both compare with Date.now().
  const clockA = { now: 500 }
  const clockB = { now: 90_000 }
  const pa = pool('round-robin', '10s', ['10.0.0.1:80', '10.0.0.2:80'], () => clockA.now)
  const pb = pool('round-robin', '10s', ['10.0.0.1:80', '10.0.0.2:80'], () => clockB.now)
  const late = pool('round-robin', '10s', ['10.0.0.1:80', '10.0.0.2:80'], () => clockB.now)
  const [, a] = pa.backends as [Backend, Backend]
  const [, b] = pb.backends as [Backend, Backend]
  const [, c] = late.backends as [Backend, Backend]
  for (const [p, x] of [[pa, a], [pb, b], [late, c]] as const) p.setState(x, 'down')
  const decidedAt = 1_000_000
  const realNow = Date.now
  try {
    Date.now = () => decidedAt // worker A hears at once
    pa.setState(a, 'up', false, decidedAt)
    Date.now = () => decidedAt + 3000 // worker B 3 s later (its clock moved as much)
    clockB.now += 3000
    pb.setState(b, 'up', false, decidedAt)
    late.setState(c, 'up') // without the timestamp: from when it heard
  } finally {
    Date.now = realNow
  }
  // 5 s after the decision, in either clock.
  clockA.now = 500 + 5000
  clockB.now = 90_000 + 5000
  for (const p of [pa, pb, late]) p.pick(ctx)
  t.equal(a.ramp, rampAt(5000, 10_000), 'worker A: 5 s into the ramp')
  t.equal(b.ramp, a.ramp, 'worker B, which heard 3 s late, has the same ramp')
  t.equal(c.ramp, rampAt(2000, 10_000), 'a ramp timed from the hearing would be 3 s behind')
})
