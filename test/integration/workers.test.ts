import t from 'tap'
import type { Socket } from 'node:net'
import { startDaemon, type Running } from '../helpers/daemon.js'
import { backend, closed, dial, eventually, greeting, namedBackend, readUntil } from '../helpers/net.js'
import { parseConfig } from '../../src/config/load.js'
import { reusePortAvailable } from '../../src/config/validate.js'
import { metricValue } from '../helpers/udp.js'

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

/** Which worker served each connection, from the access log. */
function workersSeen(run: Running, backendAddress?: string): Set<unknown> {
  return new Set(run.logs.access.filter((l) => backendAddress === undefined || l.backend === backendAddress).map((l) => l.worker))
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
})

t.test('workers: 2 — least-connections with 8 held connections gives exactly 4/4', { skip }, async (t) => {
  const a = await namedBackend(t, 'a')
  const b = await namedBackend(t, 'b')
  const run = await startDaemon(t, twoWorkers([a.address, b.address], ', algorithm: least-connections'))
  const held: Socket[] = []
  t.teardown(() => held.forEach((s) => s.destroy()))
  const names: string[] = []
  for (let i = 0; i < 8; i++) {
    const s = await dial(run.port('l'))
    held.push(s)
    names.push((await readUntil(s, 'line')).toString().trim())
  }
  t.same([names.filter((n) => n === 'a').length, names.filter((n) => n === 'b').length], [4, 4], `held: ${names.join(' ')}`)
  const p = run.daemon.pools.get('p')!
  t.same(p.backends.map((x) => x.active), [4, 4], 'the shared counters say 4 and 4')
})

t.test('workers: 2 — a drain is obeyed by every worker; a dead backend is down for all within 3 s', { skip }, async (t) => {
  const a = await namedBackend(t, 'a')
  const b = await namedBackend(t, 'b')
  const c = await namedBackend(t, 'c')
  const run = await startDaemon(t, twoWorkers([a.address, b.address, c.address], ', health_check: { type: tcp, interval: 200ms, timeout: 100ms, rise: 1, fall: 1 }'))
  const pool = run.daemon.pools.get('p')!
  pool.setState(pool.find(a.address)!, 'draining')
  const afterDrain = await greetings(run.port('l'), 60)
  t.notOk(afterDrain.includes('a'), 'no new connection reached the drained backend')
  t.same([...workersSeen(run)].sort(), [1, 2], 'from either worker')
  b.server.close()
  for (const s of b.sockets) s.destroy()
  const killedAt = Date.now()
  await eventually(() => pool.find(b.address)!.state === 'down', 'the health check to take b down', 20_000)
  t.ok(Date.now() - killedAt < 20_000, `down after ${Date.now() - killedAt} ms (the bound only guards a hang)`)
  const afterKill = await greetings(run.port('l'), 60)
  t.same([...new Set(afterKill)], ['c'], 'every worker sends new connections to the one backend left')
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
  const after = await greetings(port, 40)
  t.ok(after.includes('a'), 'backend a (which the broken file dropped) still takes connections: nothing changed')
  t.equal(run.daemon.config.pools.get('p')?.backends.length, 2, 'the running configuration stays')
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
