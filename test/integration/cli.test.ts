import t from 'tap'
import { writeFileSync } from 'node:fs'
import { connect, createServer, type AddressInfo, type Socket } from 'node:net'
import { closed, dial, eventually, greeting, namedBackend, readUntil } from '../helpers/net.js'
import { runCli, startSluice, tempFile } from '../helpers/spawn.js'
import { connectOutcome, freePort, quietLoopback } from './free-address.js'
import { reusePortAvailable } from '../../src/config/validate.js'

const config = (backend: string, extra = '', listen = '127.0.0.1:0'): string => `
${extra}
log: { level: info }
listeners: [{ name: l, listen: "${listen}", pool: p }]
pools:
  p: { backends: [${backend}] }
`

t.test('check: a good file prints a one-line summary and exits 0', async (t) => {
  const r = await runCli(['check', '--config', 'config/sluice.yaml'])
  t.equal(r.code, 0)
  t.match(r.stdout, /^config\/sluice\.yaml: OK \(2 listeners, 2 pools, 5 backends\)\n$/)
})

t.test('check: a bad file prints every problem as FILE:LINE:COL and exits 1', async (t) => {
  const r = await runCli(['check', '-c', 'test/fixtures/bad/many-problems.yaml'])
  t.equal(r.code, 1)
  const lines = r.stderr.trim().split('\n')
  t.equal(lines.filter((l) => /^test\/fixtures\/bad\/many-problems\.yaml:\d+:\d+: /.test(l)).length, 5, 'five located problems')
  t.match(lines.at(-1), /5 problems; nothing was started/)
})

t.test('bad usage exits 2; --help exits 0', async (t) => {
  t.equal((await runCli(['frobnicate'])).code, 2, 'unknown command')
  t.equal((await runCli(['check', '--nope'])).code, 2, 'unknown option')
  t.equal((await runCli([])).code, 2, 'no command')
  const help = await runCli(['--help'])
  t.equal(help.code, 0)
  t.match(help.stdout, /run/)
})

t.test('a missing configuration file exits 1 with one line', async (t) => {
  const r = await runCli(['run', '-c', '/nonexistent/sluice.yaml'])
  t.equal(r.code, 1)
  t.equal(r.stderr.trim().split('\n').length, 1, 'one line on stderr')
  t.match(r.stderr, /\/nonexistent\/sluice\.yaml: cannot read the configuration: no such file/)
})

t.test('a port already in use exits 1 with a one-line reason, not a stack trace', async (t) => {
  const holder = createServer()
  await new Promise<void>((r) => holder.listen(0, '127.0.0.1', r))
  t.teardown(() => holder.close())
  const port = (holder.address() as AddressInfo).port
  const file = tempFile('inuse.yaml', config('127.0.0.1:9', '', `127.0.0.1:${port}`))
  const r = await runCli(['run', '-c', file])
  t.equal(r.code, 1)
  const lines = r.stderr.trim().split('\n')
  t.equal(lines.length, 1, `one line on stderr: ${r.stderr}`)
  t.match(lines[0], new RegExp(`^sluice: listener "l" cannot listen on 127\\.0\\.0\\.1:${port}: address already in use.*\\(EADDRINUSE\\)$`))
  t.notMatch(r.stderr, /    at /, 'no stack trace')
})

t.test('SIGTERM: stop accepting, let open connections finish, then exit 0', async (t) => {
  const be = await namedBackend(t, 'be')
  const sluice = startSluice(t, tempFile('s.yaml', config(be.address, 'shutdown_timeout: 30s')))
  const port = await sluice.port('l')
  const open = await dial(port)
  t.equal((await readUntil(open, 'line')).toString(), 'be\n', 'connection established')
  sluice.signal('SIGTERM')
  await sluice.waitFor((l) => typeof l.msg === 'string' && l.msg.startsWith('sluice stopping'), 'stopping')
  await eventually(async () => (await refused(port)) === 'ECONNREFUSED', 'new connections to be refused')
  open.write('still works\n')
  t.equal((await readUntil(open, 'line')).toString(), 'still works\n', 'the open connection keeps working during the drain')
  open.end()
  const exit = await sluice.exited
  t.equal(exit.code, 0, 'exit 0 once the last connection finished')
  t.ok(sluice.lines.some((l) => l.access === true && l.close_reason === 'client_closed'), 'the drained connection was logged')
})

