import t, { type Test } from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startDaemon } from '../helpers/daemon.js'
import { deadPort, eventually } from '../helpers/net.js'
import { skipWithout, which } from '../helpers/tools.js'
import { postgresCluster } from '../helpers/servers.js'

/**
 * Each health-check type against the real server it speaks to: the check marks the backend
 * up, then down when the server is stopped, then up again when it is started once more.
 */

const redisServer = which('redis-server')
const smtpd = which('smtpd', ['/usr/sbin'])
const dovecot = which('dovecot', ['/usr/sbin'])
const dnsmasq = which('dnsmasq', ['/usr/sbin'])
const isRoot = process.getuid?.() === 0

/** A server process that can be stopped and started again on the same port. */
interface Server {
  start(): Promise<void>
  stop(): Promise<void>
}

/** Runs `cmd args` as a server: start waits until every port accepts TCP, stop sends SIGTERM and waits until none does. */
function processServer(t: Test, ports: number[], cmd: string, args: string[]): Server {
  let child: ChildProcess | undefined
  let stderr = ''
  const server: Server = {
    async start() {
      stderr = ''
      const c = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] })
      c.stderr?.on('data', (d: Buffer) => (stderr += d.toString()))
      child = c
      await eventually(async () => {
        if (c.exitCode !== null) throw new Error(`${cmd} exited ${c.exitCode}: ${stderr}`)
        return (await Promise.all(ports.map(accepts))).every(Boolean)
      }, `${cmd} to accept on ${ports.join(', ')}`, 20_000)
    },
    async stop() {
      const c = child
      child = undefined
      if (c === undefined || c.exitCode !== null || c.signalCode !== null) return
      const exited = new Promise((resolve) => c.once('exit', resolve))
      c.kill('SIGTERM')
      await exited
      await eventually(async () => !(await Promise.all(ports.map(accepts))).some(Boolean), `ports ${ports.join(', ')} to close`, 10_000)
    },
  }
  t.teardown(() => {
    if (child !== undefined && child.exitCode === null) child.kill('SIGKILL')
  })
  return server
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ port, host: '127.0.0.1' })
    s.once('connect', () => (s.destroy(), resolve(true)))
    s.once('error', () => resolve(false))
  })
}

/** Starts sluice with `check` on a pool of one backend and walks it up → down → up. */
async function upDownUp(t: Test, port: number, check: string, server: Server, expectDetail: RegExp): Promise<void> {
  await server.start()
  const address = `127.0.0.1:${port}`
  const run = await startDaemon(t, `
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p:
    backends: [${address}]
    health_check: ${check}
`)
  const b = run.daemon.pools.get('p')?.find(address)
  const msg = (l: Record<string, unknown>): string => String(l.msg)
  t.equal(b?.state, 'up', 'up after its first check')
  const first = run.logs.lines.find((l) => msg(l).startsWith(`backend ${address} is up: first check passed`))
  t.match(String(first?.detail), expectDetail, `the check saw: ${String(first?.detail)}`)
  await server.stop()
  const down = await run.logs.waitFor((l) => msg(l).startsWith(`backend ${address} is down`), 20_000)
  t.equal(b?.state, 'down', `down once the server stopped: ${msg(down)}`)
  await server.start()
  await run.logs.waitFor((l) => msg(l).startsWith(`backend ${address} is up: rise`), 20_000)
  t.equal(b?.state, 'up', 'up again once the server is back')
  t.match(await run.metrics(), new RegExp(`sluice_health_checks_total\\{pool="p",backend="${address}",result="failure"\\} [1-9]`))
}

const timing = 'interval: 300ms, timeout: 300ms, rise: 1, fall: 1'

