import t from 'tap'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { createSocket } from 'node:dgram'
import { connect, type Socket } from 'node:net'
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls'
import type { Test } from 'tap'
import { backend, closed, dial, eventually, readUntil } from '../helpers/net.js'
import { startDaemon } from '../helpers/daemon.js'
import { parseProxyHeader, type ProxyHeader } from '../../src/proxy/proxy-protocol.js'
import { encodeV1, encodeV2 } from '../../src/proxy/proxy-header-out.js'
import { PP2_CLIENT_CERT_CONN, PP2_CLIENT_CERT_SESS, PP2_CLIENT_SSL, readTlvs, type ReceivedTlvs } from '../../src/proxy/proxy-tlv.js'

const FIX = join(import.meta.dirname ?? new URL('.', import.meta.url).pathname, '../fixtures/tls')

/** A backend that parses the PROXY header it receives and answers `source:port` (or LOCAL), then echoes. */
async function proxyAwareBackend(t: Test): Promise<{ address: string; headers: ProxyHeader[] }> {
  const headers: ProxyHeader[] = []
  const b = await backend(t, (s) => {
    let buf = Buffer.alloc(0)
    const onData = (c: Buffer): void => {
      buf = Buffer.concat([buf, c])
      const r = parseProxyHeader(buf)
      if (r.kind === 'need-more') return
      s.off('data', onData)
      if (r.kind === 'error') {
        s.end(`bad header: ${r.message}\n`)
        return
      }
      headers.push(r.header)
      const a = r.header.addresses
      s.write(`${a === undefined ? r.header.command : `${a.sourceAddress}:${a.sourcePort}>${a.destAddress}:${a.destPort}`} v${r.header.version}\n`)
      const rest = buf.subarray(r.length)
      if (rest.length > 0) s.write(rest)
      s.pipe(s)
    }
    s.on('data', onData)
  })
  return { address: b.address, headers }
}

/** Reads `s` line by line, keeping what arrives after a line for the next call. */
const held = new WeakMap<Socket, string>()
async function line(s: Socket): Promise<string> {
  let text = held.get(s) ?? ''
  while (!text.includes('\n')) text += (await readUntil(s, 1)).toString()
  const nl = text.indexOf('\n')
  held.set(s, text.slice(nl + 1))
  return text.slice(0, nl).trim()
}

t.test('PROXY out: v1 and v2 carry the client address before any byte of data', async (t) => {
  const be = await proxyAwareBackend(t)
  const d = await startDaemon(t, `
listeners:
  - { name: v1, listen: 127.0.0.1:0, pool: v1 }
  - { name: v2, listen: 127.0.0.1:0, pool: v2 }
pools:
  v1: { backends: ["${be.address}"], proxy_protocol: v1 }
  v2: { backends: ["${be.address}"], proxy_protocol: v2 }
`)
  for (const name of ['v1', 'v2']) {
    const s = await dial(d.port(name))
    s.write('first bytes\n') // sent at once: must still arrive after the header
    t.equal(await line(s), `127.0.0.1:${s.localPort}>127.0.0.1:${d.port(name)} ${name}`)
    t.equal(await line(s), 'first bytes')
    s.destroy()
  }
})

t.test('PROXY in: the header\'s address is the client for logs, routes and the header sent on', async (t) => {
  const be = await proxyAwareBackend(t)
  const other = await proxyAwareBackend(t)
  const d = await startDaemon(t, `
listeners:
  - name: in
    listen: 127.0.0.1:0
    pool: main
    proxy_protocol_accept: true
    routes: [ { source: 10.0.0.0/8, pool: internal } ]
pools:
  main: { backends: ["${be.address}"], proxy_protocol: v2 }
  internal: { backends: ["${other.address}"], proxy_protocol: v1 }
`)
  const port = d.port('in')
  const s = await dial(port)
  s.write(Buffer.concat([encodeV1({ sourceAddress: '203.0.113.5', sourcePort: 4242, destAddress: '198.51.100.9', destPort: 143 }), Buffer.from('a1 LOGIN\n')]))
  t.equal(await line(s), '203.0.113.5:4242>198.51.100.9:143 v2')
  t.equal(await line(s), 'a1 LOGIN', 'bytes after the header are relayed')
  s.destroy()

  const s6 = await dial(port)
  s6.write(encodeV2({ sourceAddress: '2001:db8::42', sourcePort: 5555, destAddress: '2001:db8::1', destPort: 993 }))
  t.equal(await line(s6), '2001:db8::42:5555>2001:db8::1:993 v2', 'IPv6 through v2 both ways')
  s6.destroy()

  const s10 = await dial(port)
  s10.write(encodeV2({ sourceAddress: '10.1.2.3', sourcePort: 1000, destAddress: '10.0.0.1', destPort: 25 }))
  t.equal(await line(s10), '10.1.2.3:1000>10.0.0.1:25 v1', 'routed by the header\'s source to the internal pool')
  s10.destroy()

  const local = await dial(port)
  local.write(encodeV2(undefined))
  t.equal(await line(local), `127.0.0.1:${local.localPort}>127.0.0.1:${port} v2`, 'LOCAL: the real connection address')
  local.destroy()

  const lines = await d.logs.waitForAccess(4)
  t.ok(lines.some((l) => l.client === '203.0.113.5:4242'), 'access log shows the original client')
  t.ok(lines.some((l) => l.client === '[2001:db8::42]:5555'))
})

