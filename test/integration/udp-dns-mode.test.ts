import t, { type Test } from 'tap'
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram'
import { startDaemon } from '../helpers/daemon.js'
import { eventually } from '../helpers/net.js'
import { askFromNewPort } from '../helpers/udp.js'
import { parseConfig } from '../../src/config/load.js'
import { ConfigError } from '../../src/errors.js'

/** A DNS query for `name` (type A, class IN) with `id`. */
function query(id: number, name: string): Buffer {
  const labels = name.split('.').map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)]))
  const header = Buffer.alloc(12)
  header.writeUInt16BE(id, 0)
  header.writeUInt16BE(0x0100, 2) // RD
  header.writeUInt16BE(1, 4) // QDCOUNT
  return Buffer.concat([header, ...labels, Buffer.from([0, 0, 1, 0, 1])])
}

/** The question's name of a DNS message, for checking which query an answer answers. */
function qname(msg: Buffer): string {
  const parts: string[] = []
  let i = 12
  while (msg[i]! !== 0) {
    parts.push(msg.subarray(i + 1, i + 1 + msg[i]!).toString())
    i += 1 + msg[i]!
  }
  return parts.join('.')
}

type Behaviour = 'answer' | 'twice' | 'other-question' | 'silent'

/** A DNS backend that answers a query by echoing it with QR set (and its name in ANCOUNT 0). */
async function dnsBackend(t: Test, behaviour: () => Behaviour = () => 'answer'): Promise<{ address: string; sources: Set<string>; queries: Buffer[]; socket: Socket }> {
  const socket = createSocket('udp4')
  const sources = new Set<string>()
  const queries: Buffer[] = []
  socket.on('message', (msg: Buffer, r: RemoteInfo) => {
    sources.add(`${r.address}:${r.port}`)
    queries.push(msg)
    const b = behaviour()
    if (b === 'silent') return
    const answer = Buffer.from(msg)
    answer[2] = answer[2]! | 0x80
    if (b === 'other-question') answer[13] = answer[13]! ^ 0x01
    socket.send(answer, r.port, r.address)
    if (b === 'twice') socket.send(answer, r.port, r.address)
  })
  await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve))
  // Room for a burst: the native DNS relay sends a few thousand queries faster than this
  // backend, on the test's own event loop, reads them (the default buffer holds about 250).
  socket.setRecvBufferSize(4 * 1024 * 1024)
  t.teardown(() => socket.close())
  return { address: `127.0.0.1:${socket.address().port}`, sources, queries, socket }
}

/** Sends `q` from a new socket (a new source port, as stub resolvers do) and resolves with the answers within `ms`. */
function ask(port: number, q: Buffer, ms = 2000, wanted = 1): Promise<Buffer[]> {
  return askFromNewPort(port, [q], { ms, wanted })
}

const yaml = (backends: string[], udp = ''): string => `
log: { level: warn }
listeners: [{ name: dns, protocol: udp, listen: 127.0.0.1:0, pool: p, udp: { mode: dns${udp} } }]
pools:
  p: { backends: [${backends.map((b) => `"${b}"`).join(', ')}] }
`

