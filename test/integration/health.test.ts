import t, { type Test } from 'tap'
import { connect, createServer, type Server, type Socket } from 'node:net'
import { startDaemon } from '../helpers/daemon.js'
import { closed, deadPort, dial, eventually, greeting, namedBackend, readUntil } from '../helpers/net.js'

/** A named backend (greets with its name, then echoes) that can be stopped and started again on the same port. */
async function restartable(t: Test, name: string): Promise<{ port: number; address: string; stop: () => Promise<void>; start: () => Promise<void> }> {
  let server: Server | undefined
  const sockets = new Set<Socket>()
  // Below the ephemeral range: no outgoing connection can take the port while it is down.
  const port = await deadPort()
  const start = async (): Promise<void> => {
    const s = createServer((c) => {
      sockets.add(c)
      c.on('close', () => sockets.delete(c))
      c.on('error', () => {})
      c.write(`${name}\n`)
      c.pipe(c)
    })
    await new Promise<void>((resolve) => s.listen(port, '127.0.0.1', resolve))
    server = s
  }
  const stop = async (): Promise<void> => {
    const s = server
    server = undefined
    for (const c of sockets) c.destroy()
    if (s !== undefined) await new Promise<void>((resolve) => s.close(() => resolve()))
  }
  await start()
  t.teardown(stop)
  return { port, address: `127.0.0.1:${port}`, stop, start }
}

function refusedWith(port: number): Promise<string> {
  return new Promise((resolve) => {
    const s = connect({ port, host: '127.0.0.1' })
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'))
    s.once('close', () => resolve(''))
  })
}

async function greetings(port: number, n: number): Promise<string[]> {
  const out: string[] = []
  for (let i = 0; i < n; i++) out.push(await greeting(port))
  return out
}

const msgOf = (l: Record<string, unknown>): string => String(l.msg)

