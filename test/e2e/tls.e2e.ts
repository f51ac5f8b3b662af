import t from 'tap'
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import { backend, dial, readUntil } from '../helpers/net.js'
import { runCli, startSluice, tempFile } from '../helpers/spawn.js'
import { skipWithout, which } from '../helpers/tools.js'
import { parseProxyHeader } from '../../src/proxy/proxy-protocol.js'
import { readTlvs } from '../../src/proxy/proxy-tlv.js'

const openssl = which('openssl')
const FIX = join(import.meta.dirname ?? new URL('.', import.meta.url).pathname, '../fixtures/tls')
const f = (name: string): string => join(FIX, name)

/** Runs `openssl s_client` with `input` on stdin; resolves with everything it printed. */
function sClient(args: string[], input: string, timeoutMs = 15_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(openssl!, ['s_client', ...args], { stdio: ['pipe', 'pipe', 'pipe'] })
    let out = ''
    child.stdout.on('data', (d: Buffer) => (out += d.toString()))
    child.stderr.on('data', (d: Buffer) => (out += d.toString()))
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`openssl s_client did not finish within ${timeoutMs}ms: ${out}`))
    }, timeoutMs)
    child.on('exit', () => {
      clearTimeout(timer)
      resolve(out)
    })
    // -ign_eof would wait for the server to close; give the echo time through the reply instead.
    child.stdin.write(input)
    child.stdout.on('data', (d: Buffer) => {
      if (d.toString().includes('echo:')) child.stdin.end()
    })
  })
}

t.test('openssl s_client through a terminating listener: verified chain, SNI certificate, data', async (t) => {
  if (skipWithout(t, { openssl })) return
  const echo = await backend(t, (s) => {
    s.on('data', (d: Buffer) => s.write(`echo:${d.toString()}`))
  })
  const sluice = startSluice(t, tempFile('tls-e2e.yaml', `
log: { level: info }
listeners:
  - name: imaps
    listen: 127.0.0.1:0
    pool: imap
    tls:
      cert: ${f('default.pem')}
      key: ${f('default.key')}
      certificates: [ { names: [a.example.test], cert: ${f('exact.pem')}, key: ${f('exact.key')} } ]
      min_version: TLSv1.2
pools:
  imap: { backends: ["${echo.address}"] }
`))
  const port = await sluice.port('imaps')
  const common = ['-connect', `127.0.0.1:${port}`, '-CAfile', f('ca.pem'), '-verify_return_error']
  const named = await sClient([...common, '-servername', 'a.example.test', '-verify_hostname', 'a.example.test'], 'hello\n')
  t.match(named, /subject=CN ?= ?a\.example\.test/, 'the SNI certificate was served')
  t.match(named, /Verify return code: 0 \(ok\)/)
  t.match(named, /echo:hello/, 'bytes went through decrypted and back')
  const plain = await sClient([...common, '-servername', 'default.sluice.test', '-tls1_2'], 'again\n')
  t.match(plain, /subject=CN ?= ?default\.sluice\.test/)
  t.match(plain, /Protocol *: TLSv1\.2/)
  const old = await sClient([...common, '-tls1_1'], '')
  t.notMatch(old, /echo:/, 'TLS 1.1 is refused by min_version')
  await sluice.waitFor((l) => l.access === true && l.close_reason === 'tls_handshake', 'the refused handshake in the access log')
  const s = await dial(port)
  s.write('not tls\r\n\r\n')
  await t.rejects(readUntil(s, 1), 'plain text on a TLS port is closed')
})

t.test('openssl s_client through a terminating listener: the PROXY v2 TLVs say what openssl negotiated', async (t) => {
  if (skipWithout(t, { openssl })) return
  // Reads the PROXY header, then answers the client's first bytes with the TLVs it got.
  const reader = await backend(t, (s) => {
    let buf = Buffer.alloc(0)
    let tlvs = ''
    s.on('data', (d: Buffer) => {
      if (tlvs !== '') {
        s.write(`echo:${tlvs}\n`)
        return
      }
      buf = Buffer.concat([buf, d])
      const r = parseProxyHeader(buf)
      if (r.kind === 'need-more') return
      if (r.kind === 'error') {
        s.end(`echo:${JSON.stringify({ error: r.message })}\n`)
        return
      }
      tlvs = JSON.stringify(readTlvs(r.header.tlvs))
      if (buf.length > r.length) s.write(`echo:${tlvs}\n`)
    })
  })
  const sluice = startSluice(t, tempFile('tls-tlv-e2e.yaml', `
log: { level: info }
listeners:
  - name: imaps
    listen: 127.0.0.1:0
    pool: imap
    tls: { cert: ${f('default.pem')}, key: ${f('default.key')}, alpn: [imap, pop3] }
pools:
  imap: { backends: ["${reader.address}"], proxy_protocol: v2 }
`))
  const port = await sluice.port('imaps')
  for (const version of ['-tls1_2', '-tls1_3']) {
    const out = await sClient(['-connect', `127.0.0.1:${port}`, '-CAfile', f('ca.pem'), '-verify_return_error', '-servername', 'default.sluice.test', '-alpn', 'imap', version], 'hello\n')
    const protocol = /Protocol *: (\S+)/.exec(out)?.[1]
    const cipher = /Cipher *: (\S+)/.exec(out)?.[1]
    const told = JSON.parse(/echo:(\{.*\})/.exec(out)?.[1] ?? '{}') as ReturnType<typeof readTlvs>
    t.equal(told.ssl?.version, protocol, `${version}: PP2_SUBTYPE_SSL_VERSION is the protocol openssl negotiated (${String(protocol)})`)
    t.equal(told.ssl?.cipher, cipher, `${version}: PP2_SUBTYPE_SSL_CIPHER is its cipher (${String(cipher)})`)
    t.equal(told.authority, 'default.sluice.test', `${version}: PP2_TYPE_AUTHORITY`)
    t.equal(told.alpn, 'imap', `${version}: PP2_TYPE_ALPN`)
    t.match(out, /ALPN protocol: imap/, `${version}: openssl agrees on the ALPN protocol`)
  }
})

t.test('an unreadable certificate at start-up is exit 1 with a one-line reason', async (t) => {
  const file = tempFile('tls-bad.yaml', `
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p, tls: { cert: /nonexistent/site.pem, key: /nonexistent/site.key } }]
pools:
  p: { backends: ["127.0.0.1:1"] }
`)
  const r = await runCli(['run', '--config', file])
  t.equal(r.code, 1)
  t.match(r.stderr, /tls-bad\.yaml:2:\d+: .*cannot read \/nonexistent\/site\.pem: no such file/)
})
