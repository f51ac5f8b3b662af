import fc from 'fast-check'
import { createServer, type AddressInfo } from 'node:net'
import { connect as tlsConnect } from 'node:tls'
import t from 'tap'
import { V1_MAX, V2_MAX_PAYLOAD, parseProxyHeader } from '../../src/proxy/proxy-protocol.js'
import { encodeV1, encodeV2 } from '../../src/proxy/proxy-header-out.js'
import { readTlvs, PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY } from '../../src/proxy/proxy-tlv.js'
import { CLIENT_HELLO_MAX, parseClientHello } from '../../src/proxy/tls-client-hello.js'
import { answerRcode, buildQuery } from '../../src/health/probes/dns.js'
import { DNS_HEADER_BYTES, dnsId, isResponse, questionHash, setDnsId } from '../../src/proxy/dns-message.js'
import { fuzz, mutated } from '../helpers/fuzz.js'

/**
 * The parsers that read bytes from the network, fed random and mutated input: they answer
 * ok / need-more / error and never throw (a SluiceError at most), hang or hold on to memory.
 * Seeds are printed; SLUICE_FUZZ_SEED=N replays one (docs/testing.md).
 */

const PROXY_SAMPLES = [
  encodeV1({ sourceAddress: '192.0.2.1', sourcePort: 56324, destAddress: '192.0.2.11', destPort: 443 }),
  encodeV1({ sourceAddress: '2001:db8::1', sourcePort: 1, destAddress: '2001:db8::2', destPort: 65535 }),
  Buffer.from('PROXY UNKNOWN\r\n'),
  encodeV2({ sourceAddress: '192.0.2.1', sourcePort: 1000, destAddress: '192.0.2.2', destPort: 2000 }),
  encodeV2({ sourceAddress: '2001:db8::1', sourcePort: 1000, destAddress: '2001:db8::2', destPort: 2000 }, 'dgram'),
  encodeV2({ sourceAddress: '192.0.2.1', sourcePort: 1, destAddress: '192.0.2.2', destPort: 2 }, 'stream', [
    { type: PP2_TYPE_AUTHORITY, value: Buffer.from('db.example') },
    { type: PP2_TYPE_ALPN, value: Buffer.from('h2') },
    { type: 0x20, value: Buffer.from([0x01, 0, 0, 0, 0, 0x21, 0, 7, ...Buffer.from('TLSv1.3')]) },
  ]),
  encodeV2(undefined),
]

t.test('PROXY v1/v2 header parser', async (t) => {
  fuzz(t, 'parseProxyHeader', mutated(PROXY_SAMPLES), (buf) => {
    const r = parseProxyHeader(buf)
    if (r.kind === 'ok') {
      if (r.length > buf.length || r.length <= 0) throw new Error(`ok with length ${r.length} of ${buf.length} bytes`)
      readTlvs(r.header.tlvs)
    } else if (r.kind === 'need-more') {
      // It never waits for more than a header can be.
      if (buf.length > 16 + V2_MAX_PAYLOAD && buf.length > V1_MAX) throw new Error(`need-more after ${buf.length} bytes`)
    } else if (typeof r.message !== 'string' || r.message === '') throw new Error('an error without a message')
  })
  // Every prefix of a valid header asks for more, and the whole parses.
  for (const s of PROXY_SAMPLES) {
    const kinds = new Set<string>()
    for (let n = 1; n < s.length; n++) kinds.add(parseProxyHeader(s.subarray(0, n)).kind)
    t.same([...kinds], ['need-more'], `every prefix of a ${s.length}-byte header asks for more`)
    t.equal(parseProxyHeader(s).kind, 'ok')
  }
})

