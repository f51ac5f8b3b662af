import t from 'tap'
import { parseProxyHeader, V1_MAX, V2_MAX_PAYLOAD, V2_SIGNATURE } from '../../src/proxy/proxy-protocol.js'
import { encodeProxyHeader, encodeV1, encodeV2 } from '../../src/proxy/proxy-header-out.js'
import { seeded } from './seeded.js'

const v4 = { sourceAddress: '192.0.2.10', sourcePort: 51234, destAddress: '198.51.100.1', destPort: 993 }
const v6 = { sourceAddress: '2001:db8::1', sourcePort: 40000, destAddress: '2001:db8:0:1::ff', destPort: 25 }

function ok(buf: Buffer): Extract<ReturnType<typeof parseProxyHeader>, { kind: 'ok' }> {
  const r = parseProxyHeader(buf)
  if (r.kind !== 'ok') throw new Error(`expected a header, got ${JSON.stringify(r)}`)
  return r
}

t.test('v1 round trips for IPv4 and IPv6, and the length excludes what follows', async (t) => {
  const h4 = encodeV1(v4)
  t.equal(h4.toString(), 'PROXY TCP4 192.0.2.10 198.51.100.1 51234 993\r\n')
  const r4 = ok(Buffer.concat([h4, Buffer.from('EHLO x\r\n')]))
  t.equal(r4.length, h4.length)
  t.same(r4.header.addresses, v4)
  t.equal(r4.header.version, 1)
  const r6 = ok(encodeV1(v6))
  t.same(r6.header.addresses, v6)
  t.equal(encodeV1({ ...v4, sourceAddress: 'not-an-ip' }).toString(), 'PROXY UNKNOWN\r\n')
  t.equal(ok(Buffer.from('PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n')).header.transport, 'unknown')
})

t.test('mixed families are written IPv6 with the IPv4 side mapped', async (t) => {
  const mixed = { ...v4, sourceAddress: '2001:db8::7' }
  t.match(encodeV1(mixed).toString(), /^PROXY TCP6 2001:db8::7 ::ffff:198\.51\.100\.1 /)
  const r = ok(encodeV2(mixed))
  t.equal(r.header.addresses?.destAddress, '::ffff:c633:6401')
  // A dual-stack socket's IPv4-mapped client address is written as plain IPv4.
  t.match(encodeV1({ ...v4, sourceAddress: '::ffff:192.0.2.10' }).toString(), /^PROXY TCP4 192\.0\.2\.10 /)
})

t.test('v2 round trips: STREAM and DGRAM, IPv4 and IPv6, LOCAL, AF_UNSPEC', async (t) => {
  const s4 = ok(encodeV2(v4))
  t.same(s4.header.addresses, v4)
  t.equal(s4.header.transport, 'stream')
  t.equal(s4.length, 16 + 12)
  const d6 = ok(encodeProxyHeader('v2', v6, 'dgram'))
  t.same(d6.header.addresses, v6)
  t.equal(d6.header.transport, 'dgram')
  t.equal(d6.length, 16 + 36)
  const local = ok(encodeV2(undefined))
  t.equal(local.header.command, 'local')
  t.equal(local.header.addresses, undefined)
  const unspec = ok(encodeV2({ ...v4, destAddress: 'x' }))
  t.equal(unspec.header.transport, 'unknown')
  t.equal(unspec.header.addresses, undefined)
})

t.test('v2 TLVs are read and bounded', async (t) => {
  const base = encodeV2(v4)
  const tlv = Buffer.from([0x04, 0x00, 0x03, 0x61, 0x62, 0x63]) // PP2_TYPE_NOOP "abc"
  const withTlv = Buffer.concat([base, tlv])
  withTlv.writeUInt16BE(12 + tlv.length, 14)
  const r = ok(withTlv)
  t.equal(r.header.tlvs.length, 1)
  t.equal(r.header.tlvs[0]?.value.toString(), 'abc')
  const broken = Buffer.from(withTlv)
  broken.writeUInt16BE(0x00ff, 16 + 12 + 1) // the TLV claims 255 bytes
  t.equal(parseProxyHeader(broken).kind, 'error')
  const huge = Buffer.from(base)
  huge.writeUInt16BE(V2_MAX_PAYLOAD + 1, 14)
  t.equal(parseProxyHeader(huge).kind, 'error', 'a header announcing more than the cap is refused at once')
})