t.test('redis: PING with AUTH against redis-server', async (t) => {
  if (skipWithout(t, { 'redis-server': redisServer })) return
  const port = await deadPort()
  const server = processServer(t, [port], redisServer!, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--requirepass', 'hunter2'])
  await upDownUp(t, port, `{ type: redis, password: hunter2, ${timing} }`, server, /^\+PONG$/)
})

t.test('postgres: SSLRequest against PostgreSQL', async (t) => {
  const pg = await postgresCluster(t)
  if (pg === undefined) return
  const port = pg.port
  const pgServer: Server = { start: async () => pg.start(), stop: async () => pg.stop() }
  await upDownUp(t, port, `{ type: postgres, ${timing} }`, pgServer, /^SSLRequest answered [SN]$/)
})

t.test('smtp: banner and EHLO against OpenSMTPD', async (t) => {
  if (skipWithout(t, { 'smtpd (Debian package opensmtpd)': smtpd })) return
  if (!isRoot) {
    t.skip('needs root: OpenSMTPD drops privileges to its own user', () => {})
    return
  }
  const dir = mkdtempSync(join(tmpdir(), 'sluice-health-smtpd-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const port = await deadPort()
  const conf = join(dir, 'smtpd.conf')
  writeFileSync(conf, `listen on 127.0.0.1 port ${port}\naction "local" mbox\nmatch from local for local action "local"\n`, { mode: 0o644 })
  const server = processServer(t, [port], smtpd!, ['-d', '-f', conf])
  await upDownUp(t, port, `{ type: smtp, ehlo: sluice.test, ${timing} }`, server, /^220 banner, EHLO 250$/)
})

/** A minimal Dovecot configuration serving IMAP and POP3 on the given loopback ports. */
function dovecotConf(dir: string, imapPort: number, pop3Port: number): string {
  mkdirSync(join(dir, 'mail'), { recursive: true })
  const conf = join(dir, 'dovecot.conf')
  writeFileSync(conf, `base_dir = ${dir}/run
state_dir = ${dir}/state
log_path = ${dir}/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
ssl = no
mail_location = maildir:${dir}/mail/%u
passdb {
  driver = static
  args = password=unused
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=${dir}/mail/%u
}
service imap-login {
  chroot =
  inet_listener imap {
    port = ${imapPort}
  }
  inet_listener imaps {
    port = 0
  }
}
service pop3-login {
  chroot =
  inet_listener pop3 {
    port = ${pop3Port}
  }
  inet_listener pop3s {
    port = 0
  }
}
service anvil {
  chroot =
}
`)
  return conf
}

t.test('imap and pop3: greetings from Dovecot', async (t) => {
  if (skipWithout(t, { 'dovecot (Debian packages dovecot-imapd, dovecot-pop3d)': dovecot })) return
  if (!isRoot) {
    t.skip('needs root: Dovecot runs its login processes as its own users', () => {})
    return
  }
  const dir = mkdtempSync(join(tmpdir(), 'sluice-health-dovecot-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const imapPort = await deadPort()
  const pop3Port = await deadPort()
  const server = processServer(t, [imapPort, pop3Port], dovecot!, ['-F', '-c', dovecotConf(dir, imapPort, pop3Port)])
  // upDownUp starts the server and leaves it running: stop it between the two.
  await t.test('imap', (t) => upDownUp(t, imapPort, `{ type: imap, ${timing} }`, server, /^\* OK/))
  await server.stop()
  await t.test('pop3', (t) => upDownUp(t, pop3Port, `{ type: pop3, ${timing} }`, server, /^\+OK$/))
  await server.stop()
})

t.test('dns: UDP and TCP queries against dnsmasq', async (t) => {
  if (skipWithout(t, { dnsmasq })) return
  const port = await deadPort()
  const args = ['-k', '--conf-file=/dev/null', `--port=${port}`, '--listen-address=127.0.0.1', '--bind-interfaces', '--no-resolv', '--no-hosts', '--address=/health.test/127.0.0.9', '--user=root', '--pid-file=']
  const server = processServer(t, [port], dnsmasq!, args)
  await t.test('udp', (t) => upDownUp(t, port, `{ type: dns, query: www.health.test, ${timing} }`, server, /^NOERROR$/))
  await server.stop()
  await t.test('tcp', (t) => upDownUp(t, port, `{ type: dns, transport: tcp, query: www.health.test, query_type: A, ${timing} }`, server, /^NOERROR$/))
  await server.stop()
})