t.test('checked once before traffic: a dead backend never sees a client at start-up', async (t) => {
  const a = await namedBackend(t, 'a')
  const dead = await deadPort()
  const run = await startDaemon(t, `
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p:
    backends: [${a.address}, 127.0.0.1:${dead}]
    health_check: { type: tcp, interval: 1s, timeout: 500ms }
`)
  t.same(await greetings(run.port('l'), 6), ['a', 'a', 'a', 'a', 'a', 'a'], 'every connection went to the live backend')
  t.notMatch(await run.metrics(), /sluice_connect_errors_total\{/, 'no client connection was tried on the dead one')
  t.match(await run.metrics(), new RegExp(`sluice_backend_up\\{pool="p",backend="127.0.0.1:${dead}"\\} 0`))
  const line = run.logs.lines.find((l) => msgOf(l).includes(`127.0.0.1:${dead} is down`))
  t.equal(line?.msg, `backend 127.0.0.1:${dead} is down: first check failed: connect ECONNREFUSED`)
})

t.test('a backend that dies is taken out, and comes back', async (t) => {
  const a = await namedBackend(t, 'a')
  const b = await restartable(t, 'b')
  const run = await startDaemon(t, `
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p:
    backends: [${a.address}, ${b.address}]
    retries: 0
    health_check: { type: tcp, interval: 250ms, timeout: 250ms, rise: 2, fall: 2 }
`)
  t.same(new Set(await greetings(run.port('l'), 4)), new Set(['a', 'b']), 'both serve')
  await b.stop()
  const down = await run.logs.waitFor((l) => msgOf(l).startsWith(`backend ${b.address} is down`))
  t.equal(down.msg, `backend ${b.address} is down: fall 2/2: connect ECONNREFUSED`)
  t.equal(down.code, 'SLUICE_ERR_HEALTH_CHECK')
  t.same(await greetings(run.port('l'), 4), ['a', 'a', 'a', 'a'], 'only the live backend serves')
  await b.start()
  const up = await run.logs.waitFor((l) => msgOf(l).startsWith(`backend ${b.address} is up: rise`))
  t.equal(up.msg, `backend ${b.address} is up: rise 2/2: connected`)
  t.same(new Set(await greetings(run.port('l'), 4)), new Set(['a', 'b']), 'back in rotation')
  const m = await run.metrics()
  t.match(m, new RegExp(`sluice_health_checks_total\\{pool="p",backend="${b.address}",result="failure"\\} [2-9]`))
  t.match(m, new RegExp(`sluice_backend_up\\{pool="p",backend="${b.address}"\\} 1`))
})

t.test('passive ejection: consecutive connect failures eject a backend; it is tried again after ejection_time', async (t) => {
  const a = await namedBackend(t, 'a')
  const dead = await deadPort()
  const d = `127.0.0.1:${dead}`
  const run = await startDaemon(t, `
log: { level: debug }
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p:
    algorithm: round-robin
    retries: 1
    backends: [${a.address}, ${d}]
    passive: { max_failures: 2, ejection_time: 400ms }
`)
  const errors = async (): Promise<number> => Number(new RegExp(`sluice_connect_errors_total\\{pool="p",backend="${d.replace(/\./g, '\\.')}",reason="refused"\\} (\\d+)`).exec(await run.metrics())?.[1] ?? 0)
  t.same(await greetings(run.port('l'), 6), ['a', 'a', 'a', 'a', 'a', 'a'], 'clients never notice: retries reach the live one')
  const ejected = await run.logs.waitFor((l) => l.code === 'SLUICE_ERR_BACKEND_EJECTED')
  t.equal(ejected.msg, `backend ${d} ejected for 400ms: 2 consecutive connect failures (last: ECONNREFUSED)`)
  const atEjection = await errors()
  t.equal(atEjection, 2, 'ejected at the second failure')
  const pool = run.daemon.pools.get('p')!
  t.equal(pool.find(d)?.state, 'down')
  await greetings(run.port('l'), 6)
  t.equal(await errors(), 2, 'no connect was tried on it while ejected')
  await run.logs.waitFor((l) => msgOf(l) === `backend ${d}: ejection over, trying it again`, 5000)
  t.equal(pool.find(d)?.state, 'up')
  await greetings(run.port('l'), 4)
  t.ok((await errors()) > 2, 'tried again after the ejection time')
  await eventually(() => run.logs.lines.filter((l) => l.code === 'SLUICE_ERR_BACKEND_EJECTED').length === 2, 'ejected again')
  // Two of the four picks went to it: ejected at the second, its count having started anew.
  t.equal(await errors(), 4, 'ejected again after 2 more failures, not at the first')
  t.match(await run.metrics(), new RegExp(`sluice_backend_ejections_total\\{pool="p",backend="${d.replace(/\./g, '\\.')}"\\} 2`))
})

t.test('passive ejection with an active check: a passing check does not end the ejection early', async (t) => {
  // The backend accepts (so the tcp check passes) but we make client connects fail by
  // pointing the check at a port that is alive while clients go to a dead one.
  const alive = await namedBackend(t, 'check-target')
  const a = await namedBackend(t, 'a')
  const dead = await deadPort()
  const d = `127.0.0.1:${dead}`
  const run = await startDaemon(t, `
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p:
    retries: 1
    backends: [${a.address}, ${d}]
    health_check: { type: tcp, interval: 100ms, timeout: 100ms, port: ${alive.port}, rise: 1 }
    passive: { max_failures: 1, ejection_time: 300ms }
`)
  const pool = run.daemon.pools.get('p')!
  t.equal(pool.find(d)?.state, 'up', 'its check (on the check port) passes')
  await greetings(run.port('l'), 2)
  await run.logs.waitFor((l) => l.code === 'SLUICE_ERR_BACKEND_EJECTED')
  const ejectedAt = Date.now()
  await eventually(() => pool.find(d)?.state === 'up', 'the ejection to end', 5000)
  t.ok(Date.now() - ejectedAt >= 250, 'stayed down for the ejection time although its checks kept passing')
})

t.test('every backend down: backups serve; with none, refuse at once, counted; recover by itself', async (t) => {
  const primary = await restartable(t, 'primary')
  const spare = await restartable(t, 'spare')
  const run = await startDaemon(t, `
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p:
    retries: 0
    backends: [${primary.address}, { address: ${spare.address}, backup: true }]
    health_check: { type: tcp, interval: 250ms, timeout: 250ms, rise: 1, fall: 1 }
`)
  t.same(await greetings(run.port('l'), 2), ['primary', 'primary'], 'the backup is idle while the primary is up')
  await primary.stop()
  await run.logs.waitFor((l) => msgOf(l).startsWith(`backend ${primary.address} is down`))
  t.same(await greetings(run.port('l'), 2), ['spare', 'spare'], 'the backup serves while every primary is down')
  await spare.stop()
  await run.logs.waitFor((l) => msgOf(l).startsWith(`backend ${spare.address} is down`))
  const started = Date.now()
  t.equal(await refusedWith(run.port('l')), 'ECONNRESET', 'refused with a reset')
  t.ok(Date.now() - started < 2500, 'at once, not after the 3 s connect timeout')
  t.match(await run.metrics(), /sluice_rejected_connections_total\{listener="l",reason="no_backend"\} 1/)
  t.ok(run.logs.lines.some((l) => l.code === 'SLUICE_ERR_NO_BACKEND'))
  await primary.start()
  await run.logs.waitFor((l) => msgOf(l).startsWith(`backend ${primary.address} is up: rise 1/1`))
  t.equal(await greeting(run.port('l')), 'primary', 'recovered by itself')
})

t.test('drain: no new connections to a draining backend; its open ones finish; checks leave it draining', async (t) => {
  const a = await namedBackend(t, 'a')
  const b = await namedBackend(t, 'b')
  const run = await startDaemon(t, `
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p:
    algorithm: round-robin
    backends: [${a.address}, ${b.address}]
    health_check: { type: tcp, interval: 250ms, timeout: 250ms }
`)
  const pool = run.daemon.pools.get('p')!
  // Open connections until one lands on b.
  const open: Socket[] = []
  let onB: Socket | undefined
  for (let i = 0; i < 4 && onB === undefined; i++) {
    const s = await dial(run.port('l'))
    open.push(s)
    if ((await readUntil(s, 'line')).toString().trim() === 'b') onB = s
  }
  t.teardown(() => open.forEach((s) => s.destroy()))
  if (onB === undefined) throw new Error('no connection reached b')
  pool.setState(pool.find(b.address)!, 'draining')
  t.same(await greetings(run.port('l'), 4), ['a', 'a', 'a', 'a'], 'new connections avoid the draining backend')
  const checksBefore = Number(new RegExp(`sluice_health_checks_total\\{pool="p",backend="${b.address}",result="success"\\} (\\d+)`).exec(await run.metrics())?.[1])
  await eventually(async () => Number(new RegExp(`sluice_health_checks_total\\{pool="p",backend="${b.address}",result="success"\\} (\\d+)`).exec(await run.metrics())?.[1]) >= checksBefore + 2, 'two more passing checks')
  t.equal(pool.find(b.address)?.state, 'draining', 'passing checks do not bring it back')
  onB.write('still here\n')
  t.equal((await readUntil(onB, 'line')).toString(), 'still here\n', 'the open connection still works')
  onB.end()
  await closed(onB)
  const line = await run.logs.waitFor((l) => l.access === true && l.backend === b.address)
  t.equal(line.close_reason, 'client_closed', 'and finished normally')
  t.equal(pool.find(b.address)?.active, 0)
})

t.test('reload: a backend added by a reload waits for its first probe; removing health_check brings all back', async (t) => {
  const a = await namedBackend(t, 'a')
  const dead = await deadPort()
  const yaml = (backends: string, check: string): string => `
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p:
    retries: 0
    backends: [${backends}]
${check}`
  const check = '    health_check: { type: tcp, interval: 1s, timeout: 200ms }'
  const run = await startDaemon(t, yaml(a.address, check))
  const { parseConfig } = await import('../../src/config/load.js')
  await run.daemon.reload(parseConfig(yaml(`${a.address}, 127.0.0.1:${dead}`, check), 'test.yaml', {}))
  const pool = run.daemon.pools.get('p')!
  t.equal(pool.find(`127.0.0.1:${dead}`)?.state, 'down', 'the new dead backend never joined the rotation')
  t.same(await greetings(run.port('l'), 4), ['a', 'a', 'a', 'a'])
  t.notMatch(await run.metrics(), /sluice_connect_errors_total\{/, 'no client was sent to it')
  await run.daemon.reload(parseConfig(yaml(`${a.address}, 127.0.0.1:${dead}`, ''), 'test.yaml', {}))
  t.equal(pool.find(`127.0.0.1:${dead}`)?.state, 'up', 'without checks every backend is up')
})

t.test('a UDP pool with a dns check: a backend answering SERVFAIL gets no clients', async (t) => {
  const { udpDns } = await import('../health/probe-helpers.js')
  const { UdpClient } = await import('../helpers/udp.js')
  const good = await udpDns(t, 0)
  const sick = await udpDns(t, 2)
  const run = await startDaemon(t, `
listeners: [{ name: u, protocol: udp, listen: 127.0.0.1:0, pool: d }]
pools:
  d:
    backends: [127.0.0.1:${good}, 127.0.0.1:${sick}]
    health_check: { type: dns, query: example.com, interval: 1s, timeout: 300ms }
`)
  const down = run.logs.lines.find((l) => l.code === 'SLUICE_ERR_HEALTH_CHECK')
  t.equal(down?.msg, `backend 127.0.0.1:${sick} is down: first check failed: answered SERVFAIL, expected NOERROR`)
  const query = Buffer.from('abcd01000001000000000000076578616d706c6503636f6d0000010001', 'hex')
  for (let i = 0; i < 4; i++) {
    const c = await UdpClient.open(t)
    c.send(run.port('u'), query)
    const answer = (await c.next()).msg
    t.equal(answer.readUInt16BE(2) & 0x0f, 0, `client ${i} answered NOERROR by the healthy backend`)
  }
})
