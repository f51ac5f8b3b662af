import t from 'tap'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { connect, type AddressInfo, type Socket } from 'node:net'
import { connect as tlsConnect, createServer as createTlsServer, type TLSSocket } from 'node:tls'
import type { Test } from 'tap'
import { closed, eventually, namedBackend, readUntil } from '../helpers/net.js'
import { startDaemon } from '../helpers/daemon.js'
import { parseConfig } from '../../src/config/load.js'

const FIX = join(import.meta.dirname ?? new URL('.', import.meta.url).pathname, '../fixtures/tls')
const f = (name: string): string => join(FIX, name)
const CA = readFileSync(f('ca.pem'))

/** A TLS backend with certificate `pair` that greets with `name` after the handshake. */
async function tlsBackend(t: Test, name: string, pair: string): Promise<string> {
  const open = new Set<TLSSocket>()
  const server = createTlsServer({ cert: readFileSync(f(`${pair}.pem`)), key: readFileSync(f(`${pair}.key`)) }, (s) => {
    open.add(s)
    s.on('error', () => {})
    s.write(`${name}\n`)
    s.pipe(s)
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  t.teardown(() => {
    server.close()
    for (const s of open) s.destroy()
  })
  return `127.0.0.1:${(server.address() as AddressInfo).port}`
}

/** TLS end to end through sluice (which only peeks); resolves with the certificate CN and the greeting. */
async function through(port: number, servername: string): Promise<{ cn: string; greeting: string }> {
  const s = await new Promise<TLSSocket>((resolve, reject) => {
    const c = tlsConnect({ port, host: '127.0.0.1', ca: CA, servername }, () => resolve(c))
    c.once('error', reject)
  })
  const cn = String(s.getPeerCertificate().subject?.CN ?? '')
  const greeting = (await readUntil(s, 'line')).toString().trim()
  s.destroy()
  return { cn, greeting }
}

function dialFrom(port: number, localAddress: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host: '127.0.0.1', localAddress }, () => resolve(s))
    s.once('error', reject)
  })
}

t.test('sni_passthrough: routes by the ClientHello, replays it untouched, TLS ends at the backend', async (t) => {
  const exact = await tlsBackend(t, 'exact-backend', 'exact')
  const wild = await tlsBackend(t, 'wild-backend', 'wild')
  const def = await tlsBackend(t, 'default-backend', 'default')
  const d = await startDaemon(t, `
listeners:
  - name: sni
    listen: 127.0.0.1:0
    pool: def
    sni_passthrough: true
    routes:
      - { sni: a.example.test, pool: exact }
      - { sni: "*.wild.example.test", pool: wild }
pools:
  exact: { backends: ["${exact}"] }
  wild: { backends: ["${wild}"] }
  def: { backends: ["${def}"] }
`)
  const port = d.port('sni')
  t.same(await through(port, 'a.example.test'), { cn: 'a.example.test', greeting: 'exact-backend' })
  t.same(await through(port, 'IMAP.wild.example.test'), { cn: '*.wild.example.test', greeting: 'wild-backend' })
  t.same(await through(port, 'default.sluice.test'), { cn: 'default.sluice.test', greeting: 'default-backend' })
  const lines = await d.logs.waitForAccess(3)
  t.same(lines.map((l) => l.pool).sort(), ['def', 'exact', 'wild'])
})

t.test('a non-TLS first packet closes that connection, counted; a silent client goes to the default pool', async (t) => {
  const smtp = await namedBackend(t, '220 mail.example.test ESMTP')
  const d = await startDaemon(t, `
listeners:
  - { name: sni, listen: 127.0.0.1:0, pool: mail, sni_passthrough: true, sni_peek_timeout: 100ms, routes: [ { sni: x.test, pool: other } ] }
pools:
  mail: { backends: ["${smtp.address}"] }
  other: { backends: ["127.0.0.1:1"] }
`)
  const port = d.port('sni')
  const http = connect({ port, host: '127.0.0.1' })
  http.on('error', () => {})
  http.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n')
  await closed(http)
  await d.logs.waitFor((l) => l.access === true && l.close_reason === 'bad_client_hello')
  t.match(await d.metrics(), /sluice_rejected_connections_total\{listener="sni",reason="bad_client_hello"\} 1/)
  t.ok(d.logs.lines.some((l) => l.code === 'SLUICE_ERR_CLIENT_HELLO'))

  // SMTP: the server speaks first. The client waits; sluice must not wait forever for a ClientHello.
  const client = connect({ port, host: '127.0.0.1' })
  t.equal((await readUntil(client, 'line')).toString(), '220 mail.example.test ESMTP\n')
  client.write('EHLO me\r\n')
  t.equal((await readUntil(client, 'line')).toString(), 'EHLO me\r\n', 'then bytes flow both ways')
  client.destroy()
})

