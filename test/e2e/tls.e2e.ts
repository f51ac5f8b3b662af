import t from 'tap'
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import { backend, dial, readUntil } from '../helpers/net.js'
import { runCli, startSluice, tempFile } from '../helpers/spawn.js'
import { skipWithout, which } from '../helpers/tools.js'

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
