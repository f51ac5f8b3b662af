import t from 'tap'
import { Registry } from 'prom-client'
import { Metrics } from '../../src/metrics/metrics.js'
import { Pool } from '../../src/upstream/pool.js'
import type { Backend } from '../../src/upstream/backend.js'
import type { HealthCheckConfig, PoolConfig } from '../../src/config/types.js'
import { HealthChecker } from '../../src/health/checker.js'
import { PoolHealth } from '../../src/health/pool-health.js'
import { RiseFall, type Transition } from '../../src/health/rise-fall.js'
import type { Probe } from '../../src/health/probe.js'
import { createLogger } from '../../src/log.js'
import { LogSink } from '../helpers/daemon.js'
import { eventually } from '../helpers/net.js'
import { scripted, lines } from './probe-helpers.js'

function poolOf(ports: number[], extra: Partial<PoolConfig> = {}): { pool: Pool; metrics: Metrics; registry: Registry } {
  const registry = new Registry()
  const metrics = new Metrics(registry)
  const cfg: PoolConfig = {
    name: 'p',
    algorithm: 'round-robin',
    algorithmOptions: undefined,
    backends: ports.map((port) => ({ address: `127.0.0.1:${port}`, host: '127.0.0.1', port, weight: 1, backup: false, maxConnections: 0 })),
    connectTimeoutMs: 1000,
    retries: 0,
    slowStartMs: 0,
    ...extra,
  }
  return { pool: new Pool(cfg, metrics), metrics, registry }
}

function check(over: Partial<HealthCheckConfig> = {}): HealthCheckConfig {
  return { type: 'tcp', intervalMs: 30, timeoutMs: 30, rise: 2, fall: 3, jitterMs: 0, port: 0, options: null, ...over }
}

const ctx = { protocol: 'tcp' as const, remoteAddress: '127.0.0.1', remotePort: 1 }

t.test('rise/fall: the first result decides alone; then rise passes or fall failures in a row', async (t) => {
  const rf = new RiseFall(2, 3)
  const seq = (oks: boolean[]): Transition[] => oks.map((ok) => rf.observe(ok))
  t.same(seq([false]), ['unchanged'], 'first failure: stays down')
  t.same(seq([true, true]), ['pending', 'changed'], 'rise 2')
  t.equal(rf.healthy, true)
  t.same(seq([false, false, true, false, false, false]), ['pending', 'pending', 'unchanged', 'pending', 'pending', 'changed'], 'a pass resets the fall streak')
  t.equal(rf.progress(false), 'fall 3/3')
  t.equal(rf.healthy, false)
  const fresh = new RiseFall(5, 5)
  t.equal(fresh.observe(true), 'changed', 'a first pass brings it up at once, whatever rise is')
})

t.test('checker: never more than one probe in flight per backend; a slow probe delays the next', async (t) => {
  const { pool, metrics } = poolOf([1, 2])
  const inFlight = new Map<number, number>()
  let maxInFlight = 0
  const calls: number[] = []
  const probe: Probe = {
    check: async (target) => {
      calls.push(target.port)
      const n = (inFlight.get(target.port) ?? 0) + 1
      inFlight.set(target.port, n)
      maxInFlight = Math.max(maxInFlight, n)
      await new Promise((r) => setTimeout(r, 100)) // 3+ intervals long
      inFlight.set(target.port, n - 1)
      return { ok: true, detail: 'slow' }
    },
  }
  const c = new HealthChecker(pool, check({ intervalMs: 30 }), metrics, () => {}, probe)
  t.teardown(() => c.close())
  await c.start()
  await eventually(() => calls.length >= 6, 'six probes')
  t.equal(maxInFlight, 1, 'one probe in flight per backend at most')
  t.same(new Set(calls), new Set([1, 2]), 'both backends probed')
})