t.test('hash_key: sni sends one server name to one backend', async (t) => {
  const bs = await Promise.all(['b1', 'b2', 'b3'].map((n) => tlsBackend(t, n, 'default')))
  const d = await startDaemon(t, `
listeners: [{ name: sni, listen: 127.0.0.1:0, pool: p, sni_passthrough: true }]
pools:
  p: { algorithm: consistent-hash, hash_key: sni, backends: [${bs.map((b) => `"${b}"`).join(', ')}] }
`)
  const port = d.port('sni')
  const seen = new Map<string, Set<string>>()
  for (const name of ['one.test', 'two.test', 'three.test', 'four.test']) {
    for (let i = 0; i < 3; i++) {
      const g = (await through(port, name).catch(() => ({ greeting: 'error', cn: '' }))).greeting
      seen.set(name, (seen.get(name) ?? new Set()).add(g))
    }
  }
  for (const [name, backends] of seen) t.equal(backends.size, 1, `${name} always went to ${[...backends].join(',')}`)
})

t.test('source routes on a plain TCP listener', async (t) => {
  const a = await namedBackend(t, 'from-dot-two')
  const b = await namedBackend(t, 'everyone-else')
  const d = await startDaemon(t, `
listeners:
  - { name: geo, listen: 127.0.0.1:0, pool: rest, routes: [ { source: 127.0.0.2/32, pool: two } ] }
pools:
  two: { backends: ["${a.address}"] }
  rest: { backends: ["${b.address}"] }
`)
  const port = d.port('geo')
  const s2 = await dialFrom(port, '127.0.0.2')
  t.equal((await readUntil(s2, 'line')).toString(), 'from-dot-two\n')
  s2.destroy()
  const s1 = await dialFrom(port, '127.0.0.1')
  t.equal((await readUntil(s1, 'line')).toString(), 'everyone-else\n')
  s1.destroy()
  await eventually(() => d.logs.access.length === 2, 'two access lines')
})

t.test('route configuration is checked', async (t) => {
  const problems = (listener: string): string => {
    try {
      parseConfig(`listeners:\n  - ${listener}\npools:\n  p: { backends: ["127.0.0.1:1"] }\n`, 'r.yaml', {})
      return ''
    } catch (err) {
      return err instanceof Error && 'format' in err && typeof err.format === 'function' ? String(err.format()) : String(err)
    }
  }
  t.match(problems('{ name: l, listen: ":0", pool: p, routes: [ { sni: a.test, pool: p } ] }'), /matches on sni, but listener "l" neither terminates TLS/)
  t.match(problems('{ name: l, listen: ":0", pool: p, sni_passthrough: true, routes: [ { sni: "bad name", pool: p } ] }'), /must be a host name/)
  t.match(problems('{ name: l, listen: ":0", pool: p, routes: [ { source: 10.0.0.0/33, pool: p } ] }'), /^r\.yaml:2:\d+: .*prefix length/)
  t.match(problems('{ name: l, listen: ":0", pool: p, routes: [ { source: 10.0.0.0/8, pool: q } ] }'), /pool "q", which is not defined/)
  t.match(problems('{ name: l, listen: ":0", pool: p, routes: [ { pool: p } ] }'), /neither sni nor source/)
  t.match(problems('{ name: l, listen: ":0", pool: p, sni_peek_timeout: 1s }'), /only applies with sni_passthrough/)
  t.equal(problems('{ name: l, listen: ":0", pool: p, sni_passthrough: true, sni_peek_timeout: 250ms, routes: [ { sni: "*.a.test", source: "::1", pool: p } ] }'), '')
})
