import t, { type Test } from 'tap'
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram'
import { startDaemon, type Running } from '../helpers/daemon.js'
import { eventually } from '../helpers/net.js'
import { askFromNewPort, metricValue } from '../helpers/udp.js'
import { parseConfig } from '../../src/config/load.js'
import { reusePortAvailable } from '../../src/config/validate.js'
import { backendAction } from '../../src/admin/backend-actions.js'
import { memberAction } from '../../src/admin/backend-members.js'
import { loadNativeDns } from '../../src/proxy/native-dns.js'

/*
 * The native DNS relay (native/dns.c) over real sockets: that it is the relay running, that
 * answers reach the right clients with many at once, that late answers are dropped and
 * counted, that a backend taken out gets nothing, reloads, and workers: 2.
 */
const native = loadNativeDns()
const skip = process.env.SLUICE_TEST_RELAY === 'js' ? 'SLUICE_TEST_RELAY=js: the JS DNS relay runs' : native.binding === undefined ? `the native DNS relay is not available: ${native.reason}` : false

function query(id: number, name: string): Buffer {
  const labels = name.split('.').map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)]))
  const header = Buffer.alloc(12)
  header.writeUInt16BE(id, 0)
  header.writeUInt16BE(0x0100, 2)
  header.writeUInt16BE(1, 4)
  return Buffer.concat([header, ...labels, Buffer.from([0, 0, 1, 0, 1])])
}

function qname(msg: Buffer): string {
  const parts: string[] = []
  let i = 12
  while (i < msg.length && msg[i]! !== 0) {
    parts.push(msg.subarray(i + 1, i + 1 + msg[i]!).toString())
    i += 1 + msg[i]!
  }
  return parts.join('.')
}

interface DnsBackend {
  address: string
  socket: Socket
  queries: Buffer[]
  sources: Set<string>
  silent: boolean
}

/** Answers each query by echoing it with QR set; `silent` answers nothing. */
async function dnsBackend(t: Test): Promise<DnsBackend> {
  const socket = createSocket('udp4')
  const be: DnsBackend = { address: '', socket, queries: [], sources: new Set(), silent: false }
  socket.on('message', (msg: Buffer, r: RemoteInfo) => {
    be.queries.push(msg)
    be.sources.add(`${r.address}:${r.port}`)
    if (be.silent) return
    const answer = Buffer.from(msg)
    answer[2] = answer[2]! | 0x80
    socket.send(answer, r.port, r.address)
  })
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve))
  socket.setRecvBufferSize(4 * 1024 * 1024)
  t.teardown(() => socket.close())
  be.address = `127.0.0.1:${socket.address().port}`
  return be
}

/** A client on a new source port: sends `qs` and resolves with what came back within `ms`. */
function client(port: number, qs: Buffer[], ms = 3000): Promise<Buffer[]> {
  return askFromNewPort(port, qs, { ms, recvBufferSize: 1024 * 1024 })
}

const yaml = (backends: string[], udp = '', top = '', pool = '', listener = ''): string => `${top}
log: { level: info }
admin: { listen: "127.0.0.1:0" }
listeners: [{ name: dns, protocol: udp, listen: 127.0.0.1:0, pool: p, udp: { mode: dns${udp} }${listener} }]
pools:
  p: { backends: [${backends.map((b) => `"${b}"`).join(', ')}]${pool} }
`

/** A daemon on the config `text`, once its DNS listener says it runs on the native relay, and that listener's port. */
async function nativeDaemon(t: Test, text: string): Promise<{ run: Running; port: number }> {
  const run = await startDaemon(t, text)
  await run.logs.waitFor((l) => l.dns_relay === 'native')
  return { run, port: run.port('dns') }
}

async function status(run: Running): Promise<{ listeners: { name: string; dns_relay?: string }[] }> {
  const admin = run.daemon.adminAddress()!
  return (await (await fetch(`http://127.0.0.1:${admin.port}/api/status`)).json()) as { listeners: { name: string; dns_relay?: string }[] }
}

