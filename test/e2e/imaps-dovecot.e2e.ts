import t from 'tap'
import { spawn } from 'node:child_process'
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir, userInfo } from 'node:os'
import { join } from 'node:path'
import { connect } from 'node:net'
import type { Test } from 'tap'
import { deadPort, eventually } from '../helpers/net.js'
import { startSluice, tempFile } from '../helpers/spawn.js'
import { run, skipWithout, which } from '../helpers/tools.js'

/*
 * IMAPS with TLS ended in sluice, in front of dovecot left at its default
 * `disable_plaintext_auth = yes`: dovecot only allows LOGIN over TLS, and learns that the
 * client used TLS from the PP2_TYPE_SSL TLV of sluice's PROXY v2 header.
 */

const dovecot = which('dovecot', ['/usr/sbin'])
const openssl = which('openssl')
const FIX = join(import.meta.dirname ?? new URL('.', import.meta.url).pathname, '../fixtures/tls')

/** Starts a foreground server process; stopped with SIGTERM (then SIGKILL) at teardown. */
function server(t: Test, cmd: string, args: string[]): { output: () => string } {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  child.stdout.on('data', (d: Buffer) => (out += d.toString()))
  child.stderr.on('data', (d: Buffer) => (out += d.toString()))
  t.teardown(async () => {
    if (child.exitCode !== null) return
    const gone = new Promise((r) => child.once('exit', r))
    child.kill('SIGTERM')
    const timer = setTimeout(() => child.kill('SIGKILL'), 3000)
    await gone
    clearTimeout(timer)
  })
  return { output: () => out }
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ port, host: '127.0.0.1' }, () => {
      s.destroy()
      resolve(true)
    })
    s.on('error', () => resolve(false))
  })
}

/**
 * An IMAP session through `openssl s_client` from 127.0.0.5 (so dovecot cannot take it for a
 * local, trusted connection): LOGIN once the greeting is in, LOGOUT once LOGIN is answered.
 * Resolves with everything the server sent when s_client exits.
 */
function imapsSession(port: number, user: string, password: string, timeoutMs = 20_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const args = ['s_client', '-connect', `127.0.0.1:${port}`, '-bind', '127.0.0.5:0', '-servername', 'default.sluice.test', '-alpn', 'imap', '-CAfile', join(FIX, 'ca.pem'), '-verify_return_error', '-quiet', '-crlf']
    const child = spawn(openssl!, args, { stdio: ['pipe', 'pipe', 'pipe'] })
    let out = ''
    let step = 0
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString()
      if (step === 0 && /^\* OK/m.test(out)) {
        step = 1
        child.stdin.write(`a1 LOGIN ${user} ${password}\n`)
      } else if (step === 1 && /^a1 (OK|NO|BAD)/m.test(out)) {
        step = 2
        child.stdin.write('a2 LOGOUT\n')
      }
    })
    let err = ''
    child.stderr.on('data', (d: Buffer) => (err += d.toString()))
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`the IMAPS session did not finish within ${timeoutMs}ms; server said: ${out}; openssl: ${err}`))
    }, timeoutMs)
    child.on('exit', () => {
      clearTimeout(timer)
      resolve(out)
    })
  })
}

t.test('dovecot with its default disable_plaintext_auth accepts LOGIN over sluice\'s IMAPS', async (t) => {
  if (skipWithout(t, { 'dovecot (Debian package dovecot-imapd)': dovecot, openssl })) return
  if (userInfo().uid !== 0) {
    t.skip('needs root: dovecot starts as root and drops to its own users', () => {})
    return
  }
  try {
    run('id', ['-u', 'dovecot'])
  } catch {
    t.skip('needs the dovecot system user (Debian package dovecot-core creates it)', () => {})
    return
  }
  const dir = mkdtempSync(join(tmpdir(), 'sluice-imaps-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  // dovecot's auth process runs as the dovecot user, the mail process as nobody: they must
  // reach these files.
  chmodSync(dir, 0o755)
  for (const d of ['run', 'state']) mkdirSync(join(dir, d))
  mkdirSync(join(dir, 'mail'), { mode: 0o777 })
  chmodSync(join(dir, 'mail'), 0o777)
  const users = join(dir, 'users')
  writeFileSync(users, 'bob:{PLAIN}secret::::::\n', { mode: 0o644 })
  const port = await deadPort()
  const log = join(dir, 'dovecot.log')
  // Nothing about plaintext authentication is set: dovecot's default is to refuse it
  // unless the connection is TLS (or comes from the host itself).
  writeFileSync(join(dir, 'dovecot.conf'), `
base_dir = ${dir}/run
state_dir = ${dir}/state
log_path = ${log}
protocols = imap
listen = 127.0.0.1
ssl = no
haproxy_trusted_networks = 127.0.0.0/8
mail_location = maildir:${dir}/mail/%u
passdb {
  driver = passwd-file
  args = ${users}
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=${dir}/mail/%u
}
service imap-login {
  chroot =
  inet_listener imap {
    port = ${port}
    haproxy = yes
  }
  inet_listener imaps {
    port = 0
  }
}
service anvil {
  chroot =
}
`)
  const dv = server(t, dovecot!, ['-F', '-c', join(dir, 'dovecot.conf')])
  await eventually(() => accepts(port), `dovecot to listen: ${dv.output()}`, 20_000)
  const sluice = startSluice(t, tempFile('imaps-dovecot.yaml', `
log: { level: info }
listeners:
  - name: imaps
    listen: 127.0.0.1:0
    pool: imap
    tls: { cert: ${join(FIX, 'default.pem')}, key: ${join(FIX, 'default.key')}, alpn: [imap] }
pools:
  imap: { backends: ["127.0.0.1:${port}"], proxy_protocol: v2 }
`))
  const imaps = await sluice.port('imaps')
  const reply = await imapsSession(imaps, 'bob', 'secret')
  t.notMatch(reply, /LOGINDISABLED/, 'the greeting offers LOGIN: dovecot knows the client is on TLS')
  t.notMatch(reply, /PRIVACYREQUIRED/, 'no "Plaintext authentication disallowed"')
  t.match(reply, /^a1 OK/m, 'LOGIN succeeded')
  t.match(reply, /^a2 OK/m, 'LOGOUT answered')
  await eventually(() => existsSync(log) && /Login: user=<bob>/.test(readFileSync(log, 'utf8')), 'dovecot logging the login')
  const lines = readFileSync(log, 'utf8')
  t.match(lines, /imap-login: Info: Login: user=<bob>, method=PLAIN, rip=127\.0\.0\.5, lip=127\.0\.0\.1, .*\bsecured\b/, 'dovecot saw the real client, and a secured connection')
  t.notMatch(lines, /imap\(bob\).*Error/, 'the session itself went well')
  const access = await sluice.waitFor((l) => l.access === true && l.listener === 'imaps', 'the access line')
  t.match(String(access.client), /^127\.0\.0\.5:\d+$/)
})