/**
 * A chain of `ms` timers, each set when the last fired, running until `done()`: the mean gap
 * this process's timers really kept meanwhile. Every delay of a busy machine adds to it, so it
 * is the baseline a schedule on a fixed grid (which skips what it missed) cannot fall behind.
 */
function timerChain(ms: number, done: () => boolean): Promise<number> {
  return new Promise((resolve) => {
    const start = performance.now()
    let n = 0
    const tick = (): void => {
      n++
      if (done()) resolve((performance.now() - start) / n)
      else setTimeout(tick, ms)
    }
    setTimeout(tick, ms)
  })
}

t.test('checker: probes follow the interval, on a grid, and stop on close', async (t) => {
  const { pool, metrics } = poolOf([1])
  const at: number[] = []
  const probe: Probe = { check: async () => (at.push(performance.now()), { ok: true, detail: 'ok' }) }
  const c = new HealthChecker(pool, check({ intervalMs: 40 }), metrics, () => {}, probe)
  await c.start()
  const baseline = await timerChain(40, () => at.length >= 9)
  c.close()
  const n = at.length
  const gaps = at.slice(1).map((x, i) => x - (at[i] as number))
  const mean = ((at.at(-1) as number) - (at[0] as number)) / (at.length - 1)
  // Never sooner than the interval; later only as much as the process's own timers were (a
  // skipped slot adds one interval over the eight gaps).
  t.ok(mean >= 39 && mean < baseline + 10, `probes one interval apart on average (${mean.toFixed(1)} ms, timers kept ${baseline.toFixed(1)}; gaps ${gaps.map((g) => g.toFixed(0)).join(', ')} ms)`)
  t.ok(gaps.every((g) => g >= 20), 'none sooner than half an interval after the previous one')
  await new Promise((r) => setTimeout(r, 120))
  t.equal(at.length, n, 'no probe after close')
})

t.test('checker: jitter adds 0..jitter to each interval', async (t) => {
  const { pool, metrics } = poolOf([1])
  const at: number[] = []
  const probe: Probe = { check: async () => (at.push(performance.now()), { ok: true, detail: 'ok' }) }
  const c = new HealthChecker(pool, check({ intervalMs: 20, jitterMs: 20 }), metrics, () => {}, probe)
  t.teardown(() => c.close())
  await c.start()
  const baseline = await timerChain(20, () => at.length >= 13)
  const gaps = at.slice(1).map((x, i) => x - (at[i] as number))
  const mean = ((at.at(-1) as number) - (at[0] as number)) / (at.length - 1)
  // At most the delay of the process's own 20 ms timers plus the jitter's 20 ms.
  t.ok(mean >= 24 && mean < baseline + 25, `a mean gap of interval + jitter/2 = 30 ms, give or take (${mean.toFixed(1)} ms, 20 ms timers kept ${baseline.toFixed(1)}; gaps ${gaps.map((g) => g.toFixed(0)).join(', ')})`)
  t.ok(gaps.every((g) => g >= 10), 'none sooner than half an interval after the previous one')
})