t.test('the native DNS relay runs dns mode: the log line and /api/status say so; relay: js, access rules and other algorithms run the JS one', { skip }, async (t) => {
  const be = await dnsBackend(t)
  const run = await startDaemon(t, yaml([be.address]), 'native.yaml')
  const line = await run.logs.waitFor((l) => l.listener === 'dns' && l.dns_relay !== undefined)
  t.equal(line.dns_relay, 'native', String(line.msg))
  t.equal((await status(run)).listeners[0]?.dns_relay, 'native', '/api/status says native')
  const [answer] = await client(run.port('dns'), [query(77, 'n.example.test')])
  t.equal(answer?.readUInt16BE(0), 77, 'and it answers')

  for (const [what, text, reason] of [
    ['relay: js', yaml([be.address], '', 'relay: js'), /relay: js/],
    ['least-connections', yaml([be.address], '', '', ', algorithm: least-connections'), /least-connections/],
    ['an access rule', yaml([be.address], '', '', '', ', access: { allow: ["127.0.0.0/8"] }'), /access/],
  ] as const) {
    const other = await startDaemon(t, text, 'js.yaml')
    const l = await other.logs.waitFor((x) => x.listener === 'dns' && x.dns_relay !== undefined)
    t.equal(l.dns_relay, 'js', `${what}: ${String(l.msg)}`)
    t.match(String(l.reason), reason, `${what}: the reason is given`)
    t.equal((await status(other)).listeners[0]?.dns_relay, 'js', `${what}: /api/status says js`)
    const [a] = await client(other.port('dns'), [query(78, 'j.example.test')])
    t.equal(a?.readUInt16BE(0), 78, `${what}: the JS relay answers`)
  }
})

t.test('native: 100 clients at once, 20 queries each with the same IDs: every answer goes back to its own client, with its own ID and question', { skip }, async (t) => {
  const a = await dnsBackend(t)
  const b = await dnsBackend(t)
  const { run, port } = await nativeDaemon(t, yaml([a.address, b.address]))
  // Every client uses IDs 1..20: only the client's address:port tells the answers apart.
  const results = await Promise.all(Array.from({ length: 100 }, (_, c) => client(port, Array.from({ length: 20 }, (_, i) => query(i + 1, `c${c}-q${i + 1}.example.test`)))))
  let wrong = 0
  let missing = 0
  results.forEach((got, c) => {
    missing += 20 - got.length
    for (const m of got) if (qname(m) !== `c${c}-q${m.readUInt16BE(0)}.example.test`) wrong++
  })
  t.equal(wrong, 0, 'no answer reached another client or carried another ID')
  t.ok(missing <= 20, `${2000 - missing} of 2,000 answered (loopback may drop a few under a burst)`)
  t.ok(a.sources.size <= 2 && b.sources.size <= 2, `two upstream sockets per backend (${a.sources.size}, ${b.sources.size})`)
  const m = await run.metrics()
  t.equal(metricValue(m, 'sluice_udp_datagrams_total', { listener: 'dns', direction: 'in' }), a.queries.length + b.queries.length, 'datagrams in: every query relayed')
  t.equal(metricValue(m, 'sluice_udp_datagrams_total', { listener: 'dns', direction: 'out' }), 2000 - missing, 'datagrams out: every answer passed on')
  t.ok(Math.abs(a.queries.length - b.queries.length) <= 2, `round-robin: ${a.queries.length}/${b.queries.length}`)
})

t.test('native: an answer after query_timeout is dropped and counted as unmatched; the timeout is counted and frees the slot', { skip }, async (t) => {
  const be = await dnsBackend(t)
  const { run, port } = await nativeDaemon(t, yaml([be.address], ', query_timeout: 150ms'))
  be.silent = true
  t.same(await client(port, [query(5, 'late.example.test')], 600), [], 'no answer in time')
  await eventually(async () => metricValue(await run.metrics(), 'sluice_dns_dropped_total', { listener: 'dns', reason: 'timeout' }) === 1, 'the query to time out')
  t.equal(run.daemon.pools.get('p')!.backends[0]!.active, 0, 'its backend slot is free again')
  // The answer comes now, from the backend's side, to the socket sluice asked on.
  const late = Buffer.from(be.queries[0]!)
  late[2] = late[2]! | 0x80
  const [host, p] = [...be.sources][0]!.split(':')
  be.socket.send(late, Number(p), host)
  await eventually(async () => metricValue(await run.metrics(), 'sluice_dns_dropped_total', { listener: 'dns', reason: 'unmatched_answer' }) === 1, 'the late answer to be counted')
  be.silent = false
  const [ok] = await client(port, [query(6, 'fine.example.test')])
  t.equal(ok?.readUInt16BE(0), 6, 'later queries are answered')
  t.equal(metricValue(await run.metrics(), 'sluice_udp_datagrams_total', { listener: 'dns', direction: 'out' }), 1, 'only that answer went out')
})

