import t from 'tap'
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { connect as tlsConnect, createServer as createTlsServer, type ConnectionOptions, type TLSSocket } from 'node:tls'
import type { AddressInfo } from 'node:net'
import { closed, dial, eventually, namedBackend, readUntil } from '../helpers/net.js'
import { startDaemon } from '../helpers/daemon.js'
import { parseConfig } from '../../src/config/load.js'
import { ConfigError } from '../../src/errors.js'

const FIX = join(import.meta.dirname ?? new URL('.', import.meta.url).pathname, '../fixtures/tls')
const f = (name: string): string => join(FIX, name)
const CA = readFileSync(f('ca.pem'))

/** Connects over TLS to sluice; resolves once the handshake is done. */
function tlsDial(port: number, opts: ConnectionOptions = {}): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tlsConnect({ port, host: '127.0.0.1', ca: CA, servername: 'default.sluice.test', ...opts }, () => {
      s.off('error', reject)
      resolve(s)
    })
    s.once('error', reject)
  })
}

function cn(s: TLSSocket): string {
  return String(s.getPeerCertificate().subject?.CN ?? '')
}

const listener = (backendAddr: string, tls: string, extra = ''): string => `
listeners:
  - name: tls
    listen: 127.0.0.1:0
    pool: p
    tls: ${tls}
    ${extra}
pools:
  p: { backends: ["${backendAddr}"] }
`

t.test('termination: default, exact and wildcard certificates by SNI; bytes flow decrypted', async (t) => {
  const b = await namedBackend(t, 'plain-backend')
  const tls = `{ cert: ${f('default.pem')}, key: ${f('default.key')}, certificates: [ { names: [a.example.test], cert: ${f('exact.pem')}, key: ${f('exact.key')} }, { names: ["*.wild.example.test"], cert: ${f('wild.pem')}, key: ${f('wild.key')} } ] }`
  const d = await startDaemon(t, listener(b.address, tls))
  const port = d.port('tls')
  const def = await tlsDial(port)
  t.equal(cn(def), 'default.sluice.test')
  t.equal((await readUntil(def, 'line')).toString(), 'plain-backend\n', 'the backend speaks plain TCP')
  def.write('ping\n')
  t.equal((await readUntil(def, 'line')).toString(), 'ping\n')
  def.end()
  const exact = await tlsDial(port, { servername: 'A.Example.Test' })
  t.equal(cn(exact), 'a.example.test', 'exact name, case-insensitive')
  exact.destroy()
  const wild = await tlsDial(port, { servername: 'imap.wild.example.test' })
  t.equal(cn(wild), '*.wild.example.test')
  wild.destroy()
  const deep = await tlsDial(port, { servername: 'x.y.wild.example.test', rejectUnauthorized: false })
  t.equal(cn(deep), 'default.sluice.test', 'a wildcard covers one label, as in X.509')
  deep.destroy()
  const lines = await d.logs.waitForAccess(4)
  t.ok(lines.every((l) => l.close_reason !== 'tls_handshake'))
})

t.test('min_version, ALPN, and a failed handshake closes only that connection, counted', async (t) => {
  const b = await namedBackend(t, 'x')
  const d = await startDaemon(t, listener(b.address, `{ cert: ${f('default.pem')}, key: ${f('default.key')}, min_version: TLSv1.3, alpn: [imap] }`))
  const port = d.port('tls')
  await t.rejects(tlsDial(port, { maxVersion: 'TLSv1.2' }), 'a TLS 1.2 client is refused')
  const ok = await tlsDial(port, { ALPNProtocols: ['imap'] })
  t.equal(ok.alpnProtocol, 'imap')
  t.equal(ok.getProtocol(), 'TLSv1.3')
  t.equal((await readUntil(ok, 'line')).toString(), 'x\n', 'other connections are unaffected')
  ok.destroy()
  const line = await d.logs.waitFor((l) => l.access === true && l.close_reason === 'tls_handshake')
  t.equal(line.backend, null)
  t.match(await d.metrics(), /sluice_rejected_connections_total\{listener="tls",reason="tls_handshake"\} 1/)
  t.ok(d.logs.lines.some((l) => l.code === 'SLUICE_ERR_TLS_HANDSHAKE'))
})

