import t from 'tap'
import { connect, type Socket } from 'node:net'
import { startDaemon } from '../helpers/daemon.js'
import { blackHole } from '../helpers/black-hole.js'
import { closed, deadPort, dial, eventually, greeting, namedBackend, readUntil } from '../helpers/net.js'

t.test('a failed connect costs a retry on another backend, not the client', async (t) => {
  const live = await namedBackend(t, 'live')
  const dead1 = await deadPort()
  const dead2 = await deadPort()
  const run = await startDaemon(t, `
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p:
    retries: 2
    backends: [127.0.0.1:${dead1}, 127.0.0.1:${dead2}, ${live.address}]
`)
  for (let i = 0; i < 6; i++) t.equal(await greeting(run.port('l')), 'live', `connection ${i} reaches the live backend`)
  const lines = await run.logs.waitForAccess(6)
  t.ok(lines.every((l) => l.backend === live.address), 'every access line names the live backend')
  t.ok(lines.some((l) => (l.attempts as number) === 3), 'some connections needed three attempts')
  const m = await run.metrics()
  t.match(m, new RegExp(`sluice_connect_errors_total\\{pool="p",backend="127.0.0.1:${dead1}",reason="refused"\\} [1-9]`), 'refused connects counted per backend')
  const warn = run.logs.lines.find((l) => l.code === 'SLUICE_ERR_CONNECT')
  t.ok(warn, 'the failed connect is logged with its code')
})

t.test('never the same backend twice, and retries are bounded', async (t) => {
  const dead = await deadPort()
  const run = await startDaemon(t, `
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p: { retries: 5, backends: [127.0.0.1:${dead}] }
`)
  const c = await dial(run.port('l'))
  c.on('error', () => {})
  await closed(c)
  const line = (await run.logs.waitForAccess(1))[0]!
  t.equal(line.attempts, 1, 'one backend: one attempt, even with retries: 5')
  t.equal(line.close_reason, 'connect_failed')
  t.equal(line.backend, null, 'no backend in the access line')
  t.match(await run.metrics(), /sluice_rejected_connections_total\{listener="l",reason="connect_failed"\} 1/)
})

t.test('connect timeout against a backend that never completes the handshake', async (t) => {
  const { port, stop } = await blackHole(t)
  const live = await namedBackend(t, 'live')
  const run = await startDaemon(t, `
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p:
    algorithm: round-robin
    connect_timeout: 300ms
    retries: 1
    backends: [127.0.0.1:${port}, ${live.address}]
`)
  const started = Date.now()
  t.equal(await greeting(run.port('l')), 'live', 'the client is served by the next backend')
  const took = Date.now() - started
  t.ok(took >= 290 && took < 5000, `after the 300 ms connect timeout (${took} ms)`)
  const warn = await run.logs.waitFor((l) => l.code === 'SLUICE_ERR_CONNECT_TIMEOUT')
  t.equal(warn.backend, `127.0.0.1:${port}`, 'timeout logged with SLUICE_ERR_CONNECT_TIMEOUT and the backend')
  t.match(await run.metrics(), new RegExp(`sluice_connect_errors_total\\{pool="p",backend="127.0.0.1:${port}",reason="timeout"\\} 1`))
  stop()
})

t.test('no usable backend: the client is refused at once and it is counted', async (t) => {
  const a = await namedBackend(t, 'a')
  const run = await startDaemon(t, `
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p: { backends: [${a.address}] }
`)
  const pool = run.daemon.pools.get('p')!
  pool.setState(pool.backends[0]!, 'disabled')
  t.equal(await refusedWith(run.port('l')), 'ECONNRESET', 'the client sees a reset, not a hang')
  const line = (await run.logs.waitForAccess(1))[0]!
  t.equal(line.close_reason, 'no_backend')
  t.ok(run.logs.lines.some((l) => l.code === 'SLUICE_ERR_NO_BACKEND'), 'logged with SLUICE_ERR_NO_BACKEND')
  t.match(await run.metrics(), /sluice_rejected_connections_total\{listener="l",reason="no_backend"\} 1/)
  pool.setState(pool.backends[0]!, 'up')
  t.equal(await greeting(run.port('l')), 'a', 'served again once the backend is back')
})

t.test('listener max_connections refuses the connection over the limit only', async (t) => {
  const a = await namedBackend(t, 'a')
  const run = await startDaemon(t, `
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p, max_connections: 2 }]
pools:
  p: { backends: [${a.address}] }
`)
  const port = run.port('l')
  const held: Socket[] = []
  for (let i = 0; i < 2; i++) {
    const s = await dial(port)
    await readUntil(s, 'line')
    held.push(s)
  }
  t.equal(await refusedWith(port), 'ECONNRESET', 'the connection over the limit is reset')
  t.match(await run.metrics(), /sluice_rejected_connections_total\{listener="l",reason="max_connections"\} 1/, 'the third is refused and counted')
  t.ok(run.logs.lines.some((l) => l.code === 'SLUICE_ERR_MAX_CONNECTIONS'), 'logged with its code')
  held[0]!.write('still here\n')
  t.equal((await readUntil(held[0]!, 'line')).toString(), 'still here\n', 'held connections keep working')
  held[0]!.destroy()
  await eventually(() => run.daemon.listeners.get('l')!.sessions.size === 1, 'a slot to free up')
  t.equal(await greeting(port), 'a', 'a new connection is admitted once below the limit')
  for (const s of held) s.destroy()
})

t.test('a client that leaves during the connect releases its backend slot', async (t) => {
  const { port, stop } = await blackHole(t)
  const run = await startDaemon(t, `
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p: { connect_timeout: 5s, backends: [127.0.0.1:${port}] }
`)
  const c = await dial(run.port('l'))
  const b = run.daemon.pools.get('p')!.backends[0]!
  await eventually(() => b.active === 1, 'the connect attempt to start')
  c.resetAndDestroy()
  const line = (await run.logs.waitForAccess(1))[0]!
  t.equal(line.close_reason, 'client_aborted')
  t.equal(b.active, 0, 'the backend slot is released')
  stop()
})

/** Connects and resolves with the error code the connection ends with ('' for a clean close). */
function refusedWith(port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = connect({ port, host: '127.0.0.1' })
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'))
    s.once('close', () => resolve(''))
  })
}