t.test('native: a disabled backend gets no queries; enabled again, it gets its share', { skip }, async (t) => {
  const a = await dnsBackend(t)
  const b = await dnsBackend(t)
  const { run, port } = await nativeDaemon(t, yaml([a.address, b.address]))
  const batch = (tag: string, n: number): Promise<Buffer[]> => client(port, Array.from({ length: n }, (_, i) => query(i, `${tag}${i}.example.test`)))
  t.notOk('status' in backendAction(run.daemon, 'p', b.address, 'disable'), 'b disabled')
  // The state reaches the data plane (and the relay's table) asynchronously: wait for a
  // batch that b has no part of, then check a larger one.
  await eventually(async () => {
    const before = b.queries.length
    await batch('probe', 10)
    return b.queries.length === before
  }, 'b to leave the rotation')
  const before = b.queries.length
  const got = await batch('off', 200)
  t.equal(b.queries.length - before, 0, 'b got none of 200 queries')
  t.ok(got.length >= 198, `a answered ${got.length}`)
  t.notOk('status' in backendAction(run.daemon, 'p', b.address, 'enable'), 'b enabled')
  await eventually(async () => {
    const n = b.queries.length
    await batch('back', 10)
    return b.queries.length > n
  }, 'b to take queries again')
})

t.test('native: a reload that keeps the listener keeps its socket; another algorithm hands it to the JS relay and back', { skip }, async (t) => {
  const a = await dnsBackend(t)
  const b = await dnsBackend(t)
  const { run, port } = await nativeDaemon(t, yaml([a.address]))
  const [one] = await client(port, [query(1, 'one.example.test')])
  t.equal(one?.readUInt16BE(0), 1, 'answered before the reload')

  await run.daemon.reload(parseConfig(yaml([a.address, b.address]), 'test.yaml', {}))
  t.equal(run.port('dns'), port, 'same port')
  const got = await client(port, Array.from({ length: 20 }, (_, i) => query(i, `two${i}.example.test`)))
  t.equal(got.length, 20, 'answered after the reload')
  t.ok(b.queries.length >= 9, `the new backend takes its share (${b.queries.length} of 20)`)

  await run.daemon.reload(parseConfig(yaml([a.address, b.address], '', '', ', algorithm: least-connections'), 'test.yaml', {}))
  await run.logs.waitFor((l) => l.dns_relay === 'js' && /least-connections/.test(String(l.reason)))
  const js = await client(port, [query(3, 'three.example.test')])
  t.equal(js[0]?.readUInt16BE(0), 3, 'the JS relay answers on the same socket')

  await run.daemon.reload(parseConfig(yaml([a.address, b.address]), 'test.yaml', {}))
  await eventually(() => run.logs.lines.filter((l) => l.dns_relay === 'native').length === 2, 'the native relay to take the socket again')
  const back = await client(port, [query(4, 'four.example.test')])
  t.equal(back[0]?.readUInt16BE(0), 4, 'and answers')
  const m = await run.metrics()
  t.equal(metricValue(m, 'sluice_udp_datagrams_total', { listener: 'dns', direction: 'in' }), 23, 'datagrams in, over both relays')
  t.equal(metricValue(m, 'sluice_udp_datagrams_total', { listener: 'dns', direction: 'out' }), 23, 'datagrams out, over both relays')
})

t.test('native: a graceful stop answers what is in flight, then closes', { skip }, async (t) => {
  const be = await dnsBackend(t)
  const run = await startDaemon(t, yaml([be.address]))
  await run.logs.waitFor((l) => l.dns_relay === 'native')
  be.silent = true
  const s = createSocket('udp4')
  await new Promise<void>((resolve) => s.bind(0, '127.0.0.1', resolve))
  t.teardown(() => s.close())
  const answers: Buffer[] = []
  s.on('message', (m: Buffer) => answers.push(m))
  s.send(query(9, 'held.example.test'), run.port('dns'), '127.0.0.1')
  await eventually(() => be.queries.length === 1, 'the query to reach the backend')
  const stopped = run.daemon.stop()
  // The backend answers only now, while sluice is stopping.
  const answer = Buffer.from(be.queries[0]!)
  answer[2] = answer[2]! | 0x80
  const [host, p] = [...be.sources][0]!.split(':')
  be.socket.send(answer, Number(p), host)
  await stopped
  // Sent before the relay stopped; its 'message' event may come a turn of the loop later.
  await eventually(() => answers.length > 0, 'the answer to arrive', 2000)
  t.equal(answers.length, 1, 'the query in flight was answered during the stop')
  t.equal(answers[0]?.readUInt16BE(0), 9, 'with its own ID')
})