t.test('dns mode: 300 queries from 300 source ports share two upstream sockets per backend; each answer has its own ID back', async (t) => {
  const a = await dnsBackend(t)
  const b = await dnsBackend(t)
  const run = await startDaemon(t, yaml([a.address, b.address]))
  const port = run.port('dns')
  const asked = Array.from({ length: 300 }, (_, i) => ({ id: (i * 7919) & 0xffff, name: `q${i}.example.test` }))
  for (let i = 0; i < asked.length; i += 50) {
    const batch = await Promise.all(asked.slice(i, i + 50).map((q) => ask(port, query(q.id, q.name)).then((r) => ({ q, r }))))
    for (const { q, r } of batch) {
      if (r.length !== 1) t.fail(`${q.name}: ${r.length} answers`)
      else if (r[0]!.readUInt16BE(0) !== q.id || qname(r[0]!) !== q.name) t.fail(`${q.name}: answer with ID ${r[0]!.readUInt16BE(0)} for ${qname(r[0]!)}`)
    }
  }
  t.pass('every query got one answer, with its own ID and question')
  t.ok(a.sources.size <= 2 && b.sources.size <= 2, `the backends saw ${a.sources.size} and ${b.sources.size} source ports, not one per client`)
  t.ok(Math.abs(a.queries.length - b.queries.length) <= 2, `round-robin split the queries ${a.queries.length}/${b.queries.length}`)
  const clientIds = new Set(asked.map((q) => q.id))
  const kept = [...a.queries, ...b.queries].filter((q) => clientIds.has(q.readUInt16BE(0))).length
  t.ok(kept < 30, `the IDs sent upstream are sluice's own, not the clients' (${kept} of 300 happen to coincide)`)
  const m = await run.metrics()
  t.match(m, /sluice_udp_datagrams_total\{listener="dns",direction="in"\} 300\b/)
  t.match(m, /sluice_udp_datagrams_total\{listener="dns",direction="out"\} 300\b/)
  t.notMatch(m, /sluice_udp_sessions_active\{listener="dns"\} [1-9]/, 'no sessions')
  t.notMatch(m, /sluice_dns_dropped_total\{/, `nothing dropped: ${m.split('\n').filter((l) => l.startsWith('sluice_dns_dropped_total{')).join(', ')}`)
  const b0 = run.daemon.pools.get('p')!.backends
  t.same(b0.map((x) => x.active), [0, 0], 'no query left in flight')
})

t.test('dns mode: a duplicated answer, an answer to another question and an unanswered query are dropped and counted', async (t) => {
  let next: Behaviour = 'twice'
  const be = await dnsBackend(t, () => next)
  const run = await startDaemon(t, yaml([be.address], ', query_timeout: 200ms'))
  const port = run.port('dns')
  const twice = await ask(port, query(1, 'dup.example.test'), 500, 2)
  t.equal(twice.length, 1, 'a duplicated answer reaches the client once')
  await eventually(async () => /sluice_dns_dropped_total\{listener="dns",reason="unmatched_answer"\} 1/.test(await run.metrics()), 'the duplicate to be counted')

  next = 'other-question'
  t.same(await ask(port, query(2, 'asked.example.test'), 500), [], 'an answer whose question differs is not passed on')
  await eventually(async () => /reason="question_mismatch"\} 1/.test(await run.metrics()), 'the mismatch to be counted')

  next = 'silent'
  t.same(await ask(port, query(3, 'silent.example.test'), 500), [], 'no answer')
  await eventually(async () => /reason="timeout"\} 2/.test(await run.metrics()), 'both unanswered queries to time out')
  t.equal(run.daemon.pools.get('p')!.backends[0]!.active, 0, 'timed-out queries free their backend slot')

  // The late answer to the silent query comes now: nothing is waiting for it any more.
  const late = Buffer.from(be.queries.at(-1)!)
  late[2] = late[2]! | 0x80
  const sluiceSide = [...be.sources][0]!.split(':')
  be.socket.send(late, Number(sluiceSide[1]), sluiceSide[0])
  await eventually(async () => /reason="unmatched_answer"\} 2/.test(await run.metrics()), 'the late answer to be dropped as unmatched')

  t.same(await ask(port, Buffer.from([1, 2, 3, 4, 5])), [], 'a datagram that is not a DNS query gets nothing')
  await eventually(async () => /reason="malformed_query"\} 1/.test(await run.metrics()), 'and is counted as malformed')

  next = 'answer'
  const ok = await ask(port, query(4, 'fine.example.test'))
  t.equal(ok.length === 1 ? ok[0]!.readUInt16BE(0) : -1, 4, 'queries keep flowing after all that')
})

t.test('dns mode: 4,000 queries in flight at once from one client', async (t) => {
  const be = await dnsBackend(t)
  const run = await startDaemon(t, yaml([be.address]))
  const s = createSocket('udp4')
  await new Promise<void>((resolve) => s.bind(0, '127.0.0.1', resolve))
  // Room for 4,000 answers arriving at once (the native DNS relay sends them in batches).
  s.setRecvBufferSize(4 * 1024 * 1024)
  t.teardown(() => s.close())
  const seen = new Set<number>()
  s.on('message', (m: Buffer) => seen.add(m.readUInt16BE(0)))
  const n = 4000
  for (let i = 0; i < n; i++) s.send(query(i, `n${i}.example.test`), run.port('dns'), '127.0.0.1')
  await eventually(() => seen.size >= n * 0.99, `answers to 99% of ${n} queries (got ${seen.size})`, 15_000)
  t.ok(seen.size >= n * 0.99, `${seen.size} of ${n} distinct IDs answered (UDP on loopback may drop a few under a burst)`)
})

t.test('dns mode configuration is checked at its line', async (t) => {
  const problems = (udp: string): string => {
    try {
      parseConfig(`listeners: [{ name: d, protocol: udp, listen: ":0", pool: p, udp: ${udp} }]\npools:\n  p: { backends: ["127.0.0.1:53"] }\n`, 'd.yaml', {})
      return ''
    } catch (err) {
      return err instanceof ConfigError ? err.format() : String(err)
    }
  }
  t.match(problems('{ mode: dnss }'), /^d\.yaml:1:\d+: .*udp\.mode "dnss" is not one of session, dns/)
  t.match(problems('{ mode: dns, responses: 1 }'), /udp\.responses does not apply here: with udp\.mode: dns there are no sessions/)
  t.match(problems('{ query_timeout: 2s }'), /udp\.query_timeout does not apply here: it applies only with udp\.mode: dns/)
  t.match(problems('{ mode: dns, query_timeout: 2m }'), /must be at most 1m/)
  t.match(problems('{ mode: dns, upstream_sockets: 0 }'), /upstream_sockets \(per backend\) is 0; it must be from 1 to 64/)
  t.match(problems('{ mode: dns, reuse_sockets: 8 }'), /udp\.reuse_sockets does not apply here: with udp\.mode: dns there are no sessions/)
  t.equal(problems('{ mode: dns, query_timeout: 500ms, upstream_sockets: 4 }'), '')
})
