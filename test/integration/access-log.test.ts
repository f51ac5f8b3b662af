import t, { type Test } from 'tap'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { connect, type Socket } from 'node:net'
import { connect as tlsConnect, type TLSSocket } from 'node:tls'
import { backend, closed, dial, eventually, readUntil } from '../helpers/net.js'
import { startDaemon } from '../helpers/daemon.js'
import { parseProxyHeader } from '../../src/proxy/proxy-protocol.js'
import { encodeV1, encodeV2 } from '../../src/proxy/proxy-header-out.js'

/*
 * The access line of a TCP connection: `client` (the PROXY header's address when one was
 * read), `peer` (where the TCP connection came from), and bytes_in counting the client's
 * data only: not the PROXY header, decrypted bytes when TLS ends here.
 */

const FIX = join(import.meta.dirname ?? new URL('.', import.meta.url).pathname, '../fixtures/tls')
const FIELDS = ['listener', 'client', 'peer', 'pool', 'backend', 'bytes_in', 'bytes_out', 'duration_ms', 'connect_ms', 'attempts', 'close_reason']

/** An echo backend that strips the PROXY header it may get first. */
async function echo(t: Test): Promise<string> {
  const b = await backend(t, (s) => {
    let buf = Buffer.alloc(0)
    const onData = (c: Buffer): void => {
      buf = Buffer.concat([buf, c])
      const r = parseProxyHeader(buf)
      if (r.kind === 'need-more') return
      s.off('data', onData)
      s.write(buf.subarray(r.kind === 'ok' ? r.length : 0))
      s.pipe(s)
    }
    s.on('data', onData)
  })
  return b.address
}

t.test('client, peer and bytes_in with and without a PROXY header', async (t) => {
  const be = await echo(t)
  const d = await startDaemon(t, `
listeners:
  - { name: plain, listen: 127.0.0.1:0, pool: p }
  - { name: behind, listen: 127.0.0.1:0, pool: p, proxy_protocol_accept: true }
  - { name: behind-tls, listen: 127.0.0.1:0, pool: p, proxy_protocol_accept: true, tls: { cert: ${join(FIX, 'default.pem')}, key: ${join(FIX, 'default.key')} } }
pools:
  p: { backends: ["${be}"], proxy_protocol: v2 }
`)
  const plain = await dial(d.port('plain'))
  const plainPort = plain.localPort
  plain.write('hello')
  await readUntil(plain, 5)
  plain.end()
  await closed(plain)
  const a = await d.logs.waitFor((l) => l.access === true && l.listener === 'plain')
  for (const k of FIELDS) t.ok(k in a, `has ${k}`)
  t.equal(a.client, `127.0.0.1:${plainPort}`)
  t.equal(a.peer, a.client, 'without a PROXY header the peer is the client')
  t.equal(a.bytes_in, 5)

  const header = encodeV1({ sourceAddress: '203.0.113.5', sourcePort: 4242, destAddress: '198.51.100.9', destPort: 143 })
  const behind = await dial(d.port('behind'))
  const behindPort = behind.localPort
  behind.write(Buffer.concat([header, Buffer.from('hello')]))
  await readUntil(behind, 5)
  const live = await d.metrics()
  t.match(live, /sluice_bytes_total\{listener="behind",direction="in"\} 5\n/, 'the header is not relayed data in the metrics either')
  behind.end()
  await closed(behind)
  const b = await d.logs.waitFor((l) => l.access === true && l.listener === 'behind')
  t.equal(b.client, '203.0.113.5:4242', 'client: the address the header claims')
  t.equal(b.peer, `127.0.0.1:${behindPort}`, 'peer: where the connection came from')
  t.equal(b.bytes_in, 5, `the ${header.length}-byte header is not in bytes_in`)
  t.equal(b.bytes_out, 5)

  const raw = connect({ port: d.port('behind-tls'), host: '127.0.0.1' })
  const rawPort = await new Promise<number>((resolve) => raw.once('connect', () => resolve(raw.localPort ?? 0)))
  raw.write(encodeV2({ sourceAddress: '2001:db8::7', sourcePort: 993, destAddress: '2001:db8::1', destPort: 993 }))
  const ts = await new Promise<TLSSocket>((resolve, reject) => {
    const c = tlsConnect({ socket: raw, ca: readFileSync(join(FIX, 'ca.pem')), servername: 'default.sluice.test' }, () => resolve(c))
    c.once('error', reject)
  })
  ts.write('hello')
  await readUntil(ts as unknown as Socket, 5)
  ts.end()
  await closed(ts as unknown as Socket)
  const c = await d.logs.waitFor((l) => l.access === true && l.listener === 'behind-tls')
  t.equal(c.client, '[2001:db8::7]:993')
  t.equal(c.peer, `127.0.0.1:${rawPort}`)
  t.equal(c.bytes_in, 5, 'PROXY header and TLS: the decrypted bytes only')
  t.equal(c.bytes_out, 5)
})

t.test('a listener with routes only passes the client\'s half-close on', async (t) => {
  // The backend answers once the client has finished sending (FIN), then closes.
  const b = await backend(t, (s) => {
    let got = ''
    s.on('data', (c: Buffer) => (got += c.toString()))
    s.on('end', () => s.end(`got ${got}\n`))
  }, '127.0.0.1', { allowHalfOpen: true })
  const d = await startDaemon(t, `
listeners:
  - { name: routed, listen: 127.0.0.1:0, pool: p, routes: [ { source: 10.0.0.0/8, pool: other } ] }
pools:
  p: { backends: ["${b.address}"] }
  other: { backends: ["127.0.0.1:1"] }
`)
  const s = await dial(d.port('routed'))
  s.end('abc')
  t.equal((await readUntil(s, 'line')).toString(), 'got abc\n', 'the reply after the FIN still arrives')
  await eventually(() => d.logs.access.length === 1, 'the access line')
  t.equal(d.logs.access[0]?.close_reason, 'client_closed')
})