t.test('SIGTERM with a connection that outlives shutdown_timeout: it is closed, exit 0', async (t) => {
  const be = await namedBackend(t, 'be')
  const sluice = startSluice(t, tempFile('s.yaml', config(be.address, 'shutdown_timeout: 300ms')))
  const open = await dial(await sluice.port('l'))
  await readUntil(open, 'line')
  const started = Date.now()
  sluice.signal('SIGTERM')
  await closed(open)
  const exit = await sluice.exited
  t.equal(exit.code, 0)
  t.ok(Date.now() - started >= 250, 'not closed before shutdown_timeout')
  t.ok(sluice.lines.some((l) => l.access === true && l.close_reason === 'shutdown'), 'logged with close_reason shutdown')
})

t.test('a second SIGTERM exits now', async (t) => {
  const be = await namedBackend(t, 'be')
  const sluice = startSluice(t, tempFile('s.yaml', config(be.address, 'shutdown_timeout: 1h')))
  const open = await dial(await sluice.port('l'))
  await readUntil(open, 'line')
  sluice.signal('SIGTERM')
  await sluice.waitFor((l) => typeof l.msg === 'string' && l.msg.startsWith('sluice stopping'), 'stopping')
  sluice.signal('SIGTERM')
  const exit = await sluice.exited
  t.equal(exit.code, 0, `exited without waiting for the hour; stderr: ${exit.stderr}`)
  open.destroy()
})

t.test('workers: 2 and SIGTERM: no worker accepts, the open connections keep working; a second SIGTERM exits now', { skip: reusePortAvailable() ? false : `workers above 1 need Node.js 22.12+ (reusePort); this is ${process.version}` }, async (t) => {
  const be = await namedBackend(t, 'be')
  const sluice = startSluice(t, tempFile('w.yaml', config(be.address, 'workers: 2\nshutdown_timeout: 1h')))
  const port = await sluice.port('l')
  const open: Socket[] = []
  t.teardown(() => open.forEach((s) => s.destroy()))
  for (let i = 0; i < 8; i++) {
    const s = await dial(port)
    await readUntil(s, 'line')
    open.push(s)
  }
  sluice.signal('SIGTERM')
  const stopping = await sluice.waitFor((l) => typeof l.msg === 'string' && l.msg.startsWith('sluice stopping'), 'stopping')
  t.equal(stopping.open_connections, 8, 'the stop counts the open connections of both workers')
  await eventually(async () => (await refused(port)) === 'ECONNREFUSED', 'new connections to be refused')
  // With SO_REUSEPORT, a worker still listening would take some of these.
  const outcomes = await Promise.all(Array.from({ length: 20 }, () => refused(port)))
  t.same([...new Set(outcomes)], ['ECONNREFUSED'], 'no worker accepts a new connection')
  const echoes = await Promise.all(open.map(async (s, i) => {
    s.write(`still ${i}\n`)
    return (await readUntil(s, 'line')).toString()
  }))
  t.same(echoes, open.map((_, i) => `still ${i}\n`), 'every open connection keeps working while they drain')
  const signalled = Date.now()
  sluice.signal('SIGTERM')
  const exit = await sluice.exited
  t.equal(exit.code, 0, `exited without waiting for the hour; stderr: ${exit.stderr}`)
  t.ok(Date.now() - signalled < 10_000, `at once (${Date.now() - signalled} ms)`)
})

t.test('SIGHUP reloads: a good file takes effect, a bad one changes nothing', async (t) => {
  const a = await namedBackend(t, 'a')
  const b = await namedBackend(t, 'b')
  const file = tempFile('s.yaml', config(a.address))
  const sluice = startSluice(t, file)
  const port = await sluice.port('l')
  t.equal(await greeting(port), 'a')
  const held = await dial(port)
  await readUntil(held, 'line')

  writeFileSync(file, config(b.address))
  sluice.signal('SIGHUP')
  await sluice.waitFor((l) => l.msg === 'configuration reloaded', 'reload')
  t.equal(await greeting(port), 'b', 'new connections go to the new backend, same port')
  held.write('held\n')
  t.equal((await readUntil(held, 'line')).toString(), 'held\n', 'the connection opened before the reload is untouched')

  writeFileSync(file, config(b.address).replace('pool: p', 'pool: nope'))
  sluice.signal('SIGHUP')
  const err = await sluice.waitFor((l) => l.level === 'error' && typeof l.msg === 'string' && l.msg.startsWith('reload refused'), 'refused reload')
  t.match(err.msg, new RegExp(`${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:4:\\d+: listener "l" uses pool "nope"`), 'the log names FILE:LINE:COL')
  t.equal(await greeting(port), 'b', 'the running configuration stays')
  held.destroy()
  sluice.signal('SIGTERM')
  t.equal((await sluice.exited).code, 0)
})