t.test('every prefix of a valid header asks for more, never fails', async (t) => {
  for (const h of [encodeV1(v4), encodeV1(v6), encodeV2(v4), encodeV2(v6, 'dgram'), encodeV2(undefined)]) {
    for (let n = 0; n < h.length; n++) t.equal(parseProxyHeader(h.subarray(0, n)).kind, 'need-more', `${n} of ${h.length} bytes`)
  }
})

t.test('malformed headers are refused with a reason', async (t) => {
  const v1Bad = [
    'GET / HTTP/1.1\r\n',
    'PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n',
    'PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX',
    'PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n',
    'PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n',
    'PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n',
    'PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n',
    'PROXY TCP4 1.2.3.4 ::1 1 2\r\n',
    'PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n',
    'PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n',
    'PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n',
    'PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n',
    'PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n',
    'PROXY TCP4 1.2.3.4 5.6.7.8 1 2\x00\r\n',
    'proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n',
    `PROXY UNKNOWN ${'x'.repeat(V1_MAX)}\r\n`,
  ]
  for (const s of v1Bad) t.equal(parseProxyHeader(Buffer.from(s, 'latin1')).kind, 'error', JSON.stringify(s))
  const good = encodeV2(v4)
  const mutate = (f: (b: Buffer) => void): Buffer => {
    const b = Buffer.from(good)
    f(b)
    return b
  }
  const v2Bad: [string, Buffer][] = [
    ['signature', mutate((b) => (b[5] = 0x00))],
    ['version 1', mutate((b) => (b[12] = 0x11))],
    ['command 2', mutate((b) => (b[12] = 0x22))],
    ['family 4', mutate((b) => (b[13] = 0x41))],
    ['protocol 3', mutate((b) => (b[13] = 0x13))],
    ['PROXY with UNSPEC protocol', mutate((b) => (b[13] = 0x10))],
    ['short address block', mutate((b) => (b[13] = 0x21))],
  ]
  for (const [what, b] of v2Bad) t.equal(parseProxyHeader(b).kind, 'error', what)
  t.equal(parseProxyHeader(Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x01])).kind, 'error', 'a wrong signature byte fails before 16 bytes')
  t.equal(parseProxyHeader(Buffer.from([0x16, 0x03, 0x01])).kind, 'error', 'a TLS record is not a PROXY header')
  t.equal(V2_SIGNATURE.length, 12)
})

t.test('property: random and mutated bytes never throw and results are consistent', async (t) => {
  const rnd = seeded(0x5eed)
  const seeds = [encodeV1(v4), encodeV1(v6), encodeV2(v4), encodeV2(v6, 'dgram'), encodeV2(undefined)]
  let errors = 0
  for (let i = 0; i < 20_000; i++) {
    let buf: Buffer
    if (i % 2 === 0) {
      buf = rnd.bytes(rnd.int(0, 300))
      if (i % 4 === 0 && buf.length > 0) buf[0] = rnd.pick([0x50, 0x0d])
    } else {
      buf = Buffer.from(rnd.pick(seeds))
      for (let k = rnd.int(1, 4); k > 0; k--) if (buf.length > 0) buf[rnd.int(0, buf.length - 1)] = rnd.int(0, 255)
      buf = buf.subarray(0, rnd.int(0, buf.length))
    }
    let r: ReturnType<typeof parseProxyHeader>
    try {
      r = parseProxyHeader(buf)
    } catch (err) {
      t.fail(`threw on ${buf.toString('hex')}: ${String(err)}`)
      return
    }
    if (r.kind === 'ok' && (r.length > buf.length || r.length < 15)) t.fail(`bad length ${r.length} for ${buf.toString('hex')}`)
    if (r.kind === 'error') errors++
  }
  t.ok(errors > 1000, `random input is mostly refused (${errors})`)
})