t.test('handshake timeout: a silent client is closed and counted', async (t) => {
  const b = await namedBackend(t, 'x')
  const d = await startDaemon(t, listener(b.address, `{ cert: ${f('default.pem')}, key: ${f('default.key')} }`, 'timeouts: { handshake: 200ms }'))
  const s = await dial(d.port('tls'))
  await closed(s)
  await d.logs.waitFor((l) => l.access === true && l.close_reason === 'handshake_timeout')
  t.match(await d.metrics(), /reason="handshake_timeout"\} 1/)
  t.equal(b.sockets.size, 0, 'no backend connection was made')
})

t.test('mTLS: a client certificate from client_ca is required', async (t) => {
  const b = await namedBackend(t, 'secret')
  const d = await startDaemon(t, listener(b.address, `{ cert: ${f('default.pem')}, key: ${f('default.key')}, client_ca: ${f('ca.pem')} }`))
  const port = d.port('tls')
  const good = await tlsDial(port, { cert: readFileSync(f('client.pem')), key: readFileSync(f('client.key')) })
  t.equal((await readUntil(good, 'line')).toString(), 'secret\n')
  good.destroy()
  for (const [what, opts] of [
    ['no certificate', {}],
    ['a certificate from another CA', { cert: readFileSync(f('stranger.pem')), key: readFileSync(f('stranger.key')) }],
  ] as const) {
    // With TLS 1.3 the client's handshake ends before the server has judged its certificate,
    // so the refusal shows as the connection closing without a byte from the backend.
    const s = await tlsDial(port, opts).catch(() => undefined)
    if (s !== undefined) {
      s.on('error', () => {})
      await t.rejects(readUntil(s, 'line'), what)
    } else t.pass(what)
  }
  await eventually(() => d.logs.lines.filter((l) => l.access === true && l.close_reason === 'tls_handshake').length === 2, 'two refusals')
  t.ok(d.logs.lines.some((l) => l.code === 'SLUICE_ERR_TLS_HANDSHAKE' && /client certificate rejected/.test(String(l.msg))))
})

t.test('certificates reload when their files change, and on reload; a bad file keeps the old one', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-tls-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const cert = join(dir, 'site.pem')
  const key = join(dir, 'site.key')
  copyFileSync(f('default.pem'), cert)
  copyFileSync(f('default.key'), key)
  const b = await namedBackend(t, 'x')
  const yaml = listener(b.address, `{ cert: ${cert}, key: ${key}, watch_interval: 100ms }`)
  const d = await startDaemon(t, yaml)
  const port = d.port('tls')
  const open = await tlsDial(port)
  await readUntil(open, 'line')
  t.equal(cn(open), 'default.sluice.test')

  writeFileSync(cert, 'garbage, not PEM\n')
  await d.logs.waitFor((l) => l.code === 'SLUICE_ERR_TLS_CERT')
  const still = await tlsDial(port)
  t.equal(cn(still), 'default.sluice.test', 'a bad new file keeps the loaded certificate serving')
  still.destroy()

  copyFileSync(f('renewed.key'), key)
  copyFileSync(f('renewed.pem'), cert)
  await eventually(async () => {
    const s = await tlsDial(port, { servername: 'renewed.sluice.test' }).catch(() => undefined)
    const name = s === undefined ? '' : cn(s)
    s?.destroy()
    return name === 'renewed.sluice.test'
  }, 'the renewed certificate served')
  open.write('still here\n')
  t.equal((await readUntil(open, 'line')).toString(), 'still here\n', 'the open connection was not dropped')
  open.destroy()

  // SIGHUP path: the daemon re-reads the files at reload.
  copyFileSync(f('default.key'), key)
  copyFileSync(f('default.pem'), cert)
  await d.daemon.reload(parseConfig(yaml.replace('watch_interval: 100ms', 'watch_interval: off'), 'test.yaml', {}))
  const after = await tlsDial(port)
  t.equal(cn(after), 'default.sluice.test', 'reload loaded the files again')
  after.destroy()
})