t.test('PROXY in: malformed, slow or untrusted headers close only that connection, counted', async (t) => {
  const be = await backend(t, (s) => s.pipe(s))
  const d = await startDaemon(t, `
listeners:
  - { name: in, listen: 127.0.0.1:0, pool: p, proxy_protocol_accept: true, timeouts: { handshake: 300ms } }
  - { name: strict, listen: 127.0.0.1:0, pool: p, proxy_protocol_accept: true, proxy_protocol_trusted: [10.0.0.0/8, "::1"] }
pools:
  p: { backends: ["${be.address}"] }
`)
  const bad = await dial(d.port('in'))
  bad.on('error', () => {})
  bad.write('PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n')
  await closed(bad)
  const slow = await dial(d.port('in'))
  slow.on('error', () => {})
  slow.write('PROXY TCP4 1.2.3.4')
  await closed(slow)
  const untrusted = await dial(d.port('strict'))
  untrusted.on('error', () => {})
  untrusted.write(encodeV1({ sourceAddress: '1.2.3.4', sourcePort: 1, destAddress: '5.6.7.8', destPort: 2 }))
  await closed(untrusted)
  const good = await dial(d.port('in'))
  good.write(encodeV1({ sourceAddress: '192.0.2.1', sourcePort: 7, destAddress: '192.0.2.2', destPort: 8 }))
  good.write('hi\n')
  t.equal(await line(good), 'hi', 'a good connection still works')
  good.destroy()
  const m = await d.metrics()
  t.match(m, /reason="bad_proxy_header"\} 1/)
  t.match(m, /listener="in",reason="proxy_header_timeout"\} 1/)
  t.match(m, /listener="strict",reason="proxy_untrusted"\} 1/)
  await eventually(() => d.logs.access.length === 4, 'four access lines')
  const codes = new Set(d.logs.lines.map((l) => l.code))
  for (const c of ['SLUICE_ERR_PROXY_PROTOCOL', 'SLUICE_ERR_PROXY_HEADER_TIMEOUT', 'SLUICE_ERR_PROXY_UNTRUSTED']) t.ok(codes.has(c), c)
  t.match(m, /sluice_backend_connections_total\{pool="p",backend="[^"]+"\} 1\n/, 'only the good connection reached the backend')
})

t.test('PROXY in, then TLS termination, then PROXY out', async (t) => {
  const be = await proxyAwareBackend(t)
  const d = await startDaemon(t, `
listeners:
  - name: imaps
    listen: 127.0.0.1:0
    pool: imap
    proxy_protocol_accept: true
    tls: { cert: ${join(FIX, 'default.pem')}, key: ${join(FIX, 'default.key')} }
pools:
  imap: { backends: ["${be.address}"], proxy_protocol: v2 }
`)
  const raw = connect({ port: d.port('imaps'), host: '127.0.0.1' })
  raw.write(encodeV2({ sourceAddress: '198.51.100.77', sourcePort: 60000, destAddress: '192.0.2.1', destPort: 993 }))
  const s = await new Promise<TLSSocket>((resolve, reject) => {
    const c = tlsConnect({ socket: raw, ca: readFileSync(join(FIX, 'ca.pem')), servername: 'default.sluice.test' }, () => resolve(c))
    c.once('error', reject)
  })
  t.equal(await line(s as unknown as Socket), '198.51.100.77:60000>192.0.2.1:993 v2')
  s.destroy()
})

/** What a TLV-reading backend was told about one connection. */
interface Told {
  version: 1 | 2
  source: string | undefined
  tlvs: ReceivedTlvs
  tlvTypes: number[]
}

