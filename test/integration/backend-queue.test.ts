import t from 'tap'
import { connect, type Socket } from 'node:net'
import { startDaemon } from '../helpers/daemon.js'
import { backend, closed, eventually } from '../helpers/net.js'
import { metricValue } from '../helpers/udp.js'
import { reusePortAvailable } from '../../src/config/validate.js'

/** A backend that greets, echoes, and keeps the highest number of connections it held at once. */
async function trackedBackend(t: Parameters<typeof backend>[0]): Promise<{ address: string; open: () => number; most: () => number }> {
  let open = 0
  let most = 0
  const b = await backend(t, (s) => {
    open++
    most = Math.max(most, open)
    s.on('close', () => open--)
    s.write('hi\n')
    s.pipe(s)
  })
  return { address: b.address, open: () => open, most: () => most }
}

interface Client {
  socket: Socket
  /** Resolves true when the backend's greeting arrives, false when the connection ends first. */
  greeted: Promise<boolean>
  isGreeted: () => boolean
  ended: Promise<string | undefined>
}

function client(port: number): Client {
  const s = connect({ port, host: '127.0.0.1' })
  let got = false
  let error: string | undefined
  s.on('error', (e: NodeJS.ErrnoException) => (error = e.code))
  const greeted = new Promise<boolean>((resolve) => {
    s.once('data', () => {
      got = true
      resolve(true)
    })
    s.once('close', () => resolve(false))
  })
  return { socket: s, greeted, isGreeted: () => got, ended: closed(s).then(() => error) }
}

async function queueLength(run: { metrics(): Promise<string> }): Promise<number> {
  return metricValue(await run.metrics(), 'sluice_queue_length', { pool: 'p' })
}

t.test('every backend at max_connections: new connections wait in FIFO order, a full queue resets at once', async (t) => {
  const b = await trackedBackend(t)
  const run = await startDaemon(t, `
admin: { listen: "127.0.0.1:0" }
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p: { max_queue: 2, queue_timeout: 30s, backends: [{ address: "${b.address}", max_connections: 2 }] }
`)
  const port = run.port('l')
  const c1 = client(port)
  const c2 = client(port)
  t.ok((await c1.greeted) && (await c2.greeted), 'two connections fill max_connections')
  const c3 = client(port)
  await eventually(async () => (await queueLength(run)) === 1, 'the third waits in the queue')
  const c4 = client(port)
  await eventually(async () => (await queueLength(run)) === 2, 'the fourth waits behind it')
  const c5 = client(port)
  t.equal(await c5.greeted, false, 'the fifth finds the queue full')
  t.equal(await c5.ended, 'ECONNRESET', 'and is reset')
  const admin = run.daemon.adminAddress()!
  const status = (await (await fetch(`http://127.0.0.1:${admin.port}/api/status`)).json()) as { pools: { name: string; queue_length: number; max_queue: number }[] }
  t.same(status.pools.map((p) => [p.name, p.queue_length, p.max_queue]), [['p', 2, 2]], '/api/status shows the queue')
  t.notOk(c3.isGreeted() || c4.isGreeted(), 'nobody queued was served yet')
  c1.socket.destroy()
  t.equal(await c3.greeted, true, 'a freed slot goes to the head of the queue')
  t.equal(c4.isGreeted(), false, 'not to the one behind it')
  t.equal(await queueLength(run), 1)
  c2.socket.destroy()
  t.equal(await c4.greeted, true, 'the next slot to the next in line')
  t.equal(b.most(), 2, 'the backend never held more than max_connections')
  const m = await run.metrics()
  t.equal(metricValue(m, 'sluice_rejected_connections_total', { listener: 'l', reason: 'queue_full' }), 1)
  t.equal(metricValue(m, 'sluice_queue_length', { pool: 'p' }), 0)
  for (const c of [c3, c4]) c.socket.destroy()
})

t.test('a freed slot goes to the queue before a new connection that arrives with it', async (t) => {
  const b = await trackedBackend(t)
  const run = await startDaemon(t, `
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p: { max_queue: 10, queue_timeout: 30s, backends: [{ address: "${b.address}", max_connections: 1 }] }
`)
  const port = run.port('l')
  const holder = client(port)
  t.equal(await holder.greeted, true)
  const waiting = client(port)
  await eventually(async () => (await queueLength(run)) === 1, 'one waits')
  holder.socket.destroy()
  const newcomer = client(port)
  t.equal(await waiting.greeted, true, 'the one that waited gets the slot')
  await eventually(async () => (await queueLength(run)) === 1, 'the newcomer waits in its turn')
  t.equal(newcomer.isGreeted(), false, 'the newcomer did not jump the queue')
  waiting.socket.destroy()
  t.equal(await newcomer.greeted, true)
  newcomer.socket.destroy()
})

t.test('queue_timeout: a connection still waiting is reset and counted; a client that leaves frees its place', async (t) => {
  const b = await trackedBackend(t)
  const run = await startDaemon(t, `
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p: { max_queue: 5, queue_timeout: 1s, backends: [{ address: "${b.address}", max_connections: 1 }] }
`)
  const port = run.port('l')
  const holder = client(port)
  t.equal(await holder.greeted, true)
  const leaver = client(port)
  await eventually(async () => (await queueLength(run)) === 1, 'one waits')
  // A reset: a client that only half-closes (FIN) may still wait for an answer, as with any TCP proxy.
  leaver.socket.resetAndDestroy()
  await eventually(async () => (await queueLength(run)) === 0, 'a client that resets is out of the queue before its timeout', 800)
  await run.logs.waitFor((l) => l.access === true && l.close_reason === 'client_aborted')
  const started = Date.now()
  const late = client(port)
  t.equal(await late.ended, 'ECONNRESET', 'reset when queue_timeout passes')
  const waited = Date.now() - started
  t.ok(waited >= 980 && waited < 4000, `after about 1 s (${waited} ms)`)
  const line = await run.logs.waitFor((l) => l.access === true && l.close_reason === 'queue_timeout')
  t.equal(line.backend, null, 'the access line names no backend')
  t.equal(metricValue(await run.metrics(), 'sluice_rejected_connections_total', { listener: 'l', reason: 'queue_timeout' }), 1)
  holder.socket.destroy()
})

t.test('workers: 2 — max_connections holds across both workers, and every queued connection is served in time', { skip: reusePortAvailable() ? false : `workers above 1 need Node.js 22.12+; this is ${process.version}` }, async (t) => {
  const b = await trackedBackend(t)
  const run = await startDaemon(t, `
workers: 2
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p: { max_queue: 100, queue_timeout: 20s, backends: [{ address: "${b.address}", max_connections: 5 }] }
`)
  const port = run.port('l')
  const clients = Array.from({ length: 30 }, () => client(port))
  await eventually(() => clients.filter((c) => c.isGreeted()).length === 5, 'five served')
  await eventually(async () => (await queueLength(run)) === 25, 'the other 25 queued, over both workers')
  // Let them go one by one: each freed slot goes to someone waiting, never past five at once.
  for (let served = 5; served < 30; served++) {
    const c = clients.find((x) => x.isGreeted() && !x.socket.destroyed)!
    c.socket.destroy()
    await eventually(() => clients.filter((x) => x.isGreeted()).length === served + 1, `client ${served + 1} served`)
  }
  t.equal(b.most(), 5, 'the backend never held more than max_connections (5), whichever worker connected')
  for (const c of clients) c.socket.destroy()
  const views = await run.daemon.workerViews()
  t.ok(views.every((w) => w.connectionsTotal > 0), `both workers took connections (${views.map((w) => w.connectionsTotal).join(', ')})`)
})
