import t from 'tap'
import { connect, type Socket } from 'node:net'
import { startDaemon } from '../helpers/daemon.js'
import { backend, closed, eventually } from '../helpers/net.js'
import { UdpClient, metricValue, udpBackend } from '../helpers/udp.js'

/** A backend that names itself and counts the connections it took. */
async function countingBackend(t: Parameters<typeof backend>[0]): Promise<{ address: string; accepted: () => number }> {
  let n = 0
  const b = await backend(t, (s) => {
    n++
    s.write('hello\n')
    s.pipe(s)
  })
  return { address: b.address, accepted: () => n }
}

interface Outcome {
  /** Bytes the client received. */
  bytes: number
  /** The error that ended it (ECONNRESET for a reset), if any. */
  error: string | undefined
}

/**
 * Connects from `from` (a loopback address), sends `first` once connected, and reports
 * whether the greeting came, and how the connection ended. A reset may come before the
 * client even sees its connect complete: that is an ECONNRESET too.
 */
function attempt(port: number, from = '127.0.0.1', first?: string): Promise<{ socket: Socket; outcome: Promise<Outcome>; greeted: Promise<boolean> }> {
  const s = connect({ port, host: '127.0.0.1', localAddress: from })
  let bytes = 0
  let error: string | undefined
  s.on('data', (c: Buffer) => (bytes += c.length))
  s.on('error', (e: NodeJS.ErrnoException) => (error = e.code))
  s.once('connect', () => {
    if (first !== undefined) s.write(first)
  })
  const outcome = closed(s).then(() => ({ bytes, error }))
  const greeted = new Promise<boolean>((res) => {
    s.once('data', () => res(true))
    s.once('close', () => res(false))
  })
  return Promise.resolve({ socket: s, outcome, greeted })
}

t.test('access: deny wins, allow lists; a denied client is reset with no byte, before any backend', async (t) => {
  const b = await countingBackend(t)
  const run = await startDaemon(t, `
listeners:
  - name: l
    listen: 127.0.0.1:0
    pool: p
    access: { allow: [127.0.0.0/24], deny: [127.0.0.2/32] }
pools: { p: { backends: [${b.address}] } }
`)
  const port = run.port('l')
  const denied = await Promise.all([1, 2, 3, 4, 5].map(() => attempt(port, '127.0.0.2')))
  for (const d of denied) {
    const o = await d.outcome
    t.equal(o.bytes, 0, 'no byte sent to the denied client')
    t.equal(o.error, 'ECONNRESET', 'it was reset')
  }
  const outside = await attempt(port, '127.0.1.1')
  t.same(await outside.outcome, { bytes: 0, error: 'ECONNRESET' }, 'not in allow: reset too')
  const ok = await attempt(port, '127.0.0.1')
  t.equal(await ok.greeted, true, 'an allowed client is served')
  ok.socket.destroy()
  t.equal(b.accepted(), 1, 'the backend saw only the allowed client')
  t.equal(metricValue(await run.metrics(), 'sluice_rejected_connections_total', { listener: 'l', reason: 'access_denied' }), 6, 'every refusal counted')
  const lines = run.logs.lines.filter((l) => l.code === 'SLUICE_ERR_ACCESS_DENIED')
  t.ok(lines.length >= 1 && lines.length <= 2, `a throttled summary line, not one per client (${lines.length})`)
  t.equal(run.logs.lines.filter((l) => l.access === true && l.close_reason === 'access_denied').length, 0, 'no access-log line per refusal')
})

t.test('access and limits apply to the client the PROXY header names, before the backend', async (t) => {
  const b = await countingBackend(t)
  const run = await startDaemon(t, `
listeners:
  - name: l
    listen: 127.0.0.1:0
    pool: p
    proxy_protocol_accept: true
    access: { deny: [203.0.113.0/24] }
    limits: { per_source_connections: 1 }
pools: { p: { backends: [${b.address}] } }
`)
  const port = run.port('l')
  const hdr = (src: string, v6 = false): string => `PROXY ${v6 ? 'TCP6' : 'TCP4'} ${src} ${v6 ? '2001:db8::ffff' : '192.0.2.1'} 4000 5432\r\n`
  const denied = await attempt(port, '127.0.0.1', hdr('203.0.113.7'))
  t.same(await denied.outcome, { bytes: 0, error: 'ECONNRESET' }, 'the client named in the header is denied: reset')
  t.equal(run.logs.lines.find((l) => l.code === 'SLUICE_ERR_ACCESS_DENIED')?.client, '203.0.113.7:4000', 'the summary line names the real client, not the PROXY peer')
  const first = await attempt(port, '127.0.0.1', hdr('198.51.100.1'))
  t.equal(await first.greeted, true, 'an allowed client is served')
  const second = await attempt(port, '127.0.0.1', hdr('198.51.100.1'))
  t.same(await second.outcome, { bytes: 0, error: 'ECONNRESET' }, 'its second connection is over per_source_connections: reset')
  const other = await attempt(port, '127.0.0.1', hdr('198.51.100.2'))
  t.equal(await other.greeted, true, 'another client is not affected')
  // IPv6 clients count per /64.
  const v6a = await attempt(port, '127.0.0.1', hdr('2001:db8:1:2::1', true))
  t.equal(await v6a.greeted, true)
  const v6b = await attempt(port, '127.0.0.1', hdr('2001:db8:1:2::99', true))
  t.same(await v6b.outcome, { bytes: 0, error: 'ECONNRESET' }, 'another address of the same /64 shares the limit')
  const v6c = await attempt(port, '127.0.0.1', hdr('2001:db8:1:3::1', true))
  t.equal(await v6c.greeted, true, 'the next /64 has its own')
  // Closing the first connection releases its count (through the relay's end when it carried it).
  first.socket.end()
  await first.outcome
  await eventually(async () => {
    const again = await attempt(port, '127.0.0.1', hdr('198.51.100.1'))
    const ok = await again.greeted
    again.socket.destroy()
    return ok
  }, 'the released count admits the client again')
  for (const s of [other, v6a, v6c]) s.socket.destroy()
  const m = await run.metrics()
  t.equal(metricValue(m, 'sluice_rejected_connections_total', { listener: 'l', reason: 'access_denied' }), 1)
  t.equal(metricValue(m, 'sluice_rejected_connections_total', { listener: 'l', reason: 'source_connections' }), 2)
  t.equal(b.accepted(), 5, 'the backend saw only the admitted clients')
})

