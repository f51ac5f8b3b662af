import t from 'tap'
import { createSocket } from 'node:dgram'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { connect, type AddressInfo, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createServer as createTlsServer } from 'node:tls'
import { which } from '../helpers/tools.js'
import { eventually } from '../helpers/net.js'
import { QUERY_TYPES } from '../../src/health/probes/dns.js'
import { parseProxyHeader, type ProxyHeader } from '../../src/proxy/proxy-protocol.js'
import { afterProxyHeader, closeJudge, dnsAnswer, lines, probe } from './probe-helpers.js'

/**
 * How probes end their connections, and the PROXY header they send first when the pool sends
 * one (`send_proxy`): each probe type against servers that tell a FIN from a reset, and that
 * read a header before they speak.
 */

/** A server-first SMTP-like script: banner, EHLO → 250, QUIT → 221 (and no close of its own). */
function smtpScript(s: Socket): void {
  s.write('220 mail.test ESMTP\r\n')
  lines(s, (l) => {
    if (l.startsWith('EHLO')) s.write('250-mail.test\r\n250 8BITMIME\r\n')
    if (l === 'QUIT') s.write('221 2.0.0 Bye\r\n')
  })
}

function imapScript(s: Socket): void {
  s.write('* OK [CAPABILITY IMAP4rev1] ready\r\n')
  lines(s, (l) => {
    if (l.endsWith('LOGOUT')) s.write('* BYE Logging out\r\na1 OK Logout completed.\r\n')
  })
}

t.test('every probe closes with a FIN and reads what the server still sends: no reset', async (t) => {
  const cases: [string, unknown, (s: Socket) => void][] = [
    ['tcp', null, (s) => s.write('220 a banner the tcp check never waits for\r\n')],
    ['smtp', { ehlo: 'checker.test' }, smtpScript],
    ['imap', null, imapScript],
    ['pop3', null, (s) => {
      s.write('+OK ready\r\n')
      lines(s, (l) => l === 'QUIT' && s.write('+OK bye\r\n'))
    }],
    ['redis', { password: undefined, username: undefined }, (s) => lines(s, (l) => l === 'PING' && s.write('+PONG\r\n'))],
    ['postgres', null, (s) => s.once('data', () => s.write('N'))],
    ['http', { path: '/', host: undefined, expect: [[200, 399]], expectText: '200-399' }, (s) => lines(s, (l) => l === '' && s.write('HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello'))],
    ['send-expect', { steps: [{ send: 'PING\r\n' }, { expect: 'PONG' }] }, (s) => lines(s, (l) => l === 'PING' && s.write('PONG and more after the match\r\n'))],
  ]
  for (const [type, options, script] of cases) {
    const judge = await closeJudge(t, script)
    for (let i = 0; i < 5; i++) {
      // The probe's deadline also ends a polite close still reading the judge's 8 MB: here it
      // only bounds a hang, so it is generous (a busy machine takes seconds for five of them).
      const r = await probe(type, options, judge.port, 60_000)
      t.equal(r.ok, true, `${type}: ${r.detail}`)
    }
    await judge.allClosed()
    t.equal(judge.resets(), 0, `${type}: no connection saw a reset`)
    t.equal(judge.fins(), 5, `${type}: each connection got the probe's FIN`)
  }
})

t.test('a failed probe closes politely too; one that timed out is closed at once', async (t) => {
  const judge = await closeJudge(t, (s) => s.write('554 go away\r\n'))
  const r = await probe('smtp', { ehlo: 'x' }, judge.port)
  t.same(r, { ok: false, detail: 'expected a 220 banner, got "554 go away"' })
  await judge.allClosed()
  t.equal(judge.resets(), 0)
  t.equal(judge.fins(), 1)
  const silent = await closeJudge(t, () => {})
  const started = Date.now()
  const slow = await probe('imap', null, silent.port, 100)
  t.same(slow, { ok: false, detail: 'timeout after 100ms waiting for the * OK greeting' })
  // A close that held the result back would never end (the server stays silent and open).
  t.ok(Date.now() - started < 5000, 'the result is not held back by the close')
  await silent.allClosed()
})

t.test('the polite close is bounded: a server that never closes is let go after the timeout', async (t) => {
  let closedAt = 0
  let finAt = 0
  const judge = await closeJudge(t, (s) => {
    s.write('+OK\r\n')
    s.on('close', () => (closedAt = performance.now()))
  }, (s) => {
    // Never answer the FIN: keep sending a byte now and then, which a lingering probe reads;
    // once the probe gives up, the next byte meets a reset and the server side closes.
    finAt = performance.now()
    const timer = setInterval(() => s.write('.'), 10)
    s.on('close', () => clearInterval(timer))
  })
  const started = performance.now()
  const r = await probe('pop3', null, judge.port, 150)
  t.equal(r.ok, true)
  await judge.allClosed()
  // Measured from the probe's start, where its deadline runs from (not from the FIN, which a
  // slow machine may send late in the 150 ms): the close lasts until the deadline, not longer
  // than it by more than a hang's margin.
  t.ok(finAt > started, 'the probe sent its FIN')
  const held = closedAt - started
  t.ok(held >= 145 && held < 5000, `the probe held on until its deadline (closed ${held.toFixed(0)} ms after it began), then let go`)
})

