import t from 'tap'
import { createSocket, type RemoteInfo } from 'node:dgram'
import { parseConfig } from '../../src/config/load.js'
import { parseProxyHeader } from '../../src/proxy/proxy-protocol.js'
import { startDaemon, type Running } from '../helpers/daemon.js'
import { eventually } from '../helpers/net.js'
import { UdpClient, deadUdpPort, metricValue, udpBackend } from '../helpers/udp.js'
import { freePort } from './free-address.js'

const yaml = (udp: string, backends: string, pool = ''): string => `
listeners: [{ name: u, protocol: udp, listen: 127.0.0.1:0, pool: p, udp: { ${udp} } }]
pools: { p: { backends: [${backends}]${pool} } }
`

async function sockets(run: Running): Promise<{ created: number; reused: number; idle: number; late: number }> {
  const m = await run.metrics()
  return {
    created: metricValue(m, 'sluice_udp_upstream_sockets_total', { listener: 'u', outcome: 'created' }),
    reused: metricValue(m, 'sluice_udp_upstream_sockets_total', { listener: 'u', outcome: 'reused' }),
    idle: metricValue(m, 'sluice_udp_upstream_sockets_idle', { listener: 'u' }),
    late: metricValue(m, 'sluice_udp_late_replies_total', { listener: 'u' }),
  }
}

t.test('responses: 1, a new client port per query: every session reuses the one idle upstream socket', async (t) => {
  const a = await udpBackend(t, 'a')
  const run = await startDaemon(t, yaml('responses: 1', a.address))
  const port = run.port('u')
  const clients: number[] = []
  for (let i = 0; i < 20; i++) {
    const c = await UdpClient.open(t)
    clients.push(c.port)
    t.equal(await c.ask(port, `q${i}`), `a:q${i}`, `client ${i} gets its own answer`)
  }
  const lines = await run.logs.waitForAccess(20)
  t.same(lines.map((l) => l.client), clients.map((p) => `127.0.0.1:${p}`), '20 sessions, one per client port')
  t.ok(lines.every((l) => l.close_reason === 'responses'), 'each ended at its reply')
  t.equal(new Set(a.sources).size, 1, 'the backend saw one source port: one upstream socket for all 20')
  t.same(await sockets(run), { created: 1, reused: 19, idle: 1, late: 0 }, 'sluice_udp_upstream_sockets_total and _idle')

  // reuse_sockets: 0 on reload: the idle socket closes, and each session gets a new one.
  await run.daemon.reload(parseConfig(yaml('responses: 1, reuse_sockets: 0', a.address), 'test.yaml', {}))
  t.equal((await sockets(run)).idle, 0, 'the idle socket was closed by the reload')
  for (let i = 0; i < 3; i++) t.equal(await (await UdpClient.open(t)).ask(port, `r${i}`), `a:r${i}`)
  t.equal(new Set(a.sources).size, 4, 'three more sockets, one per session')
  t.same(await sockets(run), { created: 4, reused: 19, idle: 0, late: 0 })
})

t.test('a reply beyond udp.responses on an idle socket is dropped and counted, and the socket never serves another client', async (t) => {
  const a = await udpBackend(t, 'a', { mode: 'twice' })
  const run = await startDaemon(t, yaml('responses: 1', a.address))
  const port = run.port('u')
  const first = await UdpClient.open(t)
  t.equal(await first.ask(port, 'one'), 'a:one')
  const warn = await run.logs.waitFor((l) => l.code === 'SLUICE_ERR_UDP_LATE_REPLY')
  t.match(warn, { listener: 'u', pool: 'p', backend: a.address, bytes: 'a:one:again'.length, responses: 1 }, 'the warning names the backend and the setting')
  await eventually(async () => (await sockets(run)).late === 1, 'the late reply to be counted')
  t.equal(first.inbox.length, 0, 'the first client did not get the extra reply either')
  const second = await UdpClient.open(t)
  t.equal(await second.ask(port, 'two'), 'a:two', 'the next client gets its own answer')
  t.equal(new Set(a.sources).size, 2, 'over a new socket: the one that had a late reply was closed')
  await eventually(async () => (await sockets(run)).late === 2, 'the second late reply to be counted')
  t.equal(second.inbox.length, 0, 'and never a reply meant for anyone else')
  t.same(await sockets(run), { created: 2, reused: 0, idle: 0, late: 2 })
})

t.test('a session that ended without all its replies (timeout) closes its socket instead of leaving it', async (t) => {
  const a = await udpBackend(t, 'a')
  const run = await startDaemon(t, yaml('responses: 1, session_timeout: 100ms', a.address))
  const port = run.port('u')
  const quiet = await UdpClient.open(t)
  quiet.send(port, 'ignore this one')
  const [line] = await run.logs.waitForAccess(1)
  t.equal(line!.close_reason, 'timeout')
  t.equal((await sockets(run)).idle, 0, 'no idle socket: a reply could still be on its way')
  t.equal(await (await UdpClient.open(t)).ask(port, 'next'), 'a:next')
  t.equal(new Set(a.sources).size, 2, 'the next session got a socket of its own')
  t.same(await sockets(run), { created: 2, reused: 0, idle: 1, late: 0 })
})

