import t from 'tap'
import { randomBytes } from 'node:crypto'
import { networkInterfaces } from 'node:os'
import { startDaemon } from '../helpers/daemon.js'
import { eventually } from '../helpers/net.js'
import { UdpClient, deadUdpPort, metricValue, udpBackend } from '../helpers/udp.js'

const udpListener = (pool: string, udp = '', listen = '127.0.0.1:0'): string =>
  `listeners: [{ name: u, protocol: udp, listen: "${listen}", pool: ${pool}${udp === '' ? '' : `, udp: { ${udp} }`} }]`

t.test('a client keeps its backend; replies come from the listener address', async (t) => {
  const a = await udpBackend(t, 'a')
  const b = await udpBackend(t, 'b')
  const run = await startDaemon(t, `
${udpListener('p')}
pools: { p: { algorithm: round-robin, backends: [${a.address}, ${b.address}] } }
`)
  const port = run.port('u')
  const c = await UdpClient.open(t)
  const replies: string[] = []
  for (let i = 0; i < 10; i++) {
    c.send(port, `q${i}`)
    const r = await c.next()
    t.equal(r.from.port, port, 'the reply comes from the port the client sent to')
    t.equal(r.from.address, '127.0.0.1')
    replies.push(r.msg.toString())
  }
  const name = replies[0]!.split(':')[0]
  t.same(replies, replies.map((_, i) => `${name}:q${i}`), `all 10 datagrams went to backend ${name}, in order`)
  const used = name === 'a' ? a : b
  t.equal(new Set(used.sources).size, 1, 'over one upstream socket')
  t.equal(run.daemon.listeners.get('u')!.sessions.size, 1, 'one session')
})

t.test('new clients spread over the backends by the pool algorithm', async (t) => {
  const bs = [await udpBackend(t, 'a'), await udpBackend(t, 'b'), await udpBackend(t, 'c')]
  const run = await startDaemon(t, `
${udpListener('p')}
pools: { p: { algorithm: round-robin, backends: [${bs.map((b) => b.address).join(', ')}] } }
`)
  const port = run.port('u')
  const seen = new Map<string, number>()
  for (let i = 0; i < 12; i++) {
    const c = await UdpClient.open(t)
    const name = (await c.ask(port, 'hi')).split(':')[0]!
    seen.set(name, (seen.get(name) ?? 0) + 1)
  }
  t.same([...seen.entries()].sort(), [['a', 4], ['b', 4], ['c', 4]], '12 clients, 4 per backend')
  t.equal(run.daemon.listeners.get('u')!.sessions.size, 12)
  t.equal(metricValue(await run.metrics(), 'sluice_udp_sessions_active', { listener: 'u' }), 12, 'sluice_udp_sessions_active')
})

t.test('responses: 1 ends the session at the reply (DNS); the next query starts a new one', async (t) => {
  const a = await udpBackend(t, 'a')
  const b = await udpBackend(t, 'b')
  const run = await startDaemon(t, `
${udpListener('p', 'responses: 1')}
pools: { p: { algorithm: round-robin, backends: [${a.address}, ${b.address}] } }
`)
  const port = run.port('u')
  const c = await UdpClient.open(t)
  const first = await c.ask(port, 'one')
  const [line] = await run.logs.waitForAccess(1)
  t.match(line, {
    access: true,
    protocol: 'udp',
    listener: 'u',
    client: `127.0.0.1:${c.port}`,
    pool: 'p',
    backend: first.startsWith('a:') ? a.address : b.address,
    bytes_in: 3,
    bytes_out: first.length,
    datagrams_in: 1,
    datagrams_out: 1,
    close_reason: 'responses',
  })
  t.type(line!.duration_ms, 'number')
  t.equal(run.daemon.listeners.get('u')!.sessions.size, 0, 'the session is gone at once')
  const second = await c.ask(port, 'two')
  t.not(second.split(':')[0], first.split(':')[0], 'the same client, a new session, the next backend')
  // Two queries in flight from one client port: the session waits for both replies.
  const silent = await udpBackend(t, 's', { mode: 'silent' })
  const run2 = await startDaemon(t, `
${udpListener('p', 'responses: 1')}
pools: { p: { backends: [${silent.address}] } }
`)
  const p2 = run2.port('u')
  c.send(p2, 'x1')
  c.send(p2, 'x2')
  await eventually(() => silent.received.length === 2, 'both queries to reach the backend')
  silent.socket.send('r1', Number(silent.sources[0]!.split(':')[1]), '127.0.0.1')
  t.equal((await c.next()).msg.toString(), 'r1')
  t.equal(run2.daemon.listeners.get('u')!.sessions.size, 1, 'one reply of two: the session stays')
  silent.socket.send('r2', Number(silent.sources[0]!.split(':')[1]), '127.0.0.1')
  t.equal((await c.next()).msg.toString(), 'r2')
  await eventually(() => run2.daemon.listeners.get('u')!.sessions.size === 0, 'the session to end after the second reply')
})