/** A real ClientHello from Node's TLS client (SNI, ALPN), captured off a plain TCP server. */
async function captureClientHello(servername: string, alpn: string[]): Promise<Buffer> {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const got = new Promise<Buffer>((resolve) => {
    server.once('connection', (s) => {
      const parts: Buffer[] = []
      s.on('data', (d: Buffer) => {
        parts.push(d)
        const b = Buffer.concat(parts)
        if (b.length >= 5 && b.length >= 5 + b.readUInt16BE(3)) {
          resolve(b)
          s.destroy()
        }
      })
    })
  })
  const c = tlsConnect({ port: (server.address() as AddressInfo).port, host: '127.0.0.1', servername, ALPNProtocols: alpn, rejectUnauthorized: false })
  c.on('error', () => {})
  const hello = await got
  c.destroy()
  server.close()
  return hello
}

t.test('TLS ClientHello parser', async (t) => {
  const samples = [await captureClientHello('db.example', ['postgresql']), await captureClientHello('a.b.c.example', ['h2', 'http/1.1'])]
  t.same(parseClientHello(samples[0]!), { kind: 'ok', sni: 'db.example', alpn: ['postgresql'] }, 'the captured sample parses')
  // Split in two records, as some clients send it.
  const hs = samples[1]!.subarray(5)
  const half = Math.floor(hs.length / 2)
  const rec = (b: Buffer): Buffer => Buffer.concat([Buffer.from([0x16, 0x03, 0x01, b.length >> 8, b.length & 0xff]), b])
  samples.push(Buffer.concat([rec(hs.subarray(0, half)), rec(hs.subarray(half))]))
  t.equal(parseClientHello(samples[2]!).kind, 'ok', 'the two-record sample parses')
  fuzz(t, 'parseClientHello', mutated(samples), (buf) => {
    const r = parseClientHello(buf)
    if (r.kind === 'need-more' && buf.length > CLIENT_HELLO_MAX + 5 * 64) throw new Error(`need-more after ${buf.length} bytes`)
    if (r.kind === 'ok' && r.sni !== undefined && (r.sni.length > 255 || r.sni !== r.sni.toLowerCase())) throw new Error(`odd sni ${r.sni}`)
  })
})

function answers(): Buffer[] {
  const out: Buffer[] = []
  for (const [name, type] of [['example.com', 1], ['a.very.long.name.example.org', 28], ['_pg._tcp.service.consul', 33]] as const) {
    const q = buildQuery(name, type).msg
    out.push(q)
    const a = Buffer.from(q)
    a[2] = 0x81 // QR, RD
    a[3] = 0x83 // RA, NXDOMAIN
    out.push(a)
  }
  return out
}

t.test('DNS health probe answer parser', async (t) => {
  const samples = answers()
  fuzz(t, 'answerRcode', fc.tuple(mutated(samples), fc.integer({ min: 0, max: 0xffff })), ([buf, id]) => {
    const r = answerRcode(buf, id)
    if (typeof r === 'number' && (r < 0 || r > 15)) throw new Error(`rcode ${r}`)
    if (typeof r !== 'number' && typeof r !== 'string') throw new Error('neither an rcode nor a detail')
  })
  const a = samples[1]!
  t.equal(answerRcode(a, a.readUInt16BE(0)), 3, 'NXDOMAIN is read')
})

t.test('DNS message parser (udp.mode dns)', async (t) => {
  const samples = answers()
  fuzz(t, 'dns-message', mutated(samples), (buf) => {
    const h = questionHash(buf)
    if (!(h === -1 || (Number.isInteger(h) && h >= 0 && h <= 0xffffffff))) throw new Error(`hash ${h}`)
    if (buf.length >= DNS_HEADER_BYTES) {
      const id = dnsId(buf)
      isResponse(buf)
      const copy = Buffer.from(buf)
      setDnsId(copy, id ^ 0xffff)
      if (dnsId(copy) !== (id ^ 0xffff)) throw new Error('setDnsId did not take')
      // The ID is not part of the question: the same question hashes the same under any ID.
      if (questionHash(copy) !== h) throw new Error('the hash depends on the ID')
    }
  })
  // Case does not matter to the question (0x20 bit randomisation by resolvers).
  const q = buildQuery('Example.COM', 1).msg
  t.equal(questionHash(q), questionHash(buildQuery('example.com', 1).msg))
})