/** A backend that parses the PROXY header it receives, TLVs included, and answers with what it read as one JSON line. */
async function tlvBackend(t: Test): Promise<string> {
  const b = await backend(t, (s) => {
    let buf = Buffer.alloc(0)
    const onData = (c: Buffer): void => {
      buf = Buffer.concat([buf, c])
      const r = parseProxyHeader(buf)
      if (r.kind === 'need-more') return
      s.off('data', onData)
      if (r.kind === 'error') {
        s.end(`${JSON.stringify({ error: r.message })}\n`)
        return
      }
      const a = r.header.addresses
      const told: Told = { version: r.header.version, source: a && `${a.sourceAddress}:${a.sourcePort}`, tlvs: readTlvs(r.header.tlvs), tlvTypes: r.header.tlvs.map((x) => x.type) }
      s.write(`${JSON.stringify(told)}\n`)
    }
    s.on('data', onData)
  })
  return b.address
}

function tlsDial(port: number, opts: ConnectionOptions = {}, raw?: Socket): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const c = tlsConnect({ port, host: '127.0.0.1', ca: readFileSync(join(FIX, 'ca.pem')), servername: 'default.sluice.test', ...(raw !== undefined ? { socket: raw } : {}), ...opts }, () => resolve(c))
    c.once('error', reject)
  })
}

async function told(s: Socket): Promise<Told> {
  return JSON.parse(await line(s)) as Told
}

t.test('PROXY v2 after TLS termination carries the SSL, AUTHORITY and ALPN TLVs', async (t) => {
  const be = await tlvBackend(t)
  const tls = `cert: ${join(FIX, 'default.pem')}, key: ${join(FIX, 'default.key')}`
  const d = await startDaemon(t, `
listeners:
  - { name: imaps, listen: 127.0.0.1:0, pool: v2, tls: { ${tls}, alpn: [imap, pop3] } }
  - { name: mtls, listen: 127.0.0.1:0, pool: v2, tls: { ${tls}, client_ca: ${join(FIX, 'ca.pem')} } }
  - { name: behind, listen: 127.0.0.1:0, pool: v2, proxy_protocol_accept: true, tls: { ${tls} } }
  - { name: imaps-v1, listen: 127.0.0.1:0, pool: v1, tls: { ${tls} } }
  - { name: plain, listen: 127.0.0.1:0, pool: v2 }
pools:
  v2: { backends: ["${be}"], proxy_protocol: v2 }
  v1: { backends: ["${be}"], proxy_protocol: v1 }
`)
  const s13 = await tlsDial(d.port('imaps'), { ALPNProtocols: ['imap'] })
  const a = await told(s13 as unknown as Socket)
  t.equal(a.source, `127.0.0.1:${s13.localPort}`)
  t.equal(a.tlvs.alpn, 'imap', 'PP2_TYPE_ALPN: the negotiated protocol')
  t.equal(a.tlvs.authority, 'default.sluice.test', 'PP2_TYPE_AUTHORITY: the SNI')
  t.same(a.tlvs.ssl, { client: PP2_CLIENT_SSL, verify: 1, version: 'TLSv1.3', cipher: s13.getCipher().name }, 'PP2_TYPE_SSL: TLS, no client certificate')
  s13.destroy()

  const s12 = await tlsDial(d.port('imaps'), { maxVersion: 'TLSv1.2', servername: '' })
  const b = await told(s12 as unknown as Socket)
  t.equal(b.tlvs.ssl?.version, 'TLSv1.2', 'the version negotiated, not the highest offered')
  t.match(b.tlvs.ssl?.cipher, /^ECDHE-/, 'the OpenSSL cipher name')
  t.equal(b.tlvs.authority, undefined, 'no SNI, no AUTHORITY')
  t.equal(b.tlvs.alpn, undefined, 'no ALPN asked, none sent')
  s12.destroy()

  const cert = { cert: readFileSync(join(FIX, 'client.pem')), key: readFileSync(join(FIX, 'client.key')) }
  const m = await tlsDial(d.port('mtls'), cert)
  let session: Buffer | undefined
  m.on('session', (ticket: Buffer) => (session = ticket))
  const c = await told(m as unknown as Socket)
  t.same(c.tlvs.ssl, { client: PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS, verify: 0, version: 'TLSv1.3', cipher: m.getCipher().name, cn: 'client.sluice.test' }, 'a verified client certificate: its flags, verify 0 and CN')
  await eventually(() => session !== undefined, 'a session ticket')
  m.destroy()
  const again = await tlsDial(d.port('mtls'), { ...cert, ...(session !== undefined ? { session } : {}) })
  const r = await told(again as unknown as Socket)
  t.ok(again.isSessionReused(), 'the session was resumed')
  t.equal(r.tlvs.ssl?.client, PP2_CLIENT_SSL | PP2_CLIENT_CERT_SESS, 'a resumed session: the certificate was presented in the session, not on this connection')
  t.equal(r.tlvs.ssl?.verify, 0)
  again.destroy()

  const raw = connect({ port: d.port('behind'), host: '127.0.0.1' })
  raw.write(encodeV2({ sourceAddress: '198.51.100.77', sourcePort: 60000, destAddress: '192.0.2.1', destPort: 993 }))
  const behind = await tlsDial(0, {}, raw)
  const e = await told(behind as unknown as Socket)
  t.equal(e.source, '198.51.100.77:60000', 'PROXY in, TLS, PROXY out: the address from the header in')
  t.equal(e.tlvs.ssl?.version, 'TLSv1.3', '... and the TLS TLVs of the handshake sluice did')
  behind.destroy()

  const v1 = await tlsDial(d.port('imaps-v1'))
  t.equal((await told(v1 as unknown as Socket)).version, 1, 'a v1 pool gets a v1 line: it has no TLVs')
  v1.destroy()

  const plain = await dial(d.port('plain'))
  const p = await told(plain)
  t.same(p.tlvTypes, [], 'no TLS ended here: no TLVs')
  plain.destroy()
})

