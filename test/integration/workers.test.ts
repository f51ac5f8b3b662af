import t from 'tap'
import type { Socket } from 'node:net'
import { availableParallelism } from 'node:os'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { startDaemon, type Running } from '../helpers/daemon.js'
import { backend, closed, deadPort, dial, eventually, greeting, namedBackend, readUntil } from '../helpers/net.js'
import { parseConfig } from '../../src/config/load.js'
import { reusePortAvailable } from '../../src/config/validate.js'
import { UdpClient, metricValue, udpBackend } from '../helpers/udp.js'
import { connectOutcome, freePort, quietLoopback } from './free-address.js'

/*
 * workers: 2 over real sockets. Several workers need SO_REUSEPORT from Node (22.12+); on an
 * older Node these tests skip and the configuration error is checked instead.
 */
const skip = reusePortAvailable() ? false : `workers above 1 need Node.js 22.12+ (reusePort); this is ${process.version}`

const twoWorkers = (backends: string[], pool = '', extra = ''): string => `
workers: 2
log: { level: info }
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p: { backends: [${backends.map((b) => `"${b}"`).join(', ')}]${pool} }
${extra}`

/** Which worker served each connection, from the access log (from line `from` on). */
function workersSeen(run: Running, backendAddress?: string, from = 0): Set<unknown> {
  return new Set(run.logs.access.slice(from).filter((l) => backendAddress === undefined || l.backend === backendAddress).map((l) => l.worker))
}

async function greetings(port: number, n: number): Promise<string[]> {
  const out: string[] = []
  for (let i = 0; i < n; i += 20) out.push(...(await Promise.all(Array.from({ length: Math.min(20, n - i) }, () => greeting(port)))))
  return out
}

t.test('on a Node.js without reusePort, workers above 1 is a configuration error at its line', { skip: reusePortAvailable() ? 'this Node.js has reusePort' : false }, async (t) => {
  try {
    parseConfig('workers: 2\nlisteners: [{ name: l, listen: ":0", pool: p }]\npools: { p: { backends: ["127.0.0.1:1"] } }\n', 'w.yaml', {})
    t.fail('accepted')
  } catch (err) {
    t.match(String((err as { format(): string }).format()), /^w\.yaml:1:10: workers: 2 needs Node\.js 22\.12 or newer/)
  }
  t.equal(parseConfig('workers: auto\nlisteners: [{ name: l, listen: ":0", pool: p }]\npools: { p: { backends: ["127.0.0.1:1"] } }\n', 'w.yaml', {}).workers, 1, 'auto is 1 here')
})

t.test('workers: auto is one worker per CPU this process may use', { skip }, async (t) => {
  const cfg = parseConfig('workers: auto\nlisteners: [{ name: l, listen: ":0", pool: p }]\npools: { p: { backends: ["127.0.0.1:1"] } }\n', 'w.yaml', {})
  t.equal(cfg.workers, availableParallelism(), `os.availableParallelism() (${availableParallelism()}): the CPUs in this process's affinity mask`)
})

