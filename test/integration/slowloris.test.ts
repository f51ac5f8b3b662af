import t from 'tap'
import { connect, type Socket } from 'node:net'
import { startDaemon } from '../helpers/daemon.js'
import { closed, eventually, namedBackend, readUntil } from '../helpers/net.js'
import { metricValue } from '../helpers/udp.js'

/*
 * Every stall of the opening is bounded: a slowloris of 5,000 connections that trickle their
 * PROXY header one byte at a time is cut at its timeout, while a normal client is served.
 */
const STALLED = 5000
const BATCH = 250
// Opening 5,000 loopback connections takes about 11 s here; the timeout is longer, so all are held at once.

interface Stalled {
  socket: Socket
  openedAt: number
  closedAt: number
  /** Bytes of the header sent so far. */
  sent: number
}

/** Opens `n` connections into `out` in batches (each batch connected before the next), each sending `first`; `between` runs after each batch. */
async function openStalled(port: number, n: number, first: string, between: () => Promise<void>, out: Stalled[]): Promise<Stalled[]> {
  for (let i = 0; i < n; i += BATCH) {
    const batch = await Promise.all(
      Array.from({ length: Math.min(BATCH, n - i) }, () => new Promise<Stalled>((resolve, reject) => {
        const s = connect({ port, host: '127.0.0.1' }, () => {
          s.off('error', reject)
          s.on('error', () => {})
          s.write(first)
          const st: Stalled = { socket: s, openedAt: performance.now(), closedAt: 0, sent: first.length }
          s.once('close', () => (st.closedAt = performance.now()))
          resolve(st)
        })
        s.once('error', reject)
      })),
    )
    out.push(...batch)
    await between()
  }
  return out
}

t.test(`a slowloris of ${STALLED} connections is cut at timeouts.proxy_header; normal clients are served meanwhile`, async (t) => {
  const live = await namedBackend(t, 'live')
  const run = await startDaemon(t, `
log: { level: warn, access_log: false }
listeners:
  - name: l
    listen: 127.0.0.1:0
    pool: p
    proxy_protocol_accept: true
    max_connections: 20000
    timeouts: { proxy_header: 15s, handshake: 30s }
pools: { p: { backends: [${live.address}] } }
`)
  const port = run.port('l')
  const header = 'PROXY TCP4 198.51.100.1 192.0.2.1 4000 5432\r\n'
  let peak = 0
  let normal = 0
  const opened: Stalled[] = []
  // One more byte of its header to each stalled connection every 700 ms: never a whole header
  // (the 15 s allow 22 bytes of the 45).
  const trickle = setInterval(() => {
    for (const s of opened) if (!s.socket.destroyed && s.sent < header.length - 2) s.socket.write(header[s.sent++]!)
  }, 700)
  t.teardown(() => {
    clearInterval(trickle)
    for (const s of opened) s.socket.destroy()
  })
  const stalled = await openStalled(port, STALLED, 'P', async () => {
    peak = Math.max(peak, metricValue(await run.metrics(), 'sluice_connections_active', { listener: 'l' }))
    // Meanwhile a normal client (its whole header at once) is served.
    const ok = connect({ port, host: '127.0.0.1' })
    ok.write(header)
    if ((await readUntil(ok, 'line')).toString() === 'live\n') normal++
    ok.destroy()
  }, opened)
  t.equal(normal, STALLED / BATCH, 'a normal client was served after every batch of stalled ones')
  t.ok(peak >= STALLED / 2, `sluice held many stalled connections at once (peak ${peak})`)
  await eventually(() => stalled.every((s) => s.closedAt > 0), `all ${STALLED} stalled connections cut`, 40_000)
  clearInterval(trickle)
  const lived = stalled.map((s) => s.closedAt - s.openedAt)
  const least = Math.min(...lived)
  const most = Math.max(...lived)
  // The client sees its connect complete a little after sluice accepted it (one event loop for both here).
  t.ok(least >= 15_000 - 500, `none cut before timeouts.proxy_header (15 s): the shortest lived ${least.toFixed(0)} ms`)
  // Late only by what a loaded machine delays the event loops (this test shares one with sluice).
  t.ok(most <= 15_000 + 15_000, `each cut after it, not held on (the longest lived ${most.toFixed(0)} ms)`)
  const m = await run.metrics()
  t.equal(metricValue(m, 'sluice_rejected_connections_total', { listener: 'l', reason: 'proxy_header_timeout' }), STALLED, 'each counted as proxy_header_timeout')
  t.equal(metricValue(m, 'sluice_connections_active', { listener: 'l' }), 0, 'nothing left open')
  t.ok(run.logs.lines.filter((l) => l.code === 'SLUICE_ERR_PROXY_HEADER_TIMEOUT').length <= 60, 'the refusals are logged throttled, not one line each')
})

t.test('each stall of the opening has its own timeout and close reason', async (t) => {
  const live = await namedBackend(t, 'live')
  const run = await startDaemon(t, `
listeners:
  - { name: pp, listen: 127.0.0.1:0, pool: p, proxy_protocol_accept: true, timeouts: { proxy_header: 300ms, handshake: 5s } }
  - { name: sni, listen: 127.0.0.1:0, pool: p, sni_passthrough: true, timeouts: { handshake: 400ms } }
pools: { p: { backends: [${live.address}] } }
`)
  // A PROXY header whose first half came at once: its own 300 ms bound, not the 5 s of the whole opening.
  const a = connect({ port: run.port('pp'), host: '127.0.0.1' })
  a.on('error', () => {})
  const aStart = Date.now()
  a.write('PROXY TCP4 198.51.')
  await closed(a)
  const aTook = Date.now() - aStart
  t.ok(aTook >= 280 && aTook < 3000, `the PROXY header is cut at timeouts.proxy_header (${aTook} ms)`)
  // The header in time, then nothing: the rest of the opening (here none) goes on; the backend serves.
  const b = connect({ port: run.port('pp'), host: '127.0.0.1' })
  b.write('PROXY TCP4 198.51.100.1 192.0.2.1 4000 5432\r\n')
  t.equal((await readUntil(b, 'line')).toString(), 'live\n')
  b.destroy()
  // A ClientHello begun and never finished.
  const c = connect({ port: run.port('sni'), host: '127.0.0.1' })
  c.on('error', () => {})
  c.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]))
  await closed(c)
  const lines = await run.logs.waitForAccess(3)
  t.same(lines.map((l) => [l.listener, l.close_reason]).sort(), [['pp', 'client_closed'], ['pp', 'proxy_header_timeout'], ['sni', 'client_hello_timeout']].sort(), 'each stall closes with its own reason')
  const m = await run.metrics()
  t.equal(metricValue(m, 'sluice_rejected_connections_total', { listener: 'pp', reason: 'proxy_header_timeout' }), 1)
  t.equal(metricValue(m, 'sluice_rejected_connections_total', { listener: 'sni', reason: 'client_hello_timeout' }), 1)
})