t.test('TLS to backends: verified with ca and servername; refused when not trusted; verify: false', async (t) => {
  const open = new Set<TLSSocket>()
  const server = createTlsServer({ cert: readFileSync(f('backend.pem')), key: readFileSync(f('backend.key')) }, (s) => {
    open.add(s)
    s.on('error', () => {})
    s.write(`tls-backend ${s.servername || '-'}\n`)
    s.pipe(s)
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  t.teardown(() => {
    server.close()
    for (const s of open) s.destroy()
  })
  const port = (server.address() as AddressInfo).port
  const yaml = (tls: string): string => `
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p: { backends: ["127.0.0.1:${port}"], retries: 0, tls: ${tls} }
`
  const good = await startDaemon(t, yaml(`{ ca: ${f('ca.pem')}, servername: backend.sluice.test }`))
  const s = await dial(good.port('l'))
  t.equal((await readUntil(s, 'line')).toString(), 'tls-backend backend.sluice.test\n')
  s.write('hello\n')
  t.equal((await readUntil(s, 'line')).toString(), 'hello\n')
  s.destroy()

  const byIp = await startDaemon(t, yaml(`{ ca: ${f('ca.pem')} }`))
  const s2 = await dial(byIp.port('l'))
  t.equal((await readUntil(s2, 'line')).toString(), 'tls-backend -\n', 'an IP backend is verified against its IP SAN, without SNI')
  s2.destroy()

  const untrusted = await startDaemon(t, yaml('{ servername: backend.sluice.test }'))
  const s3 = await dial(untrusted.port('l'))
  s3.on('error', () => {})
  await closed(s3)
  const warn = await untrusted.logs.waitFor((l) => l.code === 'SLUICE_ERR_BACKEND_TLS')
  t.match(String(warn.msg), /certificate/)
  t.match(await untrusted.metrics(), /sluice_connect_errors_total\{[^}]*reason="tls"\} 1/)

  const noVerify = await startDaemon(t, yaml('{ verify: false }'))
  const s4 = await dial(noVerify.port('l'))
  t.match((await readUntil(s4, 'line')).toString(), /^tls-backend/)
  s4.destroy()
})

t.test('configuration: unreadable or mismatched files are located errors', async (t) => {
  const bad = (tls: string): ConfigError => {
    try {
      parseConfig(listener('127.0.0.1:1', tls), 'x.yaml', {})
    } catch (err) {
      if (err instanceof ConfigError) return err
      throw err
    }
    throw new Error('no error')
  }
  t.match(bad('{ cert: /nonexistent.pem, key: /nonexistent.key }').format(), /^x\.yaml:6:\d+: .*cannot read \/nonexistent\.pem: no such file/)
  t.match(bad(`{ cert: ${f('default.pem')}, key: ${f('exact.key')} }`).format(), /key values mismatch|key/)
  t.match(bad(`{ cert: ${f('default.pem')}, key: ${f('default.key')}, min_version: TLSv1.0 }`).format(), /min_version "TLSv1\.0" is not one of TLSv1\.2, TLSv1\.3/)
  t.match(bad(`{ cert: ${f('default.pem')}, key: ${f('default.key')}, ciphers: NOPE-NOTHING }`).format(), /ciphers/)
  t.match(bad(`{ cert: ${f('default.pem')}, key: ${f('default.key')}, certificates: [{ names: ["bad name"], cert: ${f('exact.pem')}, key: ${f('exact.key')} }] }`).format(), /not a host name/)
  t.match(bad(`{ cert: ${f('default.pem')}, key: ${f('default.key')} }\n    sni_passthrough: true`).format(), /choose one/)
})