t.test('workers: 2 — round-robin spreads 200 connections 45-55%, both workers serve, every count is exact', { skip }, async (t) => {
  const a = await namedBackend(t, 'a')
  const b = await namedBackend(t, 'b')
  const run = await startDaemon(t, twoWorkers([a.address, b.address], '', 'admin: { listen: "127.0.0.1:0" }'))
  const got = await greetings(run.port('l'), 200)
  const shareA = got.filter((g) => g === 'a').length / got.length
  t.ok(shareA >= 0.45 && shareA <= 0.55, `backend a took ${(shareA * 100).toFixed(1)}%`)
  await run.logs.waitForAccess(200)
  t.same([...workersSeen(run)].sort(), [1, 2], 'the kernel spread the connections over both workers')
  const m = await run.metrics()
  t.equal(metricValue(m, 'sluice_connections_total', { listener: 'l' }), 200, 'sluice_connections_total is the sum over the workers')
  const status = await run.daemon.workerViews()
  t.equal(status.length, 2, 'two workers in the status')
  t.equal(status.reduce((n, w) => n + w.connectionsTotal, 0), 200, 'their connections add up')
  t.ok(status.every((w) => w.connectionsTotal > 0), 'each served some')
  const admin = run.daemon.adminAddress()!
  const doc = (await (await fetch(`http://127.0.0.1:${admin.port}/api/status`)).json()) as { workers: { id: number; connections_total: number }[]; pools: { backends: { total_connections: number }[] }[] }
  t.same(doc.workers.map((w) => w.id), [1, 2], '/api/status lists both workers')
  t.equal(doc.pools[0]!.backends.reduce((n, x) => n + x.total_connections, 0), 200, 'and the backends\' totals over both')
  const text = await (await fetch(`http://127.0.0.1:${admin.port}/metrics`)).text()
  t.equal(metricValue(text, 'sluice_connections_total', { listener: 'l' }), 200, '/metrics sums the workers')
  const perBackend = [a, b].map((x) => metricValue(text, 'sluice_backend_connections_total', { pool: 'p', backend: x.address }))
  t.equal(perBackend[0]! + perBackend[1]!, 200, `sluice_backend_connections_total over both workers: ${perBackend.join(' + ')}`)
  t.equal(perBackend[0], doc.pools[0]!.backends[0]!.total_connections, 'the same count as /api/status for a')
})

t.test('workers: 2 — least-connections with 8 held connections gives exactly 4/4', { skip }, async (t) => {
  const a = await namedBackend(t, 'a')
  const b = await namedBackend(t, 'b')
  const run = await startDaemon(t, twoWorkers([a.address, b.address], ', algorithm: least-connections'))
  const p = run.daemon.pools.get('p')!
  // 4/4 proves the counts are shared only when both workers hold some of the 8 (one worker
  // alone balances its own connections): the kernel puts all 8 on one worker about once in
  // 128 rounds, so such a round is let go and another opened, three at most.
  for (let round = 1; round <= 3; round++) {
    const held: Socket[] = []
    t.teardown(() => held.forEach((s) => s.destroy()))
    const names: string[] = []
    for (let i = 0; i < 8; i++) {
      const s = await dial(run.port('l'))
      held.push(s)
      names.push((await readUntil(s, 'line')).toString().trim())
    }
    const views = await run.daemon.workerViews()
    const both = views.every((w) => w.activeConnections > 0)
    if (!both && round < 3) {
      t.comment(`round ${round}: all 8 on one worker (${views.map((w) => w.activeConnections).join('/')}); again`)
      held.forEach((s) => s.destroy())
      await eventually(() => p.backends.every((x) => x.active === 0), 'the round\'s connections to close')
      continue
    }
    t.ok(both, `both workers hold some of the 8 (${views.map((w) => `worker ${w.id}: ${w.activeConnections}`).join(', ')})`)
    t.same([names.filter((n) => n === 'a').length, names.filter((n) => n === 'b').length], [4, 4], `held: ${names.join(' ')}`)
    t.same(p.backends.map((x) => x.active), [4, 4], 'the shared counters say 4 and 4')
    break
  }
})

