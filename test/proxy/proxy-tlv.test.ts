import t from 'tap'
import { parseProxyHeader, V2_SIGNATURE } from '../../src/proxy/proxy-protocol.js'
import { encodeProxyHeader, encodeV1, encodeV2 } from '../../src/proxy/proxy-header-out.js'
import {
  PP2_CLIENT_CERT_CONN,
  PP2_CLIENT_CERT_SESS,
  PP2_CLIENT_SSL,
  PP2_SUBTYPE_SSL_CIPHER,
  PP2_SUBTYPE_SSL_CN,
  PP2_SUBTYPE_SSL_VERSION,
  PP2_TYPE_ALPN,
  PP2_TYPE_AUTHORITY,
  PP2_TYPE_NOOP,
  PP2_TYPE_SSL,
  encodeTlvs,
  readTlvs,
  tlsTlvs,
  type TlsFacts,
} from '../../src/proxy/proxy-tlv.js'
import { seeded } from './seeded.js'

const v4 = { sourceAddress: '192.0.2.10', sourcePort: 51234, destAddress: '198.51.100.1', destPort: 993 }
const facts: TlsFacts = { version: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384', sni: 'mail.example.org', alpn: 'imap', clientCert: 'none', clientCn: undefined }

function header(buf: Buffer): Extract<ReturnType<typeof parseProxyHeader>, { kind: 'ok' }> {
  const r = parseProxyHeader(buf)
  if (r.kind !== 'ok') throw new Error(`expected a header, got ${JSON.stringify(r)}`)
  return r
}

t.test('the TLS TLVs round trip through a v2 header after the addresses', async (t) => {
  const buf = encodeV2(v4, 'stream', tlsTlvs(facts))
  const r = header(Buffer.concat([buf, Buffer.from('a1 LOGIN\r\n')]))
  t.equal(r.length, buf.length, 'the length covers the TLVs and stops there')
  t.same(r.header.addresses, v4, 'the addresses are unchanged')
  t.same(
    r.header.tlvs.map((x) => x.type),
    [PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_SSL],
  )
  const got = readTlvs(r.header.tlvs)
  t.equal(got.alpn, 'imap')
  t.equal(got.authority, 'mail.example.org')
  t.same(got.ssl, { client: PP2_CLIENT_SSL, verify: 1, version: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384', cn: undefined }, 'no client certificate: verify is non-zero')
  // The SSL TLV's bytes, as the spec lays them out: client, verify (4 bytes), sub-TLVs.
  const ssl = r.header.tlvs[2]!.value
  t.equal(ssl[0], PP2_CLIENT_SSL)
  t.equal(ssl.readUInt32BE(1), 1)
  t.equal(ssl[5], PP2_SUBTYPE_SSL_VERSION)
  t.equal(ssl.readUInt16BE(6), 'TLSv1.3'.length)
  t.equal(ssl.toString('latin1', 8, 8 + 7), 'TLSv1.3')
})

t.test('a verified client certificate sets CERT_CONN and CERT_SESS, verify 0 and the CN', async (t) => {
  const conn = readTlvs(header(encodeV2(v4, 'stream', tlsTlvs({ ...facts, clientCert: 'connection', clientCn: 'client.sluice.test' }))).header.tlvs).ssl
  t.equal(conn?.client, PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS)
  t.equal(conn?.verify, 0)
  t.equal(conn?.cn, 'client.sluice.test')
  const sess = readTlvs(header(encodeV2(v4, 'stream', tlsTlvs({ ...facts, clientCert: 'session', clientCn: 'client.sluice.test' }))).header.tlvs).ssl
  t.equal(sess?.client, PP2_CLIENT_SSL | PP2_CLIENT_CERT_SESS, 'a resumed session: presented in the session, not on this connection')
  t.equal(sess?.verify, 0)
  const none = tlsTlvs({ ...facts, clientCn: 'ignored' })
  t.notOk(readTlvs(none).ssl?.cn, 'no CN without a verified certificate')
})

t.test('missing facts leave their TLVs out; over-long values are left out, not cut', async (t) => {
  const bare = tlsTlvs({ version: 'TLSv1.2', cipher: undefined, sni: undefined, alpn: undefined, clientCert: 'none', clientCn: undefined })
  t.same(bare.map((x) => x.type), [PP2_TYPE_SSL], 'only PP2_TYPE_SSL')
  t.same(readTlvs(bare).ssl?.version, 'TLSv1.2')
  const long = tlsTlvs({ ...facts, sni: `${'a'.repeat(300)}.example`, clientCert: 'connection', clientCn: 'c'.repeat(256) })
  t.equal(readTlvs(long).authority, undefined)
  t.equal(readTlvs(long).ssl?.cn, undefined)
  t.equal(readTlvs(long).ssl?.version, 'TLSv1.3', 'the rest is still there')
})

t.test('the existing encoders keep their arguments; TLVs are v2 only', async (t) => {
  t.same(encodeProxyHeader('v2', v4), encodeV2(v4), 'no TLVs: the header is as before')
  t.same(encodeProxyHeader('v2', v4, 'stream', []), encodeV2(v4), 'an empty list adds nothing')
  t.same(encodeProxyHeader('v1', v4, 'stream', tlsTlvs(facts)), encodeV1(v4), 'v1 has no TLVs')
  t.equal(encodeV2(v4).readUInt16BE(14), 12)
  const withTlvs = encodeProxyHeader('v2', v4, 'stream', tlsTlvs(facts))
  t.equal(withTlvs.readUInt16BE(14), withTlvs.length - 16, 'the length field counts the TLVs')
  const local = header(encodeV2(undefined, 'stream', [{ type: PP2_TYPE_NOOP, value: Buffer.alloc(2) }]))
  t.equal(local.header.command, 'local')
  t.same(local.header.tlvs, [{ type: PP2_TYPE_NOOP, value: Buffer.alloc(2) }], 'LOCAL may carry TLVs too')
  const unspec = header(encodeV2({ ...v4, sourceAddress: 'not-an-ip' }, 'stream', tlsTlvs(facts)))
  t.equal(unspec.header.transport, 'unknown')
  t.equal(readTlvs(unspec.header.tlvs).authority, 'mail.example.org')
  t.throws(() => encodeV2(v4, 'stream', [{ type: 0x100, value: Buffer.alloc(0) }]), TypeError)
  t.throws(() => encodeV2(v4, 'stream', [{ type: 1, value: Buffer.alloc(0x10000) }]), TypeError)
  t.throws(() => encodeV2(v4, 'stream', [{ type: 1, value: Buffer.alloc(0xffff - 12) }]), TypeError, 'a header longer than its 16-bit length is refused')
})

t.test('readers skip unknown TLVs and ignore a malformed SSL TLV', async (t) => {
  const tlvs = [
    { type: PP2_TYPE_NOOP, value: Buffer.alloc(3) },
    { type: 0xea, value: Buffer.from('vpce-0123') }, // a vendor type (AWS)
    { type: PP2_TYPE_AUTHORITY, value: Buffer.from('example.net') },
  ]
  const r = header(encodeV2(v4, 'stream', tlvs))
  t.equal(r.header.tlvs.length, 3, 'the parser keeps every TLV, known or not')
  t.same(readTlvs(r.header.tlvs), { alpn: undefined, authority: 'example.net', ssl: undefined })
  t.equal(readTlvs([{ type: PP2_TYPE_SSL, value: Buffer.from([1, 0, 0]) }]).ssl, undefined, 'shorter than client + verify')
  const truncated = Buffer.concat([Buffer.from([1, 0, 0, 0, 0]), encodeTlvs([{ type: PP2_SUBTYPE_SSL_VERSION, value: Buffer.from('TLSv1.3') }]).subarray(0, 6)])
  t.equal(readTlvs([{ type: PP2_TYPE_SSL, value: truncated }]).ssl, undefined, 'a sub-TLV running past the end')
  const subs = encodeTlvs([
    { type: 0x99, value: Buffer.from('?') },
    { type: PP2_SUBTYPE_SSL_CIPHER, value: Buffer.from('ECDHE-RSA-AES128-GCM-SHA256') },
    { type: PP2_SUBTYPE_SSL_CN, value: Buffer.from('Zoë', 'utf8') },
  ])
  const ssl = readTlvs([{ type: PP2_TYPE_SSL, value: Buffer.concat([Buffer.from([5, 0, 0, 0, 0]), subs]) }]).ssl
  t.same(ssl, { client: 5, verify: 0, version: undefined, cipher: 'ECDHE-RSA-AES128-GCM-SHA256', cn: 'Zoë' }, 'unknown sub-TLVs are skipped')
  // A TLV that runs past the header's length makes the header malformed.
  const bad = Buffer.from(encodeV2(v4, 'stream', tlvs))
  bad.writeUInt16BE(bad.readUInt16BE(14) - 1, 14)
  t.equal(parseProxyHeader(bad).kind, 'error')
})

t.test('property: random TLV blocks never make the parser or the readers throw', async (t) => {
  const rand = seeded(14)
  let ok = 0
  for (let i = 0; i < 3000; i++) {
    const body = rand.bytes(rand.int(0, 200))
    // Half the time a well-formed TLV around the random bytes, to reach the readers with odd values.
    const tlvBlock = rand.next() < 0.5 ? body : encodeTlvs([{ type: rand.next() < 0.5 ? PP2_TYPE_SSL : rand.int(0, 255), value: body }])
    const buf = Buffer.concat([V2_SIGNATURE, Buffer.from([0x21, 0x11, 0, 0]), Buffer.alloc(12), tlvBlock])
    buf.writeUInt16BE(12 + tlvBlock.length, 14)
    const r = parseProxyHeader(buf)
    if (r.kind === 'ok') {
      readTlvs(r.header.tlvs)
      ok++
    }
  }
  t.ok(ok > 0, `some random blocks parse (${ok}) and are read without throwing`)
})
