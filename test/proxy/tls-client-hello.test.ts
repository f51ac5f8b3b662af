import t from 'tap'
import { createServer, type AddressInfo } from 'node:net'
import { connect as tlsConnect } from 'node:tls'
import { parseClientHello, CLIENT_HELLO_MAX } from '../../src/proxy/tls-client-hello.js'
import { seeded } from './seeded.js'

/** The first flight of a real Node TLS client (its ClientHello), captured over loopback. */
async function realHello(servername: string | undefined, alpn?: string[]): Promise<Buffer> {
  const server = createServer()
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const port = (server.address() as AddressInfo).port
  const got = new Promise<Buffer>((resolve) => {
    server.once('connection', (s) => {
      let buf = Buffer.alloc(0)
      s.on('data', (c: Buffer) => {
        buf = Buffer.concat([buf, c])
        if (parseClientHello(buf).kind !== 'need-more') {
          resolve(buf)
          s.destroy()
        }
      })
    })
  })
  const c = tlsConnect({ port, host: '127.0.0.1', rejectUnauthorized: false, ...(servername !== undefined ? { servername } : {}), ...(alpn ? { ALPNProtocols: alpn } : {}) })
  c.on('error', () => {})
  const hello = await got
  c.destroy()
  server.close()
  return hello
}

/** A hand-built ClientHello with the given extensions, in one record (or split in `records`). */
function hello(exts: [number, Buffer][], records = 1, sessionId = 0): Buffer {
  const extBytes = Buffer.concat(exts.map(([type, body]) => Buffer.concat([u16(type), u16(body.length), body])))
  const body = Buffer.concat([
    Buffer.from([0x03, 0x03]),
    Buffer.alloc(32, 7),
    Buffer.from([sessionId]),
    Buffer.alloc(sessionId),
    u16(2),
    Buffer.from([0x13, 0x01]),
    Buffer.from([1, 0]),
    ...(exts.length > 0 ? [u16(extBytes.length), extBytes] : []),
  ])
  const hs = Buffer.concat([Buffer.from([1, body.length >> 16, (body.length >> 8) & 0xff, body.length & 0xff]), body])
  const out: Buffer[] = []
  const step = Math.ceil(hs.length / records)
  for (let i = 0; i < hs.length; i += step) {
    const part = hs.subarray(i, i + step)
    out.push(Buffer.from([0x16, 0x03, 0x01]), u16(part.length), part)
  }
  return Buffer.concat(out)
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2)
  b.writeUInt16BE(n)
  return b
}

function sniExt(...names: string[]): [number, Buffer] {
  const list = Buffer.concat(names.map((n) => Buffer.concat([Buffer.from([0]), u16(n.length), Buffer.from(n, 'latin1')])))
  return [0, Buffer.concat([u16(list.length), list])]
}

t.test('a real ClientHello: the server name (lower-cased) and ALPN', async (t) => {
  const h = await realHello('Mail.Example.TEST', ['imap', 'h2'])
  const r = parseClientHello(h)
  t.same(r, { kind: 'ok', sni: 'mail.example.test', alpn: ['imap', 'h2'] })
  const none = parseClientHello(await realHello(undefined))
  t.equal(none.kind === 'ok' ? none.sni : 'error', undefined, 'no server_name: no sni')
  for (let n = 0; n < h.length; n++) {
    if (parseClientHello(h.subarray(0, n)).kind !== 'need-more') {
      t.fail(`prefix of ${n} bytes did not ask for more`)
      break
    }
  }
})

t.test('a ClientHello split over several records is reassembled', async (t) => {
  const h = hello([sniExt('split.example.test')], 5)
  t.same(parseClientHello(h), { kind: 'ok', sni: 'split.example.test', alpn: [] })
  t.same(parseClientHello(hello([])), { kind: 'ok', sni: undefined, alpn: [] }, 'no extensions at all')
  t.same(parseClientHello(hello([sniExt('trailing.dot.test.')])), { kind: 'ok', sni: 'trailing.dot.test', alpn: [] })
})

t.test('malformed or non-TLS first bytes are refused', async (t) => {
  const cases: [string, Buffer][] = [
    ['HTTP', Buffer.from('GET / HTTP/1.1\r\n\r\n')],
    ['SSH', Buffer.from('SSH-2.0-OpenSSH\r\n')],
    ['alert record', Buffer.from([0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28])],
    ['record version 2', Buffer.from([0x16, 0x02, 0x00, 0x00, 0x01, 0x01])],
    ['empty record', Buffer.from([0x16, 0x03, 0x01, 0x00, 0x00])],
    ['oversized record', Buffer.from([0x16, 0x03, 0x01, 0x48, 0x01])],
    ['ServerHello', Buffer.from([0x16, 0x03, 0x03, 0x00, 0x04, 0x02, 0x00, 0x00, 0x00])],
    ['two host names', hello([sniExt('a.test', 'b.test')])],
    ['bad host name', hello([sniExt('bad name!')])],
    ['empty host name', hello([sniExt('')])],
    ['repeated extension', hello([sniExt('a.test'), sniExt('a.test')])],
    ['session id too long', hello([], 1, 33)],
  ]
  for (const [what, b] of cases) t.equal(parseClientHello(b).kind, 'error', what)
  const wrongListLen = hello([[0, Buffer.from([0x00, 0x09, 0x00, 0x00, 0x01, 0x61])]])
  t.equal(parseClientHello(wrongListLen).kind, 'error', 'server_name list length')
  const shortExt = hello([sniExt('a.test')])
  const extLenAt = 5 + 4 + 2 + 32 + 1 + 2 + 2 + 2 // record, handshake header, version, random, sid, suites, compression
  shortExt.writeUInt16BE(shortExt.readUInt16BE(extLenAt) - 1, extLenAt)
  t.equal(parseClientHello(shortExt).kind, 'error', 'extensions must fill the message exactly')
  const big = Buffer.from([0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x01, 0x00, 0x00])
  t.equal(parseClientHello(big).kind, 'error', 'a ClientHello announced larger than the cap')
  const many = Buffer.concat(Array.from({ length: CLIENT_HELLO_MAX / 6 + 2 }, () => Buffer.from([0x16, 0x03, 0x01, 0x00, 0x01, 0x01])))
  t.equal(parseClientHello(many).kind, 'error', 'endless one-byte records stop at the cap')
})

t.test('property: random and mutated bytes never throw', async (t) => {
  const rnd = seeded(0xc11e)
  const real = await realHello('p.example.test', ['h2'])
  const seeds = [real, hello([sniExt('a.example.test')], 3), hello([])]
  let oks = 0
  for (let i = 0; i < 20_000; i++) {
    let buf: Buffer
    if (i % 3 === 0) {
      buf = rnd.bytes(rnd.int(0, 400))
      if (buf.length > 1) {
        buf[0] = 0x16
        buf[1] = 0x03
      }
    } else {
      buf = Buffer.from(rnd.pick(seeds))
      for (let k = rnd.int(1, 3); k > 0; k--) buf[rnd.int(0, buf.length - 1)] = rnd.int(0, 255)
      if (i % 3 === 2) buf = buf.subarray(0, rnd.int(0, buf.length))
    }
    try {
      if (parseClientHello(buf).kind === 'ok') oks++
    } catch (err) {
      t.fail(`threw on ${buf.toString('hex')}: ${String(err)}`)
      return
    }
  }
  t.pass(`20000 inputs, ${oks} parsed as a ClientHello, none threw`)
})