t.test('workers: 2 — a drain is obeyed by every worker; a dead backend is down for all within 3 s', { skip }, async (t) => {
  const a = await namedBackend(t, 'a')
  const b = await namedBackend(t, 'b')
  const c = await namedBackend(t, 'c')
  const run = await startDaemon(t, twoWorkers([a.address, b.address, c.address], ', health_check: { type: tcp, interval: 200ms, timeout: 100ms, rise: 1, fall: 1 }', 'admin: { listen: "127.0.0.1:0" }'))
  const pool = run.daemon.pools.get('p')!
  const admin = run.daemon.adminAddress()!
  const drain = await fetch(`http://127.0.0.1:${admin.port}/api/pools/p/backends/${encodeURIComponent(a.address)}/drain`, { method: 'POST' })
  t.equal(drain.status, 200, 'drained through the admin API')
  // Each worker handles its messages in order: once both answered a stats request, both have the drain.
  await run.daemon.workerViews()
  const afterDrain = await greetings(run.port('l'), 60)
  t.notOk(afterDrain.includes('a'), 'no new connection reached the drained backend')
  await run.logs.waitForAccess(60)
  t.same([...workersSeen(run)].sort(), [1, 2], 'from either worker')

  // This process runs the control plane (health checks included): time it held its event
  // loop up (a busy machine) is added to the 3 s, which is otherwise a bound on sluice.
  const lag = monitorEventLoopDelay({ resolution: 10 })
  lag.enable()
  b.server.close()
  for (const s of b.sockets) s.destroy()
  const killedAt = performance.now()
  await eventually(() => pool.find(b.address)!.state === 'down', 'the health check to take b down', 20_000)
  await run.daemon.workerViews()
  const took = performance.now() - killedAt
  lag.disable()
  // Each sample is one 10 ms interval as it was timed: what it ran over is the loop's delay.
  // (No sample at all when it took under 10 ms: the mean is NaN then.)
  const held = lag.count === 0 ? 0 : lag.count * Math.max(0, lag.mean / 1e6 - 10)
  t.ok(took < 3000 + held, `down for both workers ${took.toFixed(0)} ms after the kill (bound: 3 s + ${held.toFixed(0)} ms this process's loop was held up)`)
  const before = run.logs.access.length
  const afterKill = await greetings(run.port('l'), 60)
  t.same([...new Set(afterKill)], ['c'], 'every worker sends new connections to the one backend left')
  const lines = (await run.logs.waitForAccess(before + 60)).slice(before)
  t.same([...new Set(lines.map((l) => l.attempts))], [1], 'at the first attempt: no worker tried the dead backend (a retry would hide it from the client)')
  t.same([...workersSeen(run, undefined, before)].sort(), [1, 2], 'from either worker')
})

t.test('workers: 2 — passive ejection counts the connect failures of both workers together', { skip }, async (t) => {
  const a = await namedBackend(t, 'a')
  const dead = `127.0.0.1:${await deadPort()}`
  const run = await startDaemon(t, twoWorkers([a.address, dead], ', passive: { max_failures: 8, ejection_time: 3s }'))
  const port = run.port('l')
  const ejections = (): Record<string, unknown>[] => run.logs.lines.filter((l) => l.code === 'SLUICE_ERR_BACKEND_EJECTED')
  /**
   * One client at a time until the n-th ejection; a connect to the dead backend fails and is
   * retried on a. After each client a stats round trip: the worker's connect-failed message
   * came before its answer, so the control plane has counted every failure so far when the
   * loop looks for the ejection. Returns the clients' access lines.
   */
  const untilEjection = async (n: number): Promise<Record<string, unknown>[]> => {
    const from = run.logs.access.length
    const greeted: string[] = []
    while (ejections().length < n && greeted.length < 200) {
      greeted.push(await greeting(port))
      await run.daemon.workerViews()
    }
    t.equal(ejections().length, n, `ejection ${n} after ${greeted.length} clients`)
    t.same([...new Set(greeted)], ['a'], 'every client was served (by a, after a retry where the dead one was tried)')
    return (await run.logs.waitForAccess(from + greeted.length)).slice(from)
  }
  // Counted per worker, one worker alone would have to fail 8 times: 8 in all only if all 8
  // came to the same worker (a chance of 1 in 128).
  const failures = (lines: Record<string, unknown>[]): string => {
    const failed = lines.filter((l) => l.attempts === 2)
    return `${failed.length} (worker 1: ${failed.filter((l) => l.worker === 1).length}, worker 2: ${failed.filter((l) => l.worker === 2).length})`
  }
  const first = failures(await untilEjection(1))
  t.match(first, /^8 /, `ejected at the 8th failed connect in all: ${first}`)
  const line = ejections()[0]!
  t.equal(line.worker, undefined, 'by the control plane, the one owner of health')
  t.equal(line.failures, 8, 'the ejection counts 8 consecutive failures')
  t.equal(metricValue(await run.metrics(), 'sluice_backend_ejections_total', { pool: 'p', backend: dead }), 1, 'one ejection')
  const before = run.logs.access.length
  await greetings(port, 20)
  const during = (await run.logs.waitForAccess(before + 20)).slice(before)
  t.equal(ejections().length, 1, 'still the one ejection')
  t.same([...new Set(during.map((l) => l.attempts))], [1], 'neither worker tries the ejected backend')
  await run.logs.waitFor((l) => l.msg === `backend ${dead}: ejection over, trying it again`, 20_000)
  // Both workers have it back in the rotation (and its count started anew) before the next client.
  await run.daemon.workerViews()
  const second = failures(await untilEjection(2))
  t.match(second, /^8 /, `after the ejection, ejected again at the 8th failure in all: ${second}`)
})

