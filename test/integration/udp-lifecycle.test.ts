import t from 'tap'
import { parseConfig } from '../../src/config/load.js'
import { startDaemon } from '../helpers/daemon.js'
import { eventually, greeting, namedBackend } from '../helpers/net.js'
import { UdpClient, metricValue, udpBackend } from '../helpers/udp.js'

t.test('reload with the same address keeps the socket and open sessions, applies new settings', async (t) => {
  const a = await udpBackend(t, 'a')
  const b = await udpBackend(t, 'b')
  const yaml = (udp: string, backends: string): string => `
listeners: [{ name: u, protocol: udp, listen: 127.0.0.1:0, pool: p, udp: { ${udp} } }]
pools: { p: { algorithm: first, backends: [${backends}] } }
`
  const run = await startDaemon(t, yaml('session_timeout: 1h', a.address))
  const port = run.port('u')
  const old = await UdpClient.open(t)
  t.equal(await old.ask(port, 'before'), 'a:before')
  await run.daemon.reload(parseConfig(yaml('session_timeout: 300ms, responses: 1', `${b.address}, ${a.address}`), 'test.yaml', {}))
  t.equal(run.port('u'), port, 'the same socket: the same port')
  t.equal(run.daemon.listeners.get('u')!.sessions.size, 1, 'the open session survived')
  const fresh = await UdpClient.open(t)
  t.equal(await fresh.ask(port, 'new'), 'b:new', 'a new client uses the new pool order')
  const [line] = await run.logs.waitForAccess(1)
  t.match(line, { client: `127.0.0.1:${fresh.port}`, close_reason: 'responses' }, 'and the new responses setting')
  // The old session's next datagram still goes to a, and now expects one reply (responses: 1).
  t.equal(await old.ask(port, 'after'), 'a:after', 'the old session keeps its backend')
  const lines = await run.logs.waitForAccess(2)
  t.match(lines[1], { client: `127.0.0.1:${old.port}`, backend: a.address, close_reason: 'responses' })
})

t.test('idle sessions of a reloaded listener expire on the new, shorter timeout', async (t) => {
  const a = await udpBackend(t, 'a')
  const yaml = (timeout: string): string => `
listeners: [{ name: u, protocol: udp, listen: 127.0.0.1:0, pool: p, udp: { session_timeout: ${timeout} } }]
pools: { p: { backends: [${a.address}] } }
`
  const run = await startDaemon(t, yaml('1h'))
  const c = await UdpClient.open(t)
  await c.ask(run.port('u'), 'x')
  const reloadedAt = Date.now()
  await run.daemon.reload(parseConfig(yaml('200ms'), 'test.yaml', {}))
  const [line] = await run.logs.waitForAccess(1)
  t.match(line, { close_reason: 'timeout' })
  t.ok(Date.now() - reloadedAt < 5000, 'well before the old 1h')
})

t.test('a reload that moves the address retires the old socket once its sessions end', async (t) => {
  const a = await udpBackend(t, 'a')
  const yaml = (listen: string): string => `
listeners: [{ name: u, protocol: udp, listen: "${listen}", pool: p, udp: { session_timeout: 300ms } }]
pools: { p: { backends: [${a.address}] } }
`
  const run = await startDaemon(t, yaml('127.0.0.1:0'))
  const oldPort = run.port('u')
  const c = await UdpClient.open(t)
  t.equal(await c.ask(oldPort, 'one'), 'a:one')
  await run.daemon.reload(parseConfig(yaml('127.0.0.2:0'), 'test.yaml', {}))
  const newAddr = run.daemon.listenerAddress('u')
  t.equal(newAddr.host, '127.0.0.2')
  t.equal(await c.ask(oldPort, 'two'), 'a:two', 'the open session still works on the old socket')
  const other = await UdpClient.open(t)
  other.send(oldPort, 'late')
  await eventually(async () => metricValue(await run.metrics(), 'sluice_rejected_connections_total', { listener: 'u', reason: 'shutdown' }) === 1, 'a new client on the old socket to be refused')
  t.equal(await c.ask(newAddr.port, 'three', '127.0.0.2'), 'a:three', 'the new address answers')
  await run.logs.waitForAccess(2)
  await eventually(() => run.daemon.openConnections === 0, 'both sessions to end')
})

t.test('graceful stop: no new clients, open sessions run until they end', async (t) => {
  const a = await udpBackend(t, 'a')
  const run = await startDaemon(t, `
shutdown_timeout: 30s
listeners: [{ name: u, protocol: udp, listen: 127.0.0.1:0, pool: p, udp: { session_timeout: 500ms } }]
pools: { p: { backends: [${a.address}] } }
`)
  const port = run.port('u')
  const c = await UdpClient.open(t)
  await c.ask(port, 'hello')
  const stopped = run.daemon.stop()
  let done = false
  void stopped.then(() => (done = true))
  t.equal(await c.ask(port, 'still'), 'a:still', 'the open session is still relayed')
  const late = await UdpClient.open(t)
  late.send(port, 'new')
  await eventually(async () => metricValue(await run.metrics(), 'sluice_rejected_connections_total', { listener: 'u', reason: 'shutdown' }) === 1, 'the new client to be refused')
  t.notOk(done, 'stop waits for the open session')
  await stopped
  t.match(run.logs.access, [{ close_reason: 'timeout', datagrams_in: 2 }], 'the session ended on its own timeout')
  t.equal(a.received.length, 2, 'the refused client reached no backend')
})

t.test('stop past shutdown_timeout ends the sessions left with reason shutdown', async (t) => {
  const a = await udpBackend(t, 'a')
  const run = await startDaemon(t, `
shutdown_timeout: 200ms
listeners: [{ name: u, protocol: udp, listen: 127.0.0.1:0, pool: p }]
pools: { p: { backends: [${a.address}] } }
`)
  const c = await UdpClient.open(t)
  await c.ask(run.port('u'), 'x')
  await run.daemon.stop()
  t.match(run.logs.access, [{ close_reason: 'shutdown' }])
  t.equal(run.daemon.openConnections, 0)
})

t.test('a listener can switch between tcp and udp on reload', async (t) => {
  const tcp = await namedBackend(t, 'tcp')
  const udp = await udpBackend(t, 'udp')
  const yaml = (proto: string, backend: string): string => `
listeners: [{ name: l, protocol: ${proto}, listen: 127.0.0.1:0, pool: p }]
pools: { p: { backends: [${backend}] } }
`
  const run = await startDaemon(t, yaml('tcp', tcp.address))
  t.equal(await greeting(run.port('l')), 'tcp')
  await run.daemon.reload(parseConfig(yaml('udp', udp.address), 'test.yaml', {}))
  t.equal(run.daemon.listeners.get('l')!.protocol, 'udp')
  const c = await UdpClient.open(t)
  t.equal(await c.ask(run.port('l'), 'q'), 'udp:q')
})