t.test('PROXY v2: every TCP probe sends a LOCAL header first; v1 names the probe\'s own connection', async (t) => {
  const cases: [string, unknown, (s: Socket) => void][] = [
    ['tcp', null, () => {}],
    ['smtp', { ehlo: 'checker.test' }, smtpScript],
    ['imap', null, imapScript],
    ['redis', { password: undefined, username: undefined }, (s) => lines(s, (l) => l === 'PING' && s.write('+PONG\r\n'))],
    ['postgres', null, (s) => s.once('data', () => s.write('S'))],
  ]
  for (const version of ['v2', 'v1'] as const) {
    for (const [type, options, script] of cases) {
      const headers: ProxyHeader[] = []
      const sources: string[] = []
      const judge = await closeJudge(t, (s) => {
        sources.push(`${s.remoteAddress}:${s.remotePort}`)
        afterProxyHeader(s, headers, script)
      })
      const r = await probe(type, options, judge.port, 2000, version)
      t.equal(r.ok, true, `${type} ${version}: ${r.detail}`)
      await judge.allClosed()
      t.equal(headers.length, 1, `${type} ${version}: a header arrived before anything else`)
      const h = headers[0]
      if (version === 'v2') {
        t.match(h, { version: 2, command: 'local', transport: 'unknown' }, `${type}: LOCAL, no addresses`)
        t.equal(h?.addresses, undefined)
      } else {
        t.match(h, { version: 1, command: 'proxy', transport: 'stream' })
        const a = h?.addresses
        t.equal(`${a?.sourceAddress}:${a?.sourcePort}`, sources[0], `${type}: v1 names the probe's own address and port`)
        t.same([a?.destAddress, a?.destPort], ['127.0.0.1', judge.port], `${type}: and the backend it connected to`)
      }
      t.equal(judge.resets(), 0, `${type} ${version}: closed with a FIN`)
    }
  }
})

t.test('a server that wants a header fails a probe that sends none (the reason for send_proxy)', async (t) => {
  const headers: ProxyHeader[] = []
  const judge = await closeJudge(t, (s) => afterProxyHeader(s, headers, smtpScript))
  const r = await probe('smtp', { ehlo: 'x' }, judge.port, 300)
  t.equal(r.ok, false, r.detail)
  t.equal(headers.length, 0)
})

t.test('tls: the PROXY header goes before the ClientHello, in the clear', async (t) => {
  const openssl = which('openssl')
  if (openssl === undefined) {
    t.skip('needs openssl to make a test certificate', () => {})
    return
  }
  const dir = mkdtempSync(join(tmpdir(), 'sluice-tls-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  execFileSync(openssl, ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2', '-subj', '/CN=localhost',
    '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')], { stdio: 'ignore' })
  const tls = createTlsServer({ cert: readFileSync(join(dir, 'cert.pem')), key: readFileSync(join(dir, 'key.pem')) }, (s) => s.on('error', () => {}))
  tls.on('tlsClientError', () => {})
  const headers: ProxyHeader[] = []
  const judge = await closeJudge(t, (s) => {
    // Read the header off the raw connection, then hand the rest to the TLS server.
    let buf = Buffer.alloc(0)
    const onData = (c: Buffer): void => {
      buf = Buffer.concat([buf, c])
      const r = parseProxyHeader(buf)
      if (r.kind === 'need-more') return
      s.off('data', onData)
      s.pause()
      if (r.kind === 'ok') headers.push(r.header)
      s.unshift(buf.subarray(r.kind === 'ok' ? r.length : 0))
      tls.emit('connection', s)
    }
    s.on('data', onData)
  }, () => {})
  const base = { verify: false, servername: undefined, ca: undefined, caFile: undefined }
  const r = await probe('tls', base, judge.port, 2000, 'v2')
  t.equal(r.ok, true, r.detail)
  t.match(headers, [{ version: 2, command: 'local' }])
})

t.test('dns over UDP with v2: each datagram starts with a LOCAL header; over TCP, the stream does', async (t) => {
  const udp = createSocket('udp4')
  const got: ProxyHeader[] = []
  udp.on('message', (msg, rinfo) => {
    const r = parseProxyHeader(msg)
    if (r.kind !== 'ok') return
    got.push(r.header)
    udp.send(dnsAnswer(msg.subarray(r.length), 0), rinfo.port, rinfo.address)
  })
  await new Promise<void>((resolve) => udp.bind(0, '127.0.0.1', resolve))
  t.teardown(() => udp.close())
  const opts = { query: 'example.com', queryType: QUERY_TYPES.A, expectRcodes: [0], transport: 'udp' }
  t.same(await probe('dns', opts, (udp.address() as AddressInfo).port, 1000, 'v2'), { ok: true, detail: 'NOERROR' })
  t.match(got, [{ version: 2, command: 'local' }])
  const tcpHeaders: ProxyHeader[] = []
  const judge = await closeJudge(t, (s) => afterProxyHeader(s, tcpHeaders, (s2) => s2.once('data', (d: Buffer) => {
    const a = dnsAnswer(d.subarray(2), 0)
    s2.write(Buffer.concat([Buffer.from([a.length >> 8, a.length & 0xff]), a]))
  })))
  t.same(await probe('dns', { ...opts, transport: 'tcp' }, judge.port, 1000, 'v2'), { ok: true, detail: 'NOERROR' })
  t.match(tcpHeaders, [{ version: 2, command: 'local' }])
})

t.test('a raw connect that closes at once is what the judge calls a reset (the judge can fail)', async (t) => {
  const judge = await closeJudge(t, (s) => s.write('220 banner\r\n'))
  const s = connect({ port: judge.port, host: '127.0.0.1' })
  await new Promise<void>((resolve) => s.once('connect', () => resolve()))
  s.destroy()
  await eventually(() => judge.closed() === 1, 'the server side to close')
  t.equal(judge.resets(), 1)
})