t.test('an idle session expires after session_timeout; traffic keeps it alive', async (t) => {
  const a = await udpBackend(t, 'a')
  const run = await startDaemon(t, `
${udpListener('p', 'session_timeout: 1s')}
pools: { p: { backends: [${a.address}] } }
`)
  const port = run.port('u')
  const busy = await UdpClient.open(t)
  const idle = await UdpClient.open(t)
  await idle.ask(port, 'once')
  const started = Date.now()
  // The busy client sends every 100ms for 2.5s: 2.5 timeouts, never idle for one.
  for (let i = 0; i < 25; i++) {
    await busy.ask(port, `tick${i}`)
    await new Promise((r) => setTimeout(r, 100))
  }
  const lines = await run.logs.waitForAccess(1)
  t.equal(lines.length, 1, 'only the idle session ended')
  t.match(lines[0], { client: `127.0.0.1:${idle.port}`, close_reason: 'timeout', datagrams_in: 1, datagrams_out: 1 })
  const d = lines[0]!.duration_ms as number
  t.ok(d >= 1000 && d < 2500, `the idle session lasted ${d}ms: its 1s timeout plus at most a tick or two`)
  t.ok(Date.now() - started >= 2500, 'while the busy one went on')
  t.equal(run.daemon.listeners.get('u')!.sessions.size, 1, 'the busy session is still there')
  await run.logs.waitForAccess(2)
  t.match(run.logs.access[1], { client: `127.0.0.1:${busy.port}`, close_reason: 'timeout', datagrams_in: 25 })
  t.equal(metricValue(await run.metrics(), 'sluice_udp_sessions_active', { listener: 'u' }), 0, 'no sessions left')
})

t.test('max_sessions: a new client beyond it is dropped and counted; a freed slot is reused', async (t) => {
  const a = await udpBackend(t, 'a')
  const run = await startDaemon(t, `
${udpListener('p', 'max_sessions: 2, session_timeout: 500ms')}
pools: { p: { backends: [${a.address}] } }
`)
  const port = run.port('u')
  const c1 = await UdpClient.open(t)
  const c2 = await UdpClient.open(t)
  const c3 = await UdpClient.open(t)
  await c1.ask(port, '1')
  await c2.ask(port, '2')
  for (let i = 0; i < 5; i++) c3.send(port, `3-${i}`)
  await eventually(async () => metricValue(await run.metrics(), 'sluice_rejected_connections_total', { listener: 'u', reason: 'max_sessions' }) === 5, '5 datagrams counted as rejected')
  t.equal(a.received.length, 2, 'the third client reached no backend')
  t.equal(run.daemon.listeners.get('u')!.sessions.size, 2, 'the table did not grow')
  const warn = await run.logs.waitFor((l) => l.code === 'SLUICE_ERR_UDP_MAX_SESSIONS')
  t.match(warn, { listener: 'u', max_sessions: 2 })
  t.equal(run.logs.lines.filter((l) => l.code === 'SLUICE_ERR_UDP_MAX_SESSIONS').length, 1, 'the warning is throttled')
  await run.logs.waitForAccess(2)
  t.equal(await c3.ask(port, 'again'), 'a:again', 'once sessions expired, the third client gets through')
  t.equal(c3.inbox.length, 0, 'and none of its dropped datagrams was ever answered')
})

t.test('datagrams of 65,507 bytes (the IPv4 maximum) and empty ones are relayed intact', async (t) => {
  const e = await udpBackend(t, 'e', { mode: 'echo' })
  const run = await startDaemon(t, `
${udpListener('p')}
pools: { p: { backends: [${e.address}] } }
`)
  const port = run.port('u')
  const c = await UdpClient.open(t)
  for (const size of [65_507, 1, 0, 9000, 65_507]) {
    const data = randomBytes(size)
    c.send(port, data)
    const r = await c.next()
    t.equal(r.msg.length, size, `${size} bytes back`)
    t.ok(r.msg.equals(data), `${size} bytes intact`)
  }
  t.same(e.received.map((m) => m.length), [65_507, 1, 0, 9000, 65_507], 'the backend got each datagram whole, once')
  const m = await run.metrics()
  t.equal(metricValue(m, 'sluice_udp_datagrams_total', { listener: 'u', direction: 'in' }), 5)
  t.equal(metricValue(m, 'sluice_udp_datagrams_total', { listener: 'u', direction: 'out' }), 5)
  t.equal(metricValue(m, 'sluice_bytes_total', { listener: 'u', direction: 'in' }), 2 * 65_507 + 9001)
})