t.test('PROXY v2 DGRAM on every datagram to a UDP pool', async (t) => {
  const server = createSocket('udp4')
  server.on('message', (msg, rinfo) => {
    const r = parseProxyHeader(msg)
    const text = r.kind === 'ok' ? `${r.header.transport} ${r.header.addresses?.sourceAddress}:${r.header.addresses?.sourcePort} ${msg.subarray(r.length).toString()}` : `bad ${r.kind}`
    server.send(text, rinfo.port, rinfo.address)
  })
  await new Promise<void>((r) => server.bind(0, '127.0.0.1', r))
  t.teardown(() => server.close())
  const d = await startDaemon(t, `
listeners: [{ name: dns, protocol: udp, listen: 127.0.0.1:0, pool: p }]
pools:
  p: { backends: ["127.0.0.1:${server.address().port}"], proxy_protocol: v2 }
`)
  const client = createSocket('udp4')
  await new Promise<void>((r) => client.bind(0, '127.0.0.1', r))
  t.teardown(() => client.close())
  const replies: string[] = []
  client.on('message', (m) => replies.push(m.toString()))
  for (const q of ['query-1', 'query-2']) client.send(q, d.port('dns'), '127.0.0.1')
  await eventually(() => replies.length === 2, 'two replies')
  const me = `127.0.0.1:${client.address().port}`
  t.same(replies.sort(), [`dgram ${me} query-1`, `dgram ${me} query-2`])
})

t.test('configuration: proxy_protocol values and UDP limits are checked', async (t) => {
  const { parseConfig } = await import('../../src/config/load.js')
  const problems = (yaml: string): string => {
    try {
      parseConfig(yaml, 'p.yaml', {})
      return ''
    } catch (err) {
      return String((err as { format?: () => string }).format?.() ?? err)
    }
  }
  t.match(problems('listeners: [{ name: l, listen: ":0", pool: p }]\npools:\n  p: { backends: ["127.0.0.1:1"], proxy_protocol: v3 }\n'), /^p\.yaml:3:\d+: pool "p" proxy_protocol "v3" is not one of off, v1, v2/)
  t.match(problems('listeners: [{ name: l, protocol: udp, listen: ":0", pool: p }]\npools:\n  p: { backends: ["127.0.0.1:1"], proxy_protocol: v1 }\n'), /exists only for TCP; use v2/)
  t.match(problems('listeners: [{ name: l, protocol: udp, listen: ":0", pool: p, proxy_protocol_accept: true }]\npools:\n  p: { backends: ["127.0.0.1:1"] }\n'), /proxy_protocol_accept/)
  t.match(problems('listeners: [{ name: l, listen: ":0", pool: p, proxy_protocol_trusted: [10.0.0.0/8] }]\npools:\n  p: { backends: ["127.0.0.1:1"] }\n'), /only applies with proxy_protocol_accept/)
  t.match(problems('listeners: [{ name: l, listen: ":0", pool: p, proxy_protocol_accept: true, proxy_protocol_trusted: [nonsense] }]\npools:\n  p: { backends: ["127.0.0.1:1"] }\n'), /not an IP address or CIDR/)
})