t.test('pool health over a real server: starts down until the first probe, falls after 3, rises after 2', async (t) => {
  let healthy = true
  let probes = 0
  const srv = await scripted(t, (s) => lines(s, (l) => {
    if (l !== 'STATUS') return
    probes++
    // Sick: the answer, then the server's close, so a failing probe fails at once and the
    // probe's timeout only bounds a hang (a passing probe on a busy machine may take long).
    if (healthy) s.write('ok\r\n')
    else s.end('sick\r\n')
  }))
  const { pool, metrics, registry } = poolOf([srv.port], {
    healthCheck: check({ type: 'send-expect', intervalMs: 40, timeoutMs: 5000, options: { steps: [{ send: 'STATUS\r\n' }, { expect: 'ok' }] } }),
  })
  const logs = new LogSink()
  const h = new PoolHealth(pool, createLogger('debug', logs), metrics)
  t.teardown(() => h.close())
  const b = pool.backends[0] as Backend
  const first = h.start()
  t.equal(b.state, 'down', 'down before its first probe answers')
  t.equal(pool.pick(ctx), undefined, 'no traffic before the first probe')
  await first
  t.equal(b.state, 'up', 'up after its first probe passed')
  t.match(logs.lines.find((l) => l.level === 'info' && String(l.msg).includes('is up')), { msg: `backend ${b.id} is up: first check passed: matched "ok"`, pool: 'p', check: 'send-expect' })

  healthy = false
  const flippedAt = Date.now()
  const probesAtFlip = probes
  const down = await logs.waitFor((l) => String(l.msg).includes('is down'), 20_000)
  t.equal(down.msg, `backend ${b.id} is down: fall 3/3: closed by the backend before "ok"; got "sick"`)
  t.equal(down.code, 'SLUICE_ERR_HEALTH_CHECK')
  // Two intervals between the first failing probe and the third, less the slack of timers
  // (a timer can fire a little early against Date.now(), and the first probe may be due now).
  const took = Date.now() - flippedAt
  t.ok(took >= 2 * 40 - 10, `not before three probes could run (${took} ms)`)
  t.ok(probes - probesAtFlip >= 3, 'three failed probes before the change')
  t.equal(b.state, 'down')
  t.equal(pool.pick(ctx), undefined)
  t.ok(logs.lines.some((l) => String(l.msg).includes('(fall 1/3)')) && logs.lines.some((l) => String(l.msg).includes('(fall 2/3)')), 'pending steps logged at debug')
  t.equal(logs.lines.filter((l) => String(l.msg).includes('is down')).length, 1, 'the transition logged once')

  healthy = true
  const up = await logs.waitFor((l) => String(l.msg).includes('is up: rise'), 20_000)
  t.equal(up.msg, `backend ${b.id} is up: rise 2/2: matched "ok"`)
  t.equal(b.state, 'up')
  t.equal(pool.pick(ctx), b)
  const text = await registry.metrics()
  t.match(text, new RegExp(`sluice_health_checks_total\\{pool="p",backend="${b.id}",result="failure"\\} [3-9]`))
  t.match(text, new RegExp(`sluice_backend_up\\{pool="p",backend="${b.id}"\\} 1`))
})

t.test('pool health: draining and disabled are an operator\'s word; checks do not change them', async (t) => {
  const srv = await scripted(t, () => {})
  const { pool, metrics } = poolOf([srv.port], { healthCheck: check({ intervalMs: 20, timeoutMs: 20 }) })
  const logs = new LogSink()
  const h = new PoolHealth(pool, createLogger('info', logs), metrics)
  t.teardown(() => h.close())
  await h.start()
  const b = pool.backends[0] as Backend
  pool.setState(b, 'draining')
  const passes = async (): Promise<number> => (await metrics.healthChecksTotal.get()).values.find((v) => v.labels.result === 'success')?.value ?? 0
  const before = await passes()
  await eventually(async () => (await passes()) >= before + 3, 'three more passing probes')
  t.equal(b.state, 'draining', 'still draining while its checks pass')
  t.equal(b.healthState, 'up', 'what enable would return it to')
})