const workers2 = reusePortAvailable() ? skip : `workers above 1 need Node.js 22.12+ (reusePort); this is ${process.version}`

t.test('native, workers: 2: each worker runs the native relay on its own socket; the counts add up', { skip: workers2 }, async (t) => {
  const a = await dnsBackend(t)
  const run = await startDaemon(t, yaml([a.address], '', 'workers: 2'))
  await eventually(() => run.logs.lines.filter((l) => l.dns_relay === 'native').length === 2, 'both workers to say native')
  t.equal((await status(run)).listeners[0]?.dns_relay, 'native', '/api/status says native')
  const port = run.port('dns')
  // 40 clients: the kernel spreads source ports over both workers' sockets.
  const results = await Promise.all(Array.from({ length: 40 }, (_, c) => client(port, Array.from({ length: 5 }, (_, i) => query(i + 1, `w${c}-${i + 1}.example.test`)))))
  let ok = 0
  results.forEach((got, c) => {
    for (const m of got) if (qname(m) === `w${c}-${m.readUInt16BE(0)}.example.test`) ok++
  })
  t.ok(ok >= 198, `${ok} of 200 answered, each to its own client`)
  t.ok(a.sources.size > 2 && a.sources.size <= 4, `each worker has its own two upstream sockets (${a.sources.size} seen)`)
  const m = await run.metrics()
  t.equal(metricValue(m, 'sluice_udp_datagrams_total', { listener: 'dns', direction: 'out' }), ok, 'datagrams out: the sum over both workers')
})

t.test('native: ICMP port unreachable from a backend counts for passive ejection; queries then go to the other', { skip }, async (t) => {
  const live = await dnsBackend(t)
  const gone = createSocket('udp4')
  await new Promise<void>((resolve) => gone.bind(0, '127.0.0.1', resolve))
  const dead = `127.0.0.1:${gone.address().port}`
  await new Promise<void>((resolve) => gone.close(() => resolve()))
  const { run, port } = await nativeDaemon(t, yaml([dead, live.address], ', query_timeout: 200ms', '', ', passive: { max_failures: 1, ejection_time: 1h }'))
  // Round-robin sends the first query to the dead backend: no answer, an ICMP error back.
  await client(port, [query(1, 'first.example.test')], 300)
  const warn = await run.logs.waitFor((l) => l.code === 'SLUICE_ERR_UDP_UNREACHABLE')
  t.equal(warn.backend, dead, 'the unreachable backend is logged')
  await eventually(() => run.daemon.pools.get('p')!.find(dead)?.state === 'down', 'the dead backend to be ejected')
  const before = live.queries.length
  const got = await client(port, Array.from({ length: 20 }, (_, i) => query(i, `after${i}.example.test`)))
  t.equal(got.length, 20, 'every later query answered')
  t.equal(live.queries.length - before, 20, 'all by the live backend')
})

t.test('native: backends added and removed at run time reach its table; one added by name hands the listener to the JS relay', { skip }, async (t) => {
  const a = await dnsBackend(t)
  const b = await dnsBackend(t)
  const c = await dnsBackend(t)
  const { run, port } = await nativeDaemon(t, yaml([a.address]))
  const batch = (tag: string, n: number): Promise<Buffer[]> => client(port, Array.from({ length: n }, (_, i) => query(i, `${tag}${i}.example.test`)))
  t.notOk('status' in memberAction(run.daemon, 'p', b.address, 'put', '{}'), 'b added')
  await eventually(async () => {
    const n = b.queries.length
    await batch('add', 10)
    return b.queries.length > n
  }, 'b to take queries')
  t.notOk('status' in memberAction(run.daemon, 'p', a.address, 'delete', ''), 'a removed')
  await eventually(async () => {
    const n = a.queries.length
    await batch('del', 10)
    return a.queries.length === n
  }, 'a to take no more queries')
  const got = await batch('rest', 50)
  t.equal(got.length, 50, 'b answers everything')
  t.equal(run.logs.lines.filter((l) => l.dns_relay !== undefined).length, 1, 'still the native relay')

  t.notOk('status' in memberAction(run.daemon, 'p', `localhost:${c.address.split(':')[1]}`, 'put', '{}'), 'a backend given by name added')
  const line = await run.logs.waitFor((l) => l.dns_relay === 'js')
  t.match(String(line.reason), /given by name/, String(line.msg))
  const js = await batch('js', 20)
  t.equal(js.length, 20, 'the JS relay answers on the same socket')
  t.equal((await status(run)).listeners[0]?.dns_relay, 'js', '/api/status says js')
})