t.test('at most reuse_sockets idle sockets per backend; PROXY v2 headers name each session\'s own client', async (t) => {
  // A backend that answers only once 4 queries are in, so 4 sessions run at once.
  const be = createSocket('udp4')
  const held: { msg: Buffer; r: RemoteInfo }[] = []
  const seen: Buffer[] = []
  be.on('message', (msg: Buffer, r: RemoteInfo) => {
    seen.push(msg)
    held.push({ msg, r })
    if (held.length < 4) return
    for (const h of held.splice(0)) be.send(Buffer.concat([Buffer.from('ok:'), h.msg.subarray(28)]), h.r.port, h.r.address)
  })
  await new Promise<void>((resolve) => be.bind(0, '127.0.0.1', resolve))
  t.teardown(() => be.close())
  const run = await startDaemon(t, yaml('responses: 1, reuse_sockets: 2', `127.0.0.1:${be.address().port}`, ', proxy_protocol: v2'))
  const port = run.port('u')
  const round = async (tag: string): Promise<UdpClient[]> => {
    const cs = await Promise.all([0, 1, 2, 3].map(() => UdpClient.open(t)))
    cs.forEach((c, i) => c.send(port, `${tag}${i}`))
    const got = await Promise.all(cs.map(async (c) => (await c.next()).msg.toString()))
    t.same(got, [0, 1, 2, 3].map((i) => `ok:${tag}${i}`), `round ${tag}: each of 4 clients gets its own answer`)
    return cs
  }
  await round('a')
  await eventually(async () => (await sockets(run)).idle === 2, '2 of the 4 sockets to be kept idle')
  const cs = await round('b')
  t.same(await sockets(run), { created: 6, reused: 2, idle: 2, late: 0 }, '4 new, then 2 reused and 2 new')
  const ports = seen.slice(4).map((m) => {
    const h = parseProxyHeader(m)
    return h.kind === 'ok' ? (h.header.addresses?.sourcePort ?? -1) : -1
  })
  t.same(ports.sort(), cs.map((c) => c.port).sort(), 'every datagram of round b carries its own client\'s address, reused socket or not')
})

t.test('a session moved off an unreachable backend onto an idle socket sends at once', async (t) => {
  const dead = await deadUdpPort()
  const live = await udpBackend(t, 'live')
  const run = await startDaemon(t, yaml('responses: 1', `${live.address}, 127.0.0.1:${dead}`, ', algorithm: round-robin'))
  const port = run.port('u')
  t.equal(await (await UdpClient.open(t)).ask(port, 'one'), 'live:one', 'the first client goes to the live backend')
  await eventually(async () => (await sockets(run)).idle === 1, 'its socket to be idle')
  const c = await UdpClient.open(t)
  c.send(port, 'lost')
  await run.logs.waitFor((l) => l.code === 'SLUICE_ERR_UDP_UNREACHABLE')
  t.equal(await c.ask(port, 'retry'), 'live:retry', 'the next datagram goes out on the idle socket of the live backend')
  t.equal(new Set(live.sources).size, 1, 'one socket to the live backend throughout')
  t.match(await sockets(run), { reused: 1 })
})

t.test('a renamed listener takes its idle upstream sockets to the new name in sluice_udp_upstream_sockets_idle', async (t) => {
  const a = await udpBackend(t, 'a')
  // A port of its own: a listener on port 0 keeps its socket by name, and this one is renamed.
  const port = await freePort('127.0.0.1')
  const named = (name: string, udp: string): string => yaml(udp, a.address).replace('name: u,', `name: ${name},`).replace('127.0.0.1:0', `127.0.0.1:${port}`)
  const run = await startDaemon(t, named('u', 'responses: 1'))
  t.equal(await (await UdpClient.open(t)).ask(port, 'one'), 'a:one')
  const idle = async (listener: string): Promise<number> => metricValue(await run.metrics(), 'sluice_udp_upstream_sockets_idle', { listener })
  t.equal(await idle('u'), 1)
  await run.daemon.reload(parseConfig(named('v', 'responses: 1'), 'test.yaml', {}))
  t.equal(run.port('v'), port, 'the same socket')
  t.equal(await idle('v'), 1, 'the idle socket counts under the new name')
  t.equal(await idle('u'), 0, 'and no more under the old one')
  t.equal(await (await UdpClient.open(t)).ask(port, 'two'), 'a:two')
  t.equal(new Set(a.sources).size, 1, 'the renamed listener reused it')
  await run.daemon.reload(parseConfig(named('v', 'responses: 1, reuse_sockets: 0'), 'test.yaml', {}))
  t.equal(await idle('v'), 0, 'closed by reuse_sockets: 0, and the gauge is 0, not below')
})
