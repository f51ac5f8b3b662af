import t from 'tap'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createServer as createTlsServer } from 'node:tls'
import type { AddressInfo } from 'node:net'
import { deadPort } from '../helpers/net.js'
import { which } from '../helpers/tools.js'
import { MAX_PROBE_BYTES } from '../../src/health/probes/conversation.js'
import { RCODES, QUERY_TYPES } from '../../src/health/probes/dns.js'
import { probe, scripted, lines, udpDns, dnsAnswer } from './probe-helpers.js'

t.test('tcp: a listening port passes, a closed one fails with the errno', async (t) => {
  const srv = await scripted(t, () => {})
  const ok = await probe('tcp', null, srv.port)
  t.same(ok, { ok: true, detail: 'connected' })
  await srv.allClosed()
  const bad = await probe('tcp', null, await deadPort())
  t.same(bad, { ok: false, detail: 'connect ECONNREFUSED' })
})

t.test('every probe is bounded in time: a silent server fails at the timeout', async (t) => {
  const srv = await scripted(t, () => {})
  const started = Date.now()
  const r = await probe('redis', { password: undefined, username: undefined }, srv.port, 200)
  t.equal(r.ok, false)
  t.equal(r.detail, 'timeout after 200ms waiting for +PONG')
  t.ok(Date.now() - started < 1500, 'returned near the timeout')
  await srv.allClosed()
})

t.test('every probe is bounded in bytes: a flood without the answer fails', async (t) => {
  const srv = await scripted(t, (s) => s.write(Buffer.alloc(MAX_PROBE_BYTES * 4, 0x41)))
  const r = await probe('imap', null, srv.port)
  t.equal(r.ok, false)
  t.match(r.detail, /^more than 16384 bytes without the \* OK greeting$/)
  await srv.allClosed()
})

