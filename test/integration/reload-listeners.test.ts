import t, { type Test } from 'tap'
import type { Socket } from 'node:net'
import { parseConfig } from '../../src/config/load.js'
import { startDaemon } from '../helpers/daemon.js'
import { dial, eventually, greeting, namedBackend, readUntil } from '../helpers/net.js'
import { UdpClient, metricValue, udpBackend } from '../helpers/udp.js'
import { connectOutcome, freePort, quietLoopback } from './free-address.js'

// A listener keeps its socket by address (protocol, host, port), not by name, across a reload.
// Listeners sit on a loopback address of their own, so a port found free stays free.
const host = quietLoopback()

/** Opens a connection, reads the backend's greeting, and keeps the connection open. */
async function held(t: Test, port: number): Promise<{ socket: Socket; greeting: string }> {
  const socket = await dial(port, host)
  t.teardown(() => socket.destroy())
  return { socket, greeting: (await readUntil(socket, 'line')).toString().trim() }
}

/** Writes a line on an open connection and reads the echo back. */
async function echo(s: Socket, text: string): Promise<string> {
  s.write(text + '\n')
  return (await readUntil(s, 'line')).toString().trim()
}

/**
 * Connects to each port over and over until `stop()`: every attempt must connect and get a
 * greeting. Resolves with the greetings seen per port, or rejects with the first failure.
 */
function keepDialing(ports: readonly number[]): { stop: () => Promise<Map<number, string[]>> } {
  let running = true
  const seen = new Map<number, string[]>(ports.map((p) => [p, []]))
  const loops = ports.map(async (port) => {
    for (let i = 0; running && i < 10_000; i++) seen.get(port)?.push(await greeting(port, host))
  })
  return {
    stop: async () => {
      running = false
      await Promise.all(loops)
      return seen
    },
  }
}