t.test('workers: 2 — a reload that adds a backend reaches it from every worker; a broken one changes nothing', { skip }, async (t) => {
  const a = await namedBackend(t, 'a')
  const b = await namedBackend(t, 'b')
  const run = await startDaemon(t, twoWorkers([a.address]))
  const port = run.port('l')
  await run.daemon.reload(parseConfig(twoWorkers([a.address, b.address]).replace('127.0.0.1:0', `127.0.0.1:${port}`), 'test.yaml', {}))
  const before = run.logs.access.length
  await greetings(port, 100)
  await run.logs.waitForAccess(before + 100)
  t.same([...workersSeen(run, b.address)].sort(), [1, 2], 'the new backend is reached from both workers')
  // A second listener on a port another process holds: the reload fails in every worker.
  const held = await backend(t, () => {})
  const broken = parseConfig(twoWorkers([b.address]).replace('127.0.0.1:0', `127.0.0.1:${port}`).replace(']\npools', `, { name: m, listen: "127.0.0.1:${held.port}", pool: p }]\npools`), 'test.yaml', {})
  await t.rejects(run.daemon.reload(broken), { code: 'SLUICE_ERR_LISTEN' })
  const from = run.logs.access.length
  const after = await greetings(port, 40)
  t.ok(after.includes('a'), 'backend a (which the broken file dropped) still takes connections: nothing changed')
  await run.logs.waitForAccess(from + 40)
  t.same([...workersSeen(run, a.address, from)].sort(), [1, 2], 'in both workers')
  t.equal(run.daemon.config.pools.get('p')?.backends.length, 2, 'the running configuration stays')
})

t.test('workers: 2 — a reload that fails in one worker only changes nothing in either', { skip }, async (t) => {
  const a = await namedBackend(t, 'a')
  const b = await namedBackend(t, 'b')
  const run = await startDaemon(t, twoWorkers([a.address]))
  const port = run.port('l')
  const running = run.daemon.config
  // The new file swaps the backend and adds a listener on a free address.
  const host = quietLoopback()
  const extra = await freePort(host)
  const next = parseConfig(twoWorkers([b.address]).replace('127.0.0.1:0', `127.0.0.1:${port}`).replace(']\npools', `, { name: m, listen: "${host}:${extra}", pool: p }]\npools`), 'test.yaml', {})
  // Worker 1 is asked to prepare first (it binds m); worker 2 dies before its turn comes.
  const reload = run.daemon.reload(next)
  run.daemon.crashWorker(2)
  await t.rejects(reload, /worker 2/, 'the reload fails')
  await run.logs.waitFor((l) => l.msg === 'worker 2 started again')
  // The abort reached worker 1 before this stats request (it handles its messages in order).
  await run.daemon.workerViews()
  await eventually(async () => (await connectOutcome(extra, host)) === 'ECONNREFUSED', 'the listener worker 1 prepared to be closed again', 5000)
  t.pass('the listener worker 1 bound for the failed reload is closed again')
  t.same((await run.daemon.listenerViews()).map((l) => l.name), ['l'], 'only the running listener')
  t.equal(run.daemon.config, running, 'the running configuration stays')
  const from = run.logs.access.length
  const after = await greetings(port, 60)
  t.same([...new Set(after)], ['a'], 'every connection still goes to the running backend')
  await run.logs.waitForAccess(from + 60)
  t.same([...workersSeen(run, a.address, from)].sort(), [1, 2], 'in worker 1 and in the restarted worker 2')
})