t.test('a dead backend (ICMP port unreachable): the next datagram goes to a live one', async (t) => {
  const dead = await deadUdpPort()
  const live = await udpBackend(t, 'live')
  const run = await startDaemon(t, `
${udpListener('p')}
pools: { p: { algorithm: first, backends: [127.0.0.1:${dead}, ${live.address}] } }
`)
  const port = run.port('u')
  const c = await UdpClient.open(t)
  c.send(port, 'lost')
  const warn = await run.logs.waitFor((l) => l.code === 'SLUICE_ERR_UDP_UNREACHABLE')
  t.match(warn, { listener: 'u', pool: 'p', backend: `127.0.0.1:${dead}`, errno: 'ECONNREFUSED', client: `127.0.0.1:${c.port}` })
  t.equal(await c.ask(port, 'retry'), 'live:retry', 'the client\'s next datagram reached the live backend')
  t.equal(await c.ask(port, 'more'), 'live:more', 'and the session stays there')
  const deadBackend = run.daemon.pools.get('p')!.backends[0]!
  t.equal(deadBackend.consecutiveFailures, 1, 'the failure counts against the dead backend')
  t.equal(deadBackend.active, 0, 'which holds no session')
  const m = await run.metrics()
  t.equal(metricValue(m, 'sluice_connect_errors_total', { backend: `127.0.0.1:${dead}`, reason: 'refused' }), 1)
  run.daemon.listeners.get('u')!.destroy()
  const [line] = await run.logs.waitForAccess(1)
  t.match(line, { backend: live.address, datagrams_in: 3, datagrams_out: 2, attempts: 2, close_reason: 'shutdown' })
})

t.test('passive ejection: a refusal on UDP counts, and new clients skip the ejected backend', async (t) => {
  const dead = await deadUdpPort()
  const live = await udpBackend(t, 'live')
  const run = await startDaemon(t, `
${udpListener('p')}
pools: { p: { algorithm: first, passive: { max_failures: 1, ejection_time: 1h }, backends: [127.0.0.1:${dead}, ${live.address}] } }
`)
  const port = run.port('u')
  const first = await UdpClient.open(t)
  first.send(port, 'lost')
  await run.logs.waitFor((l) => l.code === 'SLUICE_ERR_BACKEND_EJECTED')
  t.ok(run.daemon.pools.get('p')!.backends[0]!.ejected, 'the dead backend is ejected')
  const fresh = await UdpClient.open(t)
  t.equal(await fresh.ask(port, 'hello'), 'live:hello', 'a new client goes straight to the live backend')
  t.equal(await first.ask(port, 'retry'), 'live:retry', 'and the first client\'s retry too')
})

t.test('every backend dead: the session ends with backend_error and holds nothing', async (t) => {
  const d1 = await deadUdpPort()
  const d2 = await deadUdpPort()
  const run = await startDaemon(t, `
${udpListener('p')}
pools: { p: { algorithm: first, retries: 1, backends: [127.0.0.1:${d1}, 127.0.0.1:${d2}] } }
`)
  const port = run.port('u')
  const c = await UdpClient.open(t)
  c.send(port, 'a')
  await eventually(() => run.daemon.pools.get('p')!.backends[0]!.consecutiveFailures === 1, 'the first backend to fail')
  c.send(port, 'b')
  await eventually(() => run.daemon.pools.get('p')!.backends[1]!.consecutiveFailures === 1, 'the second backend to fail')
  c.send(port, 'c')
  const [line] = await run.logs.waitForAccess(1)
  t.match(line, { close_reason: 'backend_error', attempts: 2, datagrams_in: 2, datagrams_out: 0 })
  t.equal(run.daemon.listeners.get('u')!.sessions.size, 0)
  t.same(run.daemon.pools.get('p')!.backends.map((b) => b.active), [0, 0], 'no backend holds a session')
})

t.test('a stray datagram to an upstream socket never reaches the client', async (t) => {
  const a = await udpBackend(t, 'a', { mode: 'silent' })
  const run = await startDaemon(t, `
${udpListener('p')}
pools: { p: { backends: [${a.address}] } }
`)
  const port = run.port('u')
  const c = await UdpClient.open(t)
  c.send(port, 'q')
  await eventually(() => a.received.length === 1, 'the query to reach the backend')
  const upstreamPort = Number(a.sources[0]!.split(':')[1])
  const stranger = await UdpClient.open(t)
  stranger.send(upstreamPort, 'spoofed')
  a.socket.send('genuine', upstreamPort, '127.0.0.1')
  t.equal((await c.next()).msg.toString(), 'genuine', 'only the backend\'s reply came through')
  t.equal(run.daemon.listeners.get('u')!.sessions.size, 1, 'the session is unharmed')
})

const hasV6 = Object.values(networkInterfaces()).some((l) => l?.some((a) => a.family === 'IPv6' && a.address === '::1'))

t.test('IPv6: listener and backends on ::1', { skip: hasV6 ? false : 'no ::1 on this host' }, async (t) => {
  const a = await udpBackend(t, 'a', { host: '::1' })
  const b = await udpBackend(t, 'b', { host: '::1' })
  const run = await startDaemon(t, `
${udpListener('p', 'responses: 1', '[::1]:0')}
pools: { p: { backends: ["${a.address}", "${b.address}"] } }
`)
  const port = run.port('u')
  t.equal(run.daemon.listenerAddress('u').host, '::1')
  const c = await UdpClient.open(t, '::1')
  const r1 = await c.ask(port, 'six', '::1')
  const r2 = await c.ask(port, 'six', '::1')
  t.same([r1, r2].sort(), ['a:six', 'b:six'], 'two sessions, one per backend')
  const lines = await run.logs.waitForAccess(2)
  t.equal(lines[0]!.client, `[::1]:${c.port}`)
})