t.test('a renamed listener keeps its socket and its open connection; new connections count under the new name', async (t) => {
  const a = await namedBackend(t, 'a')
  const port = await freePort(host)
  const yaml = (name: string): string => `
log: { level: info, access_log: true }
listeners: [{ name: ${name}, listen: "${host}:${port}", pool: p }]
pools: { p: { backends: ["${a.address}"] } }
`
  const run = await startDaemon(t, yaml('old'))
  const open = await held(t, port)
  t.equal(open.greeting, 'a')
  const dialing = keepDialing([port])
  await run.daemon.reload(parseConfig(yaml('new'), 'test.yaml', {}))
  const seen = await dialing.stop()
  t.ok((seen.get(port) ?? []).every((g) => g === 'a'), `every connection during the reload was served (${seen.get(port)?.length ?? 0})`)
  t.same([...run.daemon.listeners.keys()], ['new'], 'the listener has its new name')
  t.equal(run.port('new'), port, 'on the same port')
  t.equal(await echo(open.socket, 'still here'), 'still here', 'the connection opened before the rename still works')
  // The connections dialed during the reload have ended; their sessions finish as their ends arrive.
  await eventually(() => run.daemon.listeners.get('new')?.sessions.size === 1, 'only the held connection to remain')
  t.equal(run.daemon.listeners.get('new')?.sessions.size, 1, 'and belongs to the renamed listener')
  t.equal(await greeting(port, host), 'a', 'a new connection is accepted')
  const after = (seen.get(port)?.length ?? 0) + 1
  await run.logs.waitForAccess(after)
  open.socket.end()
  const lines = await run.logs.waitForAccess(after + 1)
  t.match(lines.at(-1), { listener: 'new', close_reason: 'client_closed' }, 'the open connection is logged under the new name')
  t.ok(lines.every((l) => l.listener === 'new'), 'so are the connections made after the rename')
  const text = await run.metrics()
  t.equal(metricValue(text, 'sluice_connections_total', { listener: 'old' }), 1, 'what was counted before the rename stays under the old name')
  t.equal(metricValue(text, 'sluice_connections_total', { listener: 'new' }), after, 'the connections made after the rename count under the new name')
  t.notMatch(text, /sluice_connections_active\{listener="old"\}/, 'no stale gauge under the old name')
  t.match(text, /sluice_connections_active\{listener="new"\} 0/)
  t.notMatch(text, /sluice_rejected_connections_total\{/, 'no connection was refused')
})

t.test('two listeners that swap ports swap sockets: each port now reaches the other pool', async (t) => {
  const a = await namedBackend(t, 'a')
  const b = await namedBackend(t, 'b')
  const p1 = await freePort(host)
  let p2 = await freePort(host)
  for (let i = 0; p2 === p1 && i < 10; i++) p2 = await freePort(host)
  const yaml = (x: number, y: number): string => `
log: { level: info, access_log: false }
listeners:
  - { name: x, listen: "${host}:${x}", pool: pa }
  - { name: y, listen: "${host}:${y}", pool: pb }
pools:
  pa: { backends: ["${a.address}"] }
  pb: { backends: ["${b.address}"] }
`
  const run = await startDaemon(t, yaml(p1, p2))
  t.same([await greeting(p1, host), await greeting(p2, host)], ['a', 'b'])
  const on1 = await held(t, p1)
  const on2 = await held(t, p2)
  const dialing = keepDialing([p1, p2])
  await run.daemon.reload(parseConfig(yaml(p2, p1), 'test.yaml', {}))
  const seen = await dialing.stop()
  t.ok([...seen.values()].every((gs) => gs.every((g) => g === 'a' || g === 'b')), 'every connection during the reload was served')
  t.same([run.port('x'), run.port('y')], [p2, p1], 'the listeners swapped ports')
  t.same([await greeting(p1, host), await greeting(p2, host)], ['b', 'a'], 'each port now reaches the other pool')
  t.equal(await echo(on1.socket, 'one'), 'one', 'open connections keep their backend')
  t.equal(await echo(on2.socket, 'two'), 'two')
  t.same([run.daemon.listeners.get('y')?.sessions.size, run.daemon.listeners.get('x')?.sessions.size], [1, 1], 'and move with their socket')
  t.notMatch(await run.metrics(), /sluice_rejected_connections_total\{/, 'no connection was refused')
})

t.test('a listener that changes protocol on the same port is replaced: TCP closes, UDP answers', async (t) => {
  const a = await namedBackend(t, 'a')
  const u = await udpBackend(t, 'u')
  const port = await freePort(host)
  const yaml = (protocol: 'tcp' | 'udp'): string => `
log: { level: info, access_log: false }
listeners: [{ name: x, protocol: ${protocol}, listen: "${host}:${port}", pool: ${protocol} }]
pools:
  tcp: { backends: ["${a.address}"] }
  udp: { backends: ["${u.address}"] }
`
  const run = await startDaemon(t, yaml('tcp'))
  const open = await held(t, port)
  await run.daemon.reload(parseConfig(yaml('udp'), 'test.yaml', {}))
  t.equal(run.daemon.listeners.get('x')?.protocol, 'udp')
  const c = await UdpClient.open(t)
  t.equal(await c.ask(port, 'hi', host), 'u:hi', 'the UDP listener answers on the port')
  t.equal(await connectOutcome(port, host), 'ECONNREFUSED', 'the TCP socket is closed')
  t.equal(await echo(open.socket, 'drains'), 'drains', 'the open TCP connection finishes on the retired listener')
  open.socket.end()
  await eventually(() => run.daemon.openConnections === 1, 'the TCP connection to end (the UDP session stays)')
  // And back: the UDP socket goes, a TCP one is bound again.
  await run.daemon.reload(parseConfig(yaml('tcp'), 'test.yaml', {}))
  t.equal(await greeting(port, host), 'a', 'TCP again')
})

t.test('a renamed UDP listener keeps its socket and its session; the sessions gauge moves with it', async (t) => {
  const u = await udpBackend(t, 'u')
  const port = await freePort(host)
  const yaml = (name: string): string => `
log: { level: info, access_log: true }
shutdown_timeout: 100ms
listeners: [{ name: ${name}, protocol: udp, listen: "${host}:${port}", pool: p, udp: { session_timeout: 1h } }]
pools: { p: { backends: ["${u.address}"] } }
`
  const run = await startDaemon(t, yaml('dns'))
  const c = await UdpClient.open(t)
  t.equal(await c.ask(port, 'one', host), 'u:one')
  t.equal(metricValue(await run.metrics(), 'sluice_udp_sessions_active', { listener: 'dns' }), 1)
  await run.daemon.reload(parseConfig(yaml('resolver'), 'test.yaml', {}))
  t.equal(run.port('resolver'), port, 'the same socket')
  t.equal(await c.ask(port, 'two', host), 'u:two', 'the open session still answers')
  t.equal(run.daemon.listeners.get('resolver')?.sessions.size, 1, 'and belongs to the renamed listener')
  let text = await run.metrics()
  t.equal(metricValue(text, 'sluice_udp_sessions_active', { listener: 'resolver' }), 1, 'the live session counts under the new name')
  t.equal(metricValue(text, 'sluice_udp_sessions_active', { listener: 'dns' }), 0, 'and no more under the old one')
  await run.daemon.stop()
  text = await run.metrics()
  t.equal(metricValue(text, 'sluice_udp_sessions_active', { listener: 'resolver' }), 0, 'the gauge is back to 0 when the session ends, not below')
  t.match(run.logs.access.at(-1), { listener: 'resolver' }, 'the session is logged under the new name')
})

t.test('a listener on port 0 keeps its socket by name; a file that names the port it got keeps it too', async (t) => {
  const a = await namedBackend(t, 'a')
  const yaml = (listen: string, name = 'l'): string => `
log: { level: info, access_log: false }
listeners: [{ name: ${name}, listen: "${listen}", pool: p }]
pools: { p: { backends: ["${a.address}"] } }
`
  const run = await startDaemon(t, yaml(`${host}:0`))
  const port = run.port('l')
  const open = await held(t, port)
  await run.daemon.reload(parseConfig(yaml(`${host}:0`), 'test.yaml', {}))
  t.equal(run.port('l'), port, 'port 0, same name: the same socket')
  await run.daemon.reload(parseConfig(yaml(`${host}:${port}`, 'named'), 'test.yaml', {}))
  t.equal(run.port('named'), port, 'the port it got, under another name: the same socket')
  t.equal(run.daemon.listeners.get('named')?.sessions.size, 1, 'with its open connection')
  t.equal(await echo(open.socket, 'ok'), 'ok')
})

t.test('a reload that fails gives back the shared-counter slots it handed out for its new backends and listeners', async (t) => {
  const a = await namedBackend(t, 'a')
  const taken = await namedBackend(t, 'taken')
  const port = await freePort(host)
  const file = (backends: string[], extra = ''): string => `
listeners:
  - { name: l, listen: "${host}:${port}", pool: p }
${extra}
pools:
  p: { backends: [${backends.map((b) => `"${b}"`).join(', ')}] }
`
  const run = await startDaemon(t, file([a.address]))
  const before = run.daemon.sharedSlotsInUse
  // Each broken file adds a backend and a listener, and binds a port another socket holds.
  for (let i = 1; i <= 5; i++) {
    const broken = file([a.address, `127.0.0.1:${40_000 + i}`], `  - { name: m${i}, listen: "127.0.0.1:${taken.port}", pool: p }`)
    await t.rejects(run.daemon.reload(parseConfig(broken, 'test.yaml', {})), { code: 'SLUICE_ERR_LISTEN' })
  }
  t.equal(run.daemon.sharedSlotsInUse, before, `still ${before} keys after 5 failed reloads`)
  t.equal(await greeting(port, host), 'a', 'the running configuration serves')
  await run.daemon.reload(parseConfig(file([a.address, taken.address]), 'test.yaml', {}))
  t.equal(run.daemon.sharedSlotsInUse, before + 1, 'one more once a reload adding a backend succeeds')
})