t.test('checker: first probes of many backends are spread, then each keeps its own share of the interval', async (t) => {
  const n = 200
  const interval = 300
  const { pool, metrics } = poolOf(Array.from({ length: n }, (_, i) => 10_000 + i))
  const starts = new Map<number, number[]>()
  const t0 = performance.now()
  const probe: Probe = {
    check: async (target) => {
      const list = starts.get(target.port) ?? []
      list.push(performance.now() - t0)
      starts.set(target.port, list)
      return { ok: true, detail: 'ok' }
    },
  }
  const c = new HealthChecker(pool, check({ intervalMs: interval, timeoutMs: interval, jitterMs: 0 }), metrics, () => {}, probe)
  t.teardown(() => c.close())
  await c.start()
  const firsts = [...starts.values()].map((l) => l[0] as number).sort((a, b) => a - b)
  t.equal(firsts.length, n, 'every backend had its first probe before start resolved')
  const span = (firsts.at(-1) as number) - (firsts[0] as number)
  const expected = (n - 1) * Math.min(1, interval / n)
  t.ok(span >= expected * 0.9 && span <= expected + 150, `the first round spread over ${span.toFixed(0)} ms (${expected.toFixed(0)} expected: ${n} backends, one a ms at most), not in one burst`)
  await eventually(() => [...starts.values()].every((l) => l.length >= 3), 'three probes of every backend')
  // After the first round: how many probes start within any tenth of the interval. In
  // lockstep that is all of them; spread, about n / 10.
  const later = [...starts.values()].flatMap((l) => l.slice(1, 3)).sort((a, b) => a - b)
  let busiest = 0
  for (let i = 0, j = 0; i < later.length; i++) {
    while ((later[i] as number) - (later[j] as number) > interval / 10) j++
    busiest = Math.max(busiest, i - j + 1)
  }
  t.ok(busiest <= n / 2, `at most ${busiest} of ${n} backends' probes start within any ${interval / 10} ms`)
})

t.test('checker: a small pool is checked within a few ms of start, not an interval later', async (t) => {
  const { pool, metrics } = poolOf([1, 2, 3])
  const at: number[] = []
  const t0 = performance.now()
  const probe: Probe = { check: async () => (at.push(performance.now() - t0), { ok: true, detail: 'ok' }) }
  const c = new HealthChecker(pool, check({ intervalMs: 10_000, timeoutMs: 1000, jitterMs: 1000 }), metrics, () => {}, probe)
  t.teardown(() => c.close())
  await c.start()
  t.equal(at.length, 3)
  t.ok((at.at(-1) as number) < 500, `all three first probes within ${(at.at(-1) as number).toFixed(1)} ms`)
})

t.test('checker: after the process stalls, each backend returns to its own place in the interval', async (t) => {
  const n = 50
  const interval = 200
  const { pool, metrics } = poolOf(Array.from({ length: n }, (_, i) => 20_000 + i))
  const starts: number[] = []
  let stalled = false
  const probe: Probe = {
    check: async () => {
      starts.push(performance.now())
      if (!stalled && starts.length === 2 * n) {
        // Block the event loop for three intervals: every timer comes due at once.
        stalled = true
        const until = performance.now() + 3 * interval
        while (performance.now() < until) { /* busy */ }
      }
      return { ok: true, detail: 'ok' }
    },
  }
  const c = new HealthChecker(pool, check({ intervalMs: interval, timeoutMs: interval, jitterMs: 0 }), metrics, () => {}, probe)
  t.teardown(() => c.close())
  await c.start()
  // How many of two rounds' probes start within any tenth of the interval: spread, about
  // n / 5; in lockstep, all of them. A busy machine can stall this process again and bunch
  // one pair of rounds by chance, so the rounds after the stall are taken two at a time, up
  // to the tenth round: a checker that stays in lockstep bunches every pair.
  const busiestOf = (from: number): number => {
    const recovered = starts.slice(from * n, (from + 2) * n).sort((a, b) => a - b)
    let busiest = 0
    for (let i = 0, j = 0; i < recovered.length; i++) {
      while ((recovered[i] as number) - (recovered[j] as number) > interval / 10) j++
      busiest = Math.max(busiest, i - j + 1)
    }
    return busiest
  }
  const seen: number[] = []
  for (let from = 4; from <= 8; from += 2) {
    await eventually(() => starts.length >= (from + 2) * n, `${from + 2} rounds of probes`)
    seen.push(busiestOf(from))
    if ((seen.at(-1) as number) <= n / 2) break
  }
  t.ok((seen.at(-1) as number) <= n / 2, `after the stall, at most ${seen.join(', then ')} of ${n} probes of two rounds start within any ${interval / 10} ms`)
})