t.test('workers: 2 — UDP: a client stays on one worker (one session); clients spread over both', { skip }, async (t) => {
  const e = await udpBackend(t, 'e')
  const run = await startDaemon(t, `
workers: 2
listeners: [{ name: u, protocol: udp, listen: 127.0.0.1:0, pool: p }]
pools: { p: { backends: [${e.address}] } }
`)
  const port = run.port('u')
  const clients = await Promise.all(Array.from({ length: 20 }, () => UdpClient.open(t)))
  const wrong: string[] = []
  for (let round = 0; round < 5; round++) {
    for (const c of clients) {
      const reply = await c.ask(port, `${c.port}-${round}`)
      if (reply !== `e:${c.port}-${round}`) wrong.push(reply)
    }
  }
  t.same(wrong, [], 'every datagram answered, to the client that sent it')
  t.equal(new Set(e.sources).size, 20, 'one upstream socket per client: no client was split over the workers')
  t.equal((await run.daemon.listenerViews())[0]?.activeConnections, 20, '20 sessions over both workers')
  const views = await run.daemon.workerViews()
  t.ok(views.every((w) => w.activeConnections > 0), `the clients spread over both workers (${views.map((w) => w.activeConnections).join(' + ')})`)
  t.equal(metricValue(await run.metrics(), 'sluice_udp_sessions_active', { listener: 'u' }), 20, 'sluice_udp_sessions_active sums the workers')
})


t.test('workers: 2 — graceful shutdown lets an open connection finish', { skip }, async (t) => {
  const a = await namedBackend(t, 'a')
  const run = await startDaemon(t, twoWorkers([a.address]))
  const s = await dial(run.port('l'))
  await readUntil(s, 'line')
  const stopped = run.daemon.stop()
  s.write('still here\n')
  t.equal((await readUntil(s, 'line')).toString(), 'still here\n', 'the open connection is served while stopping')
  // The echo may come back by the native relay before a worker has taken the stop: wait until
  // both say they stopped listening.
  await eventually(async () => (await run.daemon.listenerViews()).every((l) => !l.listening), 'both workers to stop listening')
  const refused = await new Promise<string>((resolve) => {
    const c = dial(run.port('l'))
    c.then((x) => { x.destroy(); resolve('accepted') }, (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'))
  })
  t.equal(refused, 'ECONNREFUSED', 'no worker accepts a new connection')
  s.end()
  await closed(s)
  await stopped
  t.equal(run.logs.lines.at(-1)?.msg, 'sluice stopped')
})


t.test('workers: 2 — a worker that dies is logged, counted and started again; the other keeps its connections', { skip }, async (t) => {
  const a = await namedBackend(t, 'a')
  const run = await startDaemon(t, twoWorkers([a.address]))
  const port = run.port('l')
  // Open connections until each worker holds at least one.
  const held: Socket[] = []
  t.teardown(() => held.forEach((s) => s.destroy()))
  await eventually(async () => {
    const s = await dial(port)
    await readUntil(s, 'line')
    held.push(s)
    const views = await run.daemon.workerViews()
    return views.every((w) => w.activeConnections > 0)
  }, 'both workers to hold a connection', 10_000)
  const views = await run.daemon.workerViews()
  const onTwo = views.find((w) => w.id === 2)!.activeConnections
  run.daemon.crashWorker(2)
  const died = await run.logs.waitFor((l) => l.code === 'SLUICE_ERR_WORKER')
  t.equal(died.worker, 2, 'the dead worker is named')
  t.match(died.error, /worker 2 exited with code 1/, 'with its error')
  await run.logs.waitFor((l) => l.msg === 'worker 2 started again')
  t.match(await run.metrics(), /sluice_worker_restarts_total 1\b/, 'counted')
  let alive = 0
  for (const s of held) {
    if (s.destroyed || s.readyState !== 'open') continue
    const ok = await new Promise<boolean>((resolve) => {
      s.once('error', () => resolve(false))
      s.once('close', () => resolve(false))
      s.write('ping\n')
      readUntil(s, 'line', 2000).then((l) => resolve(l.toString() === 'ping\n'), () => resolve(false))
    })
    if (ok) alive++
  }
  t.equal(alive, held.length - onTwo, `the connections of worker 1 still work (${alive} of ${held.length}; worker 2 had ${onTwo})`)
  const after = await greetings(port, 40)
  t.equal(after.length, 40, 'new connections are served')
  await run.logs.waitForAccess(1)
  await eventually(async () => (await run.daemon.workerViews()).length === 2, 'two workers again')
})
