import t, { type Test } from 'tap'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { connect, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startDaemon, type Running } from '../helpers/daemon.js'
import { eventually, readUntil } from '../helpers/net.js'
import { skipWithout } from '../helpers/tools.js'
import { dovecot, dovecotConf, freePorts, postfixInstance, processServer } from '../helpers/servers.js'

/**
 * Mail servers that expect a PROXY header (postfix `smtpd_upstream_proxy_protocol = haproxy`,
 * dovecot `haproxy = yes`) behind a pool with `proxy_protocol`: the health checks send the
 * header too (v2 LOCAL, or v1 with the checker's own addresses), so the pool is up, clients
 * get through with their own address, and the servers log no error for the probes. With
 * `send_proxy: false` the same check fails, as it did before checks could send a header.
 */

const timing = 'interval: 300ms, timeout: 300ms, rise: 1, fall: 1'
const msg = (l: Record<string, unknown>): string => String(l.msg)

async function daemonFor(t: Test, address: string, version: 'v1' | 'v2', check: string): Promise<Running> {
  return startDaemon(t, `
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p:
    backends: [${address}]
    proxy_protocol: ${version}
    health_check: ${check}
`)
}

/** Connects to sluice from `localAddress` (so the server's log can show which client it was told about). */
function dialFrom(port: number, localAddress: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host: '127.0.0.1', localAddress }, () => resolve(s))
    s.once('error', reject)
  })
}

/** Reads lines until one matches `done`; returns them all. */
async function readLines(s: Socket, done: RegExp): Promise<string[]> {
  const out: string[] = []
  for (let i = 0; i < 50; i++) {
    const chunk = (await readUntil(s, 'line', 5000)).toString('latin1')
    out.push(...chunk.split('\r\n').filter((l) => l !== ''))
    if (out.some((l) => done.test(l))) return out
  }
  throw new Error(`no line matching ${String(done)} in ${out.join(' | ')}`)
}

t.test('postfix with smtpd_upstream_proxy_protocol = haproxy behind a proxy_protocol pool, smtp check', async (t) => {
  const postfix = await postfixInstance(t, { smtpd_upstream_proxy_protocol: 'haproxy' })
  if (postfix === undefined) return
  await postfix.server.start()
  const address = `127.0.0.1:${postfix.port}`
  for (const version of ['v2', 'v1'] as const) {
    await t.test(`proxy_protocol ${version}`, async (t) => {
      const run = await daemonFor(t, address, version, `{ type: smtp, ehlo: checker.sluice.test, ${timing} }`)
      const b = run.daemon.pools.get('p')?.find(address)
      t.equal(b?.state, 'up', 'up after its first check: postfix took the header')
      t.match(run.logs.lines.find((l) => msg(l).includes('is up')), { detail: '220 banner, EHLO 250' })
      const passes = async (): Promise<number> => (await run.registry.getSingleMetric('sluice_health_checks_total')?.get())?.values.find((v) => v.labels.result === 'success')?.value ?? 0
      await eventually(async () => (await passes()) >= 4, 'four passing checks')
      t.equal(b?.state, 'up')

      // A client through sluice: postfix is told its address by the header sluice sends.
      const c = await dialFrom(run.port('l'), '127.0.0.3')
      t.teardown(() => c.destroy())
      t.match((await readLines(c, /^220 /))[0], /^220 mail\.sluice\.test ESMTP/)
      c.write('EHLO client.test\r\n')
      t.ok((await readLines(c, /^250 /)).length > 1, 'EHLO answered')
      c.write('QUIT\r\n')
      await readLines(c, /^221 /)
      await eventually(() => /connect from unknown\[127\.0\.0\.3\]/.test(postfix.maillog()), 'postfix to log the client by its own address')
    })
  }
  const log = postfix.maillog().split('\n')
  t.same(log.filter((l) => /warning: haproxy|lost connection|timeout after/.test(l)), [], 'no header error, lost connection or timeout for any probe')
  t.ok(log.filter((l) => /disconnect from localhost\[127\.0\.0\.1\] ehlo=1 quit=1 commands=2/.test(l)).length >= 8, 'the probes: EHLO, QUIT, from the checker\'s own address')

  await t.test('send_proxy: false: postfix waits for a header that never comes; the pool is down', async (t) => {
    const run = await daemonFor(t, address, 'v2', `{ type: smtp, send_proxy: false, ${timing} }`)
    const b = run.daemon.pools.get('p')?.find(address)
    t.equal(b?.state, 'down')
    t.match(run.logs.lines.find((l) => msg(l).includes('is down')), { code: 'SLUICE_ERR_HEALTH_CHECK', detail: 'timeout after 300ms waiting for the 220 banner' })
  })
})

t.test('dovecot with haproxy = yes behind a proxy_protocol pool, imap check', async (t) => {
  if (skipWithout(t, { 'dovecot (Debian packages dovecot-imapd, dovecot-pop3d)': dovecot })) return
  if (process.getuid?.() !== 0) {
    t.skip('needs root: Dovecot runs its login processes as its own users', () => {})
    return
  }
  const dir = mkdtempSync(join(tmpdir(), 'sluice-health-dovecot-'))
  const [imapPort, pop3Port] = (await freePorts(2)) as [number, number]
  // Dovecot's own readiness: its listeners take a header too, so the helper's bare connects
  // (from 127.0.0.2) only show that the port is open.
  const server = processServer(t, [imapPort, pop3Port], dovecot!, ['-F', '-c', dovecotConf(dir, imapPort, pop3Port, { haproxy: true })], { readyFrom: '127.0.0.2' })
  t.teardown(async () => {
    await server.stop()
    rmSync(dir, { recursive: true, force: true })
  })
  await server.start()
  const dovecotLog = (): string => readFileSync(join(dir, 'dovecot.log'), 'utf8')
  const address = `127.0.0.1:${imapPort}`
  for (const version of ['v2', 'v1'] as const) {
    await t.test(`proxy_protocol ${version}`, async (t) => {
      const run = await daemonFor(t, address, version, `{ type: imap, ${timing} }`)
      // Dovecot's auth process may still be starting for the very first probe.
      await eventually(() => run.daemon.pools.get('p')?.find(address)?.state === 'up', 'the imap check to pass', 15_000)
      const c = await dialFrom(run.port('l'), '127.0.0.3')
      t.teardown(() => c.destroy())
      t.match((await readLines(c, /^\* OK/))[0], /^\* OK .*Dovecot/, 'the client is greeted through sluice')
      c.write('a1 LOGOUT\r\n')
      await readLines(c, /^a1 OK/)
      await eventually(() => /rip=127\.0\.0\.3/.test(dovecotLog()), 'dovecot to log the client by its own address')
    })
  }
  const log = dovecotLog().split('\n')
  t.same(log.filter((l) => /haproxy|Error|error/.test(l) && !l.includes('rip=127.0.0.2')), [], 'no PROXY error for any probe')
  t.ok(log.filter((l) => /Aborted login by logging out .*rip=127\.0\.0\.1, lip=127\.0\.0\.1/.test(l)).length >= 2, 'the probes: greeting, LOGOUT, from the checker\'s own address')

  await t.test('send_proxy: false: dovecot waits for a header; the pool is down', async (t) => {
    const run = await daemonFor(t, address, 'v2', `{ type: imap, send_proxy: false, ${timing} }`)
    t.equal(run.daemon.pools.get('p')?.find(address)?.state, 'down')
    t.match(run.logs.lines.find((l) => msg(l).includes('is down')), { detail: 'timeout after 300ms waiting for the * OK greeting' })
  })
})
