import t, { type Test } from 'tap'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startDaemon } from '../helpers/daemon.js'
import { deadPort } from '../helpers/net.js'
import { skipWithout, which } from '../helpers/tools.js'
import { dovecot, dovecotConf, freePorts, postfixInstance, postgresCluster, processServer, type ProcessServer as Server } from '../helpers/servers.js'

/**
 * Each health-check type against the real server it speaks to: the check marks the backend
 * up, then down when the server is stopped, then up again when it is started once more.
 */

const redisServer = which('redis-server')
const dnsmasq = which('dnsmasq', ['/usr/sbin'])
const isRoot = process.getuid?.() === 0

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

// A timeout that only bounds a hang: a loaded machine can take longer than 300 ms to answer.
const timing = 'interval: 1s, timeout: 1s, rise: 1, fall: 1'

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

t.test('smtp: banner and EHLO against Postfix', async (t) => {
  const postfix = await postfixInstance(t)
  if (postfix === undefined) return
  await upDownUp(t, postfix.port, `{ type: smtp, ehlo: sluice.test, ${timing} }`, postfix.server, /^220 banner, EHLO 250$/)
  // (sluice's probes come from 127.0.0.1; the helper's connects that wait for the port to close, from 127.0.0.2.)
  const complaints = postfix.maillog().split('\n').filter((l) => /lost connection|improper command pipelining/.test(l) && l.includes('[127.0.0.1]'))
  t.same(complaints, [], 'postfix saw every probe through to QUIT')
  t.match(postfix.maillog(), /disconnect from localhost\[127\.0\.0\.1\] ehlo=1 quit=1 commands=2/, 'each probe: EHLO, QUIT')
})

t.test('imap and pop3: greetings from Dovecot', async (t) => {
  if (skipWithout(t, { 'dovecot (Debian packages dovecot-imapd, dovecot-pop3d)': dovecot })) return
  if (!isRoot) {
    t.skip('needs root: Dovecot runs its login processes as its own users', () => {})
    return
  }
  const dir = mkdtempSync(join(tmpdir(), 'sluice-health-dovecot-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const [imapPort, pop3Port] = (await freePorts(2)) as [number, number]
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

