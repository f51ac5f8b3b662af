import t from 'tap'
import { spawn } from 'node:child_process'
import { chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { userInfo, tmpdir } from 'node:os'
import { join } from 'node:path'
import { connect, type Socket } from 'node:net'
import type { Test } from 'tap'
import { backend, deadPort, dial, eventually, readUntil } from '../helpers/net.js'
import { startSluice, tempFile } from '../helpers/spawn.js'
import { skipWithout, which } from '../helpers/tools.js'
import { parseProxyHeader } from '../../src/proxy/proxy-protocol.js'

const haproxy = which('haproxy', ['/usr/sbin'])
const dovecot = which('dovecot', ['/usr/sbin'])

/** Connects from `localAddress` (another loopback address, so the source is recognisable). */
function dialFrom(port: number, localAddress: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host: '127.0.0.1', localAddress }, () => resolve(s))
    s.once('error', reject)
  })
}

/** A backend that answers with the source address of the PROXY header it gets. */
async function sourceReporter(t: Test): Promise<string> {
  const b = await backend(t, (s) => {
    let buf = Buffer.alloc(0)
    s.on('data', (c: Buffer) => {
      buf = Buffer.concat([buf, c])
      const r = parseProxyHeader(buf)
      if (r.kind === 'need-more') return
      s.end(r.kind === 'ok' ? `source ${r.header.addresses?.sourceAddress} v${r.header.version}\n` : `bad ${r.message}\n`)
    })
  })
  return b.address
}

/** Starts a foreground server process; stopped with SIGTERM (then SIGKILL) by `stop` or at teardown. */
function server(t: Test, cmd: string, args: string[]): { output: () => string; stop: () => Promise<void> } {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  child.stdout.on('data', (d: Buffer) => (out += d.toString()))
  child.stderr.on('data', (d: Buffer) => (out += d.toString()))
  const stop = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return
    const gone = new Promise((r) => child.once('exit', r))
    child.kill('SIGTERM')
    const timer = setTimeout(() => child.kill('SIGKILL'), 3000)
    await gone
    clearTimeout(timer)
  }
  t.teardown(stop)
  return { output: () => out, stop }
}

async function listening(port: number, what: string): Promise<void> {
  await eventually(
    () =>
      new Promise<boolean>((resolve) => {
        const s = connect({ port, host: '127.0.0.1' }, () => {
          s.destroy()
          resolve(true)
        })
        s.on('error', () => resolve(false))
      }),
    what,
  )
}

t.test('HAProxy both ways: send-proxy-v2 in front of sluice, and sluice sending v2 to accept-proxy', async (t) => {
  if (skipWithout(t, { haproxy })) return
  const reporter = await sourceReporter(t)
  const [front, accept] = [await deadPort(), await deadPort()]
  const sluice = startSluice(t, tempFile('pp-e2e.yaml', `
log: { level: info }
listeners:
  - { name: behind, listen: 127.0.0.1:0, pool: report, proxy_protocol_accept: true, proxy_protocol_trusted: [127.0.0.1/32] }
  - { name: before, listen: 127.0.0.1:0, pool: haproxy }
pools:
  report: { backends: ["${reporter}"], proxy_protocol: v1 }
  haproxy: { backends: ["127.0.0.1:${accept}"], proxy_protocol: v2 }
`))
  const behind = await sluice.port('behind')
  const before = await sluice.port('before')
  const cfg = tempFile('haproxy.cfg', `
defaults
  mode tcp
  timeout connect 2s
  timeout client 10s
  timeout server 10s
frontend in_front_of_sluice
  bind 127.0.0.1:${front}
  default_backend sluice
backend sluice
  server s 127.0.0.1:${behind} send-proxy-v2
frontend behind_sluice
  bind 127.0.0.1:${accept} accept-proxy
  default_backend report
backend report
  server r ${reporter} send-proxy
`)
  server(t, haproxy!, ['-db', '-f', cfg])
  await listening(front, 'haproxy')

  const a = await dialFrom(front, '127.0.0.3')
  t.equal((await readUntil(a, 'line')).toString(), 'source 127.0.0.3 v1\n', 'sluice took the client address from HAProxy\'s v2 header')
  a.destroy()
  await sluice.waitFor((l) => l.access === true && l.listener === 'behind' && String(l.client).startsWith('127.0.0.3:'), 'access log with the real client')

  const b = await dialFrom(before, '127.0.0.4')
  t.equal((await readUntil(b, 'line')).toString(), 'source 127.0.0.4 v1\n', 'HAProxy read sluice\'s v2 header and passed the address on')
  b.destroy()
})