t.test('SIGHUP during a graceful stop is refused: a listener it adds never accepts; the admin API answers 503 until the drain ends', async (t) => {
  const be = await namedBackend(t, 'be')
  // The listener the refused reload would add, on a loopback address no other test uses.
  const host = quietLoopback()
  const fresh = await freePort(host)
  const yaml = (extra: string): string => `
admin: { listen: "127.0.0.1:0" }
shutdown_timeout: 30s
log: { level: info }
listeners:
  - { name: l, listen: "127.0.0.1:0", pool: p }
${extra}
pools:
  p: { backends: [${be.address}] }
`
  const file = tempFile('s.yaml', yaml(''))
  const sluice = startSluice(t, file)
  // 'close' comes after the last byte of stdout, so every log line is in by then.
  const closed = new Promise<void>((resolve) => sluice.child.once('close', () => resolve()))
  const started = await sluice.waitFor((l) => l.msg === 'sluice started', 'start')
  const admin = `http://${String(started.admin)}`
  const open = await dial(await sluice.port('l'))
  t.teardown(() => open.destroy())
  t.equal((await readUntil(open, 'line')).toString(), 'be\n')
  sluice.signal('SIGTERM')
  await sluice.waitFor((l) => typeof l.msg === 'string' && l.msg.startsWith('sluice stopping'), 'stopping')

  writeFileSync(file, yaml(`  - { name: m, listen: "${host}:${fresh}", pool: p }`))
  sluice.signal('SIGHUP')
  const refusal = (l: Record<string, unknown>): boolean => l.code === 'SLUICE_ERR_RELOAD' && typeof l.msg === 'string' && l.msg.includes('sluice is stopping')
  const line = await sluice.waitFor((l) => refusal(l) && l.trigger === 'signal', 'the refused SIGHUP')
  t.equal(line.level, 'warn')
  t.equal(await connectOutcome(fresh, host), 'ECONNREFUSED', 'the listener the new file adds does not accept')

  const ready = await fetch(`${admin}/readyz`)
  t.equal(ready.status, 503, '/readyz answers 503 while the connection drains')
  t.equal((await fetch(`${admin}/healthz`)).status, 200, '/healthz still 200')
  const api = await fetch(`${admin}/api/reload`, { method: 'POST' })
  t.equal(api.status, 503, 'POST /api/reload: 503')
  t.equal(((await api.json()) as { error: { code: string } }).error.code, 'SLUICE_ERR_RELOAD')
  const cli = await runCli(['reload', '--admin', admin])
  t.equal(cli.code, 1, 'sluice reload exits 1')
  t.match(cli.stderr, /answered 503: reload refused: sluice is stopping/)
  const metrics = await (await fetch(`${admin}/metrics`)).text()
  t.match(metrics, /sluice_config_reloads_total\{result="refused"\} 3/, 'every attempt counted as refused')
  t.equal(sluice.lines.filter(refusal).length, 3, 'and logged once each')
  t.equal(await connectOutcome(fresh, host), 'ECONNREFUSED', 'still nothing on the new port')

  open.write('still works\n')
  t.equal((await readUntil(open, 'line')).toString(), 'still works\n', 'the open connection keeps working')
  open.end()
  const exit = await sluice.exited
  t.equal(exit.code, 0)
  await closed
  const msgs = sluice.lines.map((l) => l.msg)
  t.notOk(msgs.includes('configuration reloaded'), 'no reload was applied')
  t.equal(msgs.at(-1), 'sluice stopped', 'the last line written, after the access line of the drained connection')
})

function refused(port: number): Promise<string> {
  return new Promise((resolve) => {
    const s: Socket = connect({ port, host: '127.0.0.1' })
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'))
    s.once('connect', () => {
      s.destroy()
      resolve('connected')
    })
  })
}