t.test('per_source_connections and per_source_rate on a plain listener', async (t) => {
  const b = await countingBackend(t)
  const run = await startDaemon(t, `
listeners:
  - name: l
    listen: 127.0.0.1:0
    pool: p
    limits: { per_source_connections: 2, per_source_rate: 4/s }
pools: { p: { backends: [${b.address}] } }
`)
  const port = run.port('l')
  const a1 = await attempt(port, '127.0.0.5')
  const a2 = await attempt(port, '127.0.0.5')
  t.equal(await a1.greeted, true)
  t.equal(await a2.greeted, true)
  const a3 = await attempt(port, '127.0.0.5')
  t.same(await a3.outcome, { bytes: 0, error: 'ECONNRESET' }, 'the third open connection is refused')
  a1.socket.destroy()
  a2.socket.destroy()
  await Promise.all([a1.outcome, a2.outcome])
  // Two tokens of four are spent (a refused attempt takes none): the next two pass, then the rate refuses.
  let served = 0
  let refused = 0
  // Both sessions have ended in sluice (their access lines are written) and released their counts.
  await run.logs.waitForAccess(2)
  for (let i = 0; i < 6; i++) {
    const a = await attempt(port, '127.0.0.5')
    if (await a.greeted) served++
    else refused++
    a.socket.destroy()
    await a.outcome
  }
  t.ok(served >= 2 && served <= 3, `about two more served before the bucket is empty (${served})`)
  t.ok(refused >= 3, `the rest refused (${refused})`)
  const m = await run.metrics()
  t.equal(metricValue(m, 'sluice_rejected_connections_total', { listener: 'l', reason: 'source_connections' }), 1)
  t.equal(metricValue(m, 'sluice_rejected_connections_total', { listener: 'l', reason: 'source_rate' }), refused)
  const other = await attempt(port, '127.0.0.6')
  t.equal(await other.greeted, true, 'another source has its own bucket')
  other.socket.destroy()
  await eventually(async () => {
    const a = await attempt(port, '127.0.0.5')
    const ok = await a.greeted
    a.socket.destroy()
    return ok
  }, 'tokens come back at 4 a second', 5000)
})

t.test('udp: access, per-source sessions and datagrams per second; drops are counted, not logged each', async (t) => {
  const echo = await udpBackend(t, 'echo', { mode: 'echo' })
  const run = await startDaemon(t, `
listeners:
  - name: u
    protocol: udp
    listen: 127.0.0.1:0
    pool: p
    access: { deny: [127.0.0.9/32] }
    limits: { per_source_connections: 1, per_source_datagrams: 5/s }
pools: { p: { backends: [${echo.address}] } }
`)
  const port = run.port('u')
  const denied = await UdpClient.open(t, '127.0.0.9')
  denied.send(port, 'x')
  const a = await UdpClient.open(t, '127.0.0.1')
  for (let i = 0; i < 20; i++) a.send(port, `d${i}`)
  await eventually(async () => metricValue(await run.metrics(), 'sluice_udp_datagrams_total', { listener: 'u', direction: 'out' }) >= 5, 'the first five echoed')
  const b2 = await UdpClient.open(t, '127.0.0.1')
  b2.send(port, 'second session')
  await eventually(async () => {
    const m = await run.metrics()
    const seen = metricValue(m, 'sluice_udp_datagrams_total', { listener: 'u', direction: 'in' }) + metricValue(m, 'sluice_udp_dropped_datagrams_total', { listener: 'u', reason: 'source_connections' }) + metricValue(m, 'sluice_udp_dropped_datagrams_total', { listener: 'u', reason: 'source_datagrams' })
    return metricValue(m, 'sluice_udp_dropped_datagrams_total', { listener: 'u', reason: 'access_denied' }) === 1 && seen === 21
  }, 'all 22 datagrams relayed or counted as dropped')
  const m = await run.metrics()
  const relayed = metricValue(m, 'sluice_udp_datagrams_total', { listener: 'u', direction: 'in' })
  const overRate = metricValue(m, 'sluice_udp_dropped_datagrams_total', { listener: 'u', reason: 'source_datagrams' })
  t.ok(relayed >= 5 && relayed <= 6, `about a bucket's worth (5) relayed (${relayed})`)
  t.ok(overRate >= 14, `the rest of the burst dropped over per_source_datagrams (${overRate})`)
  t.equal(metricValue(m, 'sluice_udp_dropped_datagrams_total', { listener: 'u', reason: 'source_connections' }), 21 - relayed - overRate, 'the second session of the same address over per_source_connections')
  t.equal(metricValue(m, 'sluice_rejected_connections_total', { listener: 'u', reason: 'access_denied' }), 1, 'a refused session counts as a rejected connection too')
  t.equal(denied.inbox.length, 0, 'the denied source got nothing back')
  t.ok(run.logs.lines.filter((l) => l.code === 'SLUICE_ERR_SOURCE_RATE').length <= 2, 'a throttled summary line')
})
