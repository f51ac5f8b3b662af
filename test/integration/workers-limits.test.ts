import t from 'tap'
import { connect, type Socket } from 'node:net'
import { startDaemon } from '../helpers/daemon.js'
import { backend, closed, eventually } from '../helpers/net.js'
import { reusePortAvailable } from '../../src/config/validate.js'
import { metricValue } from '../helpers/udp.js'

/*
 * workers: 2: the per-source limits count in tables shared by both workers, so they hold for
 * the whole daemon however the kernel spreads the connections (Node.js 22.12+ only).
 */
const skip = reusePortAvailable() ? false : `workers above 1 need Node.js 22.12+ (reusePort); this is ${process.version}`

/** Opens `n` connections from `from` at once; resolves with those that got the greeting (held open) and the count reset. */
async function burst(port: number, from: string, n: number): Promise<{ held: Socket[]; reset: number }> {
  const results = await Promise.all(
    Array.from({ length: n }, () => new Promise<Socket | undefined>((resolve) => {
      const s = connect({ port, host: '127.0.0.1', localAddress: from })
      s.on('error', () => {})
      s.once('data', () => resolve(s))
      s.once('close', () => resolve(undefined))
    })),
  )
  const held = results.filter((s) => s !== undefined)
  return { held, reset: n - held.length }
}

t.test('workers: 2 — per_source_connections and per_source_rate are exact for the whole daemon', { skip }, async (t) => {
  const b = await backend(t, (s) => {
    s.write('hi\n')
    s.pipe(s)
  })
  const run = await startDaemon(t, `
workers: 2
listeners:
  - { name: c, listen: 127.0.0.1:0, pool: p, limits: { per_source_connections: 10 } }
  - { name: r, listen: 127.0.0.1:0, pool: p, limits: { per_source_rate: 20/s } }
pools: { p: { backends: [${b.address}] } }
`)
  const c = await burst(run.port('c'), '127.0.0.7', 60)
  t.equal(c.held.length, 10, 'exactly per_source_connections (10) held open across both workers')
  t.equal(c.reset, 50)
  const views = await run.daemon.workerViews()
  t.ok(views.every((w) => w.connectionsTotal > 0), `both workers took connections (${views.map((w) => w.connectionsTotal).join(', ')})`)
  const other = await burst(run.port('c'), '127.0.0.8', 3)
  t.equal(other.held.length, 3, 'another source is not affected')
  for (const s of [...c.held, ...other.held]) s.destroy()

  const started = Date.now()
  const r = await burst(run.port('r'), '127.0.0.9', 60)
  const elapsed = (Date.now() - started) / 1000
  for (const s of r.held) s.destroy()
  // A bucket of 20 tokens, refilled at 20 a second while the burst lasted.
  const most = 20 + Math.ceil(elapsed * 20)
  t.ok(r.held.length >= 20 && r.held.length <= most, `20 to ${most} admitted in ${elapsed.toFixed(2)}s (${r.held.length})`)
  const m = await run.metrics()
  t.equal(metricValue(m, 'sluice_rejected_connections_total', { listener: 'c', reason: 'source_connections' }), 50)
  t.equal(metricValue(m, 'sluice_rejected_connections_total', { listener: 'r', reason: 'source_rate' }), r.reset)
  await eventually(async () => metricValue(await run.metrics(), 'sluice_connections_active', { listener: 'c' }) === 0, 'every connection closed')
  const again = await burst(run.port('c'), '127.0.0.7', 12)
  t.equal(again.held.length, 10, 'the closed connections released their counts in both workers')
  for (const s of again.held) s.destroy()
  await Promise.all(again.held.map(closed))
})

t.test('workers: 2 — a listener\'s max_connections is for the whole daemon', { skip }, async (t) => {
  const b = await backend(t, (s) => {
    s.write('hi\n')
    s.pipe(s)
  })
  const run = await startDaemon(t, `
workers: 2
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p, max_connections: 10 }]
pools: { p: { backends: [${b.address}] } }
`)
  const first = await burst(run.port('l'), '127.0.0.1', 40)
  t.equal(first.held.length, 10, 'exactly max_connections (10) held open over both workers')
  t.equal(first.reset, 30, 'the other 30 refused')
  const views = await run.daemon.workerViews()
  t.ok(views.every((w) => w.connectionsTotal > 0), `both workers took connections (${views.map((w) => `${w.connectionsTotal}, ${w.activeConnections} held`).join('; ')}): counted per worker, each could have held 10`)
  t.equal(metricValue(await run.metrics(), 'sluice_rejected_connections_total', { listener: 'l', reason: 'max_connections' }), 30, 'counted as max_connections refusals')
  for (const s of first.held) s.destroy()
  await eventually(async () => metricValue(await run.metrics(), 'sluice_connections_active', { listener: 'l' }) === 0, 'every connection closed')
  const again = await burst(run.port('l'), '127.0.0.1', 15)
  t.equal(again.held.length, 10, 'the closed connections gave their places back in both workers')
  for (const s of again.held) s.destroy()
  await Promise.all(again.held.map(closed))
})