t.test('send-expect: one round, a regex, several steps; wrong answers fail with what was seen', async (t) => {
  const srv = await scripted(t, (s) => {
    s.write('220 ready\r\n')
    lines(s, (l) => s.write(l === 'PING' ? 'PONG 42\r\n' : l === 'STATUS' ? 'status: degraded\r\n' : 'ERR\r\n'))
  })
  t.same(await probe('send-expect', { steps: [{ send: 'PING\r\n' }, { expect: 'PONG' }] }, srv.port), { ok: true, detail: 'matched "PONG"' })
  t.same(await probe('send-expect', { steps: [{ expect: /^220 / }, { send: 'PING\r\n' }, { expect: /PONG (\d+)/ }] }, srv.port), { ok: true, detail: 'matched "PONG 42"' })
  const wrong = await probe('send-expect', { steps: [{ send: 'STATUS\r\n' }, { expect: 'status: ok' }] }, srv.port, 300)
  t.equal(wrong.ok, false)
  t.match(wrong.detail, /^timeout after 300ms waiting for "status: ok"; got ".*status: degraded/)
  await srv.allClosed()
  const closer = await scripted(t, (s) => s.end('bye\r\n'))
  const closed = await probe('send-expect', { steps: [{ expect: 'hello' }] }, closer.port)
  t.same(closed, { ok: false, detail: 'closed by the backend before "hello"; got "bye"' })
})

t.test('redis: PING → +PONG, AUTH first when configured; NOAUTH or a wrong password fails', async (t) => {
  const seen: string[] = []
  const srv = await scripted(t, (s) => {
    let authed = false
    lines(s, (l) => {
      seen.push(l)
      if (l === 'PING') s.write(authed ? '+PONG\r\n' : '-NOAUTH Authentication required.\r\n')
      if (l === 's3cret pass') {
        authed = true
        s.write('+OK\r\n')
      } else if (l === 'wrong') s.write('-WRONGPASS invalid username-password pair\r\n')
    })
  })
  const noauth = await probe('redis', { password: undefined, username: undefined }, srv.port)
  t.same(noauth, { ok: false, detail: 'expected +PONG, got "-NOAUTH Authentication required."' })
  t.same(await probe('redis', { password: 's3cret pass', username: undefined }, srv.port), { ok: true, detail: '+PONG' })
  t.ok(seen.includes('$11'), 'the password went as a RESP bulk string')
  const wrong = await probe('redis', { password: 'wrong', username: undefined }, srv.port)
  t.same(wrong, { ok: false, detail: 'AUTH refused: "-WRONGPASS invalid username-password pair"' })
  await srv.allClosed()
})

t.test('postgres: SSLRequest answered S or N passes; an error packet fails', async (t) => {
  for (const answer of ['S', 'N']) {
    const srv = await scripted(t, (s) => s.once('data', (d: Buffer) => s.write(d.equals(Buffer.from([0, 0, 0, 8, 4, 210, 22, 47])) ? answer : 'X')))
    t.same(await probe('postgres', null, srv.port), { ok: true, detail: `SSLRequest answered ${answer}` })
    await srv.allClosed()
  }
  const down = await scripted(t, (s) => s.once('data', () => s.end('EFATAL the database system is shutting down\0')))
  const r = await probe('postgres', null, down.port)
  t.equal(r.ok, false)
  t.match(r.detail, /^expected S or N to the SSLRequest, got "EFATAL the database system is shutting down/)
})

t.test('mysql: a protocol 10 greeting passes; an error packet fails with its message', async (t) => {
  const greeting = Buffer.concat([Buffer.from([10]), Buffer.from('8.0.36\0'), Buffer.alloc(30, 1)])
  const head = Buffer.from([greeting.length, 0, 0, 0])
  const srv = await scripted(t, (s) => {
    s.write(head.subarray(0, 2)) // split across writes: the parser must wait for the whole packet
    setImmediate(() => s.write(Buffer.concat([head.subarray(2), greeting])))
  })
  t.same(await probe('mysql', null, srv.port), { ok: true, detail: 'greeting 8.0.36' })
  const msg = Buffer.from("Host '10.0.0.9' is blocked because of many connection errors")
  const err = Buffer.concat([Buffer.from([0xff, 0x69, 0x04]), msg])
  const blocked = await scripted(t, (s) => s.end(Buffer.concat([Buffer.from([err.length, 0, 0, 0]), err])))
  const r = await probe('mysql', null, blocked.port)
  t.equal(r.ok, false)
  t.match(r.detail, /^server refused: ERROR 1129: Host '10\.0\.0\.9' is blocked/)
})

t.test('smtp: 220 banner and EHLO → 250 (multi-line) pass; a 554 banner or a refused EHLO fails', async (t) => {
  const got: string[] = []
  const srv = await scripted(t, (s) => {
    s.write('220-mail.example ESMTP\r\n220 welcome\r\n')
    lines(s, (l) => {
      got.push(l)
      if (l.startsWith('EHLO')) s.write('250-mail.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n')
      if (l === 'QUIT') s.end('221 bye\r\n')
    })
  })
  t.same(await probe('smtp', { ehlo: 'checker.example' }, srv.port), { ok: true, detail: '220 banner, EHLO 250' })
  await srv.allClosed()
  t.same(got.slice(0, 2), ['EHLO checker.example', 'QUIT'])
  const busy = await scripted(t, (s) => s.end('554 no service\r\n'))
  t.same(await probe('smtp', { ehlo: 'x' }, busy.port), { ok: false, detail: 'expected a 220 banner, got "554 no service"' })
  const picky = await scripted(t, (s) => {
    s.write('220 hi\r\n')
    lines(s, () => s.write('421 too busy\r\n'))
  })
  t.same(await probe('smtp', { ehlo: 'x' }, picky.port), { ok: false, detail: 'EHLO answered "421 too busy"' })
})

t.test('imap: * OK passes; * BYE fails', async (t) => {
  const srv = await scripted(t, (s) => s.write('* OK [CAPABILITY IMAP4rev1] ready\r\n'))
  const ok = await probe('imap', null, srv.port)
  t.equal(ok.ok, true)
  const bye = await scripted(t, (s) => s.end('* BYE too many connections\r\n'))
  t.same(await probe('imap', null, bye.port), { ok: false, detail: 'expected "* OK", got "* BYE too many connections"' })
})

t.test('pop3: +OK passes; -ERR fails', async (t) => {
  const srv = await scripted(t, (s) => s.write('+OK POP3 ready\r\n'))
  t.same(await probe('pop3', null, srv.port), { ok: true, detail: '+OK' })
  const bad = await scripted(t, (s) => s.end('-ERR go away\r\n'))
  t.same(await probe('pop3', null, bad.port), { ok: false, detail: 'expected "+OK", got "-ERR go away"' })
})

t.test('http: the status is checked against expect_status', async (t) => {
  const requests: string[] = []
  const srv = await scripted(t, (s) => {
    lines(s, (l) => {
      if (l.startsWith('GET')) requests.push(l)
      if (l === '') s.end(requests.at(-1)?.includes('/ready') ? 'HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n' : 'HTTP/1.1 503 Service Unavailable\r\n\r\n')
    })
  })
  const ok = await probe('http', { path: '/ready', host: undefined, expect: [[200, 299]], expectText: '2xx' }, srv.port)
  t.same(ok, { ok: true, detail: 'status 200' })
  const bad = await probe('http', { path: '/', host: undefined, expect: [[200, 399]], expectText: '200-399' }, srv.port)
  t.same(bad, { ok: false, detail: 'status 503, expected 200-399' })
  t.same(requests, ['GET /ready HTTP/1.1', 'GET / HTTP/1.1'])
  t.same(await probe('http', { path: '/', host: undefined, expect: [[503, 503]], expectText: '503' }, srv.port), { ok: true, detail: 'status 503' })
  const notHttp = await scripted(t, (s) => s.end('SSH-2.0-OpenSSH\r\n'))
  t.same(await probe('http', { path: '/', host: undefined, expect: [[200, 399]], expectText: '200-399' }, notHttp.port), { ok: false, detail: 'expected an HTTP status line, got "SSH-2.0-OpenSSH"' })
})

t.test('dns over UDP: the rcode is checked; silence times out; nothing listening fails fast', async (t) => {
  const opts = { query: 'example.com', queryType: QUERY_TYPES.A, expectRcodes: [0], transport: 'udp' }
  t.same(await probe('dns', opts, await udpDns(t, 0)), { ok: true, detail: 'NOERROR' })
  t.same(await probe('dns', opts, await udpDns(t, 2)), { ok: false, detail: 'answered SERVFAIL, expected NOERROR' })
  t.same(await probe('dns', { ...opts, expectRcodes: [0, 3] }, await udpDns(t, 3)), { ok: true, detail: 'NXDOMAIN' })
  t.same(await probe('dns', opts, await udpDns(t, 0, (a) => a.writeUInt16BE((a.readUInt16BE(0) + 1) & 0xffff, 0)), 300), { ok: false, detail: 'timeout after 300ms waiting for the DNS answer' }, 'an answer with another id is ignored')
  t.same(await probe('dns', opts, await udpDns(t, null), 200), { ok: false, detail: 'timeout after 200ms waiting for the DNS answer' })
  const refused = await probe('dns', opts, await deadPort(), 2000)
  t.same(refused, { ok: false, detail: 'ECONNREFUSED (udp)' }, 'ICMP port unreachable ends the probe')
  t.equal(RCODES[5], 'REFUSED')
})

t.test('dns over TCP: a length-prefixed query and answer', async (t) => {
  const opts = { query: 'example.com.', queryType: QUERY_TYPES.SOA, expectRcodes: [0], transport: 'tcp' }
  let question = ''
  const srv = await scripted(t, (s) => s.on('data', (d: Buffer) => {
    const q = d.subarray(2)
    question = q.subarray(12, q.length - 4).toString('latin1')
    const a = dnsAnswer(q, question.includes('bad') ? 5 : 0)
    s.write(Buffer.concat([Buffer.from([a.length >> 8, a.length & 0xff]), a]))
  }))
  t.same(await probe('dns', opts, srv.port), { ok: true, detail: 'NOERROR' })
  t.equal(question, '\x07example\x03com\x00', 'the name went as labels')
  t.same(await probe('dns', { ...opts, query: 'bad.example' }, srv.port), { ok: false, detail: 'answered REFUSED, expected NOERROR' })
  await srv.allClosed()
})

t.test('tls: a handshake passes; plain TCP fails; verify checks the chain', async (t) => {
  const openssl = which('openssl')
  if (openssl === undefined) {
    t.skip('needs openssl to make a test certificate', () => {})
    return
  }
  const dir = mkdtempSync(join(tmpdir(), 'sluice-tls-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  execFileSync(openssl, ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2', '-subj', '/CN=localhost',
    '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')], { stdio: 'ignore' })
  const cert = readFileSync(join(dir, 'cert.pem'), 'utf8')
  const server = createTlsServer({ cert, key: readFileSync(join(dir, 'key.pem')) }, (s) => s.on('error', () => {}))
  server.on('tlsClientError', () => {})
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => server.close())
  const port = (server.address() as AddressInfo).port
  const base = { verify: false, servername: undefined, ca: undefined, caFile: undefined }
  const ok = await probe('tls', base, port)
  t.equal(ok.ok, true)
  t.match(ok.detail, /^TLSv1\.[23]$/)
  const untrusted = await probe('tls', { ...base, verify: true }, port)
  t.same(untrusted, { ok: false, detail: 'tls handshake: DEPTH_ZERO_SELF_SIGNED_CERT' })
  t.equal((await probe('tls', { ...base, verify: true, ca: cert }, port)).ok, true, 'trusted with its CA')
  const wrongName = await probe('tls', { ...base, verify: true, ca: cert, servername: 'other.example' }, port)
  t.same(wrongName, { ok: false, detail: 'tls handshake: ERR_TLS_CERT_ALTNAME_INVALID' })
  const plain = await scripted(t, (s) => s.end('220 not tls\r\n'))
  const r = await probe('tls', base, plain.port)
  t.equal(r.ok, false)
  t.match(r.detail, /^tls handshake: /)
})