t.test('HAProxy\'s own checks (check-send-proxy v1 and v2, plain L4) are not warned about, counted as refusals or leaked', async (t) => {
  if (skipWithout(t, { haproxy })) return
  let backendConnections = 0
  const be = await backend(t, (s) => {
    backendConnections++
    s.write('* OK ready\r\n')
    s.pipe(s)
  })
  const front = await deadPort()
  const sluice = startSluice(t, tempFile('pp-checks.yaml', `
log: { level: info }
admin: { listen: "127.0.0.1:0" }
listeners:
  - { name: behind, listen: 127.0.0.1:0, pool: p, proxy_protocol_accept: true, proxy_protocol_trusted: [127.0.0.1/32] }
pools:
  p: { backends: ["${be.address}"] }
`))
  const behind = await sluice.port('behind')
  const started = await sluice.waitFor((l) => l.msg === 'sluice started', 'start-up')
  const admin = `http://${String(started.admin)}`
  const cfg = tempFile('haproxy-checks.cfg', `
defaults
  mode tcp
  timeout connect 2s
  timeout client 10s
  timeout server 10s
  timeout check 2s
frontend in_front_of_sluice
  bind 127.0.0.1:${front}
  default_backend sluice
backend sluice
  option tcp-check
  server v2 127.0.0.1:${behind} send-proxy-v2 check check-send-proxy inter 100 rise 1 fall 1
  server v1 127.0.0.1:${behind} send-proxy check check-send-proxy inter 100 rise 1 fall 1
  server l4 127.0.0.1:${behind} check inter 100 rise 1 fall 1
`)
  const hap = server(t, haproxy!, ['-db', '-f', cfg])
  await listening(front, 'haproxy')
  // A few seconds of checks from the three servers (ten a second each).
  await eventually(() => sluice.lines.filter((l) => l.access === true).length >= 60, `60 checks to reach sluice: ${hap.output()}`, 20_000)
  // And a real client through it all the while.
  const c = await dial(front)
  t.equal((await readUntil(c, 'line')).toString(), '* OK ready\r\n', 'a client still goes through')
  c.destroy()
  await hap.stop()

  const status = async (): Promise<{ active: number; backendActive: number }> => {
    const s = (await (await fetch(`${admin}/api/status`)).json()) as { totals: { active_connections: number }; pools: { totals: { active_connections: number } }[] }
    return { active: s.totals.active_connections, backendActive: s.pools.reduce((n, p) => n + p.totals.active_connections, 0) }
  }
  await eventually(async () => {
    const s = await status()
    return s.active === 0 && s.backendActive === 0 && be.sockets.size === 0
  }, 'every session and backend connection to end once HAProxy stopped')
  t.same(await status(), { active: 0, backendActive: 0 }, 'no session left open in sluice')
  t.equal(be.sockets.size, 0, 'the backend holds no connection')
  t.ok(backendConnections > 0, 'LOCAL/UNKNOWN checks were proxied to the backend')

  const access = sluice.lines.filter((l) => l.access === true)
  const reasons = new Set(access.map((l) => String(l.close_reason)))
  // HAProxy's v2 checks send LOCAL: peer_check, even when the reset beat the accept. Its v1
  // checks name their own connection, which only an accepted connection can be compared with:
  // over loopback most are reset first and end as client_aborted, client "unknown".
  t.ok(access.filter((l) => l.close_reason === 'peer_check').length >= 10, `the LOCAL checks are logged as peer_check (${[...reasons].join(', ')})`)
  t.same([...reasons].filter((r) => !['peer_check', 'client_aborted', 'client_closed', 'client_error'].includes(r)), [], 'no check ended as a refusal')
  t.notOk(access.some((l) => typeof l.client !== 'string' || l.client === '' || l.client.startsWith(':')), 'every access line names a client address or "unknown"')
  // Not the start-up line about the open-files limit (the machine's, not the checks').
  const warnings = sluice.lines.filter((l) => (l.level === 'warn' || l.level === 'error') && l.open_files_limit === undefined)
  t.same(warnings, [], 'not one warning for the checks')
  const metrics = await (await fetch(`${admin}/metrics`)).text()
  t.notMatch(metrics, /sluice_rejected_connections_total\{[^}]*reason="(proxy_untrusted|bad_proxy_header|handshake_timeout)"\} [1-9]/, 'no proxy_untrusted, bad_proxy_header or handshake_timeout counted')
})

t.test('dovecot with haproxy_trusted_networks logs the true client address', async (t) => {
  if (skipWithout(t, { dovecot })) return
  if (userInfo().uid !== 0) {
    t.skip('dovecot needs to start as root (it drops to its own users)', () => {})
    return
  }
  const dir = mkdtempSync(join(tmpdir(), 'sluice-dovecot-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  for (const d of ['run', 'state', 'mail']) mkdirSync(join(dir, d))
  const port = await deadPort()
  const log = join(dir, 'dovecot.log')
  writeFileSync(join(dir, 'dovecot.conf'), `
base_dir = ${dir}/run
state_dir = ${dir}/state
log_path = ${log}
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
haproxy_trusted_networks = 127.0.0.0/8
mail_location = maildir:${dir}/mail/%u
passdb {
  driver = static
  args = password=secret
}
userdb {
  driver = static
  args = uid=dovecot gid=dovecot home=${dir}/mail/%u
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
  try {
    chownSync(join(dir, 'mail'), Number(readFileSync('/etc/passwd', 'utf8').match(/^dovecot:x:(\d+):/m)?.[1] ?? 0), 0)
  } catch {
    // Without a dovecot user the login below fails and says so.
  }
  const dv = server(t, dovecot!, ['-F', '-c', join(dir, 'dovecot.conf')])
  await listening(port, `dovecot: ${dv.output()}`)
  const sluice = startSluice(t, tempFile('dovecot-e2e.yaml', `
listeners: [{ name: imap, listen: 127.0.0.1:0, pool: imap }]
pools:
  imap: { backends: ["127.0.0.1:${port}"], proxy_protocol: v2 }
`))
  const imap = await dialFrom(await sluice.port('imap'), '127.0.0.5')
  let text = ''
  imap.on('data', (d: Buffer) => (text += d.toString()))
  await eventually(() => /\* OK .*ready/i.test(text), 'the IMAP greeting')
  imap.write('a1 LOGIN bob secret\r\n')
  await eventually(() => /a1 (OK|NO)/.test(text), 'the LOGIN reply')
  imap.write('a2 LOGOUT\r\n')
  await eventually(() => existsSync(log) && /rip=127\.0\.0\.5/.test(readFileSync(log, 'utf8')), 'dovecot logging rip=127.0.0.5')
  t.match(readFileSync(log, 'utf8'), /imap-login: .*rip=127\.0\.0\.5, lip=127\.0\.0\.1/, 'dovecot saw the client, not sluice')
  imap.destroy()
})
