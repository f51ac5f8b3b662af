import t from 'tap'
import { parseConfig } from '../../src/config/load.js'
import { reloadFromFile } from '../../src/reload.js'
import { startDaemon } from '../helpers/daemon.js'
import { backend, dial, eventually, namedBackend, readUntil } from '../helpers/net.js'
import { metricValue } from '../helpers/udp.js'
import { connectOutcome, freePort, quietLoopback } from '../integration/free-address.js'
import { adminYaml, startWithAdmin } from './helpers.js'

const refusals = (lines: readonly Record<string, unknown>[]): Record<string, unknown>[] =>
  lines.filter((l) => l.code === 'SLUICE_ERR_RELOAD' && typeof l.msg === 'string' && l.msg.includes('sluice is stopping'))

t.test('during a graceful stop the admin API keeps answering: /readyz 503, /healthz 200, a reload 503; it closes once the listeners have drained', async (t) => {
  const a = await namedBackend(t, 'a')
  const s = await startWithAdmin(t, adminYaml([a.address], '{ listen: "127.0.0.1:0" }', 'shutdown_timeout: 30s'))
  const open = await dial(s.port('l'))
  t.teardown(() => open.destroy())
  t.equal((await readUntil(open, 'line')).toString(), 'a\n')
  const stopped = s.daemon.stop()
  await s.logs.waitFor((l) => typeof l.msg === 'string' && l.msg.startsWith('sluice stopping'))

  const ready = await s.fetch('/readyz')
  t.equal(ready.status, 503, '/readyz: 503 while stopping')
  t.equal(await ready.text(), 'not ready\n')
  t.equal((await s.fetch('/healthz')).status, 200, '/healthz: still 200')
  const status = await s.fetch('/api/status')
  t.equal(status.status, 200)
  t.equal(((await status.json()) as { ready: boolean }).ready, false)

  s.write(adminYaml([a.address], '{ listen: "127.0.0.1:0" }', 'shutdown_timeout: 30s').replace('round-robin', 'random'))
  const res = await s.fetch('/api/reload', { method: 'POST' })
  t.equal(res.status, 503, 'a reload is refused with 503')
  const body = (await res.json()) as { ok: boolean; result: string; code: string; error: { code: string; message: string } }
  t.match(body, { ok: false, result: 'refused', code: 'SLUICE_ERR_RELOAD', error: { code: 'SLUICE_ERR_RELOAD' } })
  t.match(body.error.message, /sluice is stopping/)
  t.equal(s.daemon.config.pools.get('p')?.algorithm, 'round-robin', 'nothing changed')
  t.equal(metricValue(await (await s.fetch('/metrics')).text(), 'sluice_config_reloads_total', { result: 'refused' }), 1, 'counted as refused')
  t.equal(refusals(s.logs.lines).length, 1, 'logged once')
  t.match(refusals(s.logs.lines)[0], { level: 'warn', trigger: 'api' })

  t.equal(s.daemon.adminAddress() !== undefined, true, 'the admin API is still open while a connection drains')
  open.end()
  await stopped
  await t.rejects(fetch(`${s.url}/healthz`), 'closed once the listeners have drained')
  const msgs = s.logs.lines.map((l) => l.msg)
  t.equal(msgs.at(-1), 'sluice stopped')
  t.notOk(msgs.includes('configuration reloaded'))
})

t.test('once stopping, every reload is refused and counted: SIGHUP path and direct calls', async (t) => {
  const a = await namedBackend(t, 'a')
  const s = await startWithAdmin(t, adminYaml([a.address], '{ listen: "127.0.0.1:0" }', 'shutdown_timeout: 30s'))
  const open = await dial(s.port('l'))
  t.teardown(() => open.destroy())
  await readUntil(open, 'line')
  const stopped = s.daemon.stop()
  const outcomes = await Promise.all([reloadFromFile(s.daemon, s.file, 'signal'), reloadFromFile(s.daemon, s.file, 'signal')])
  t.same(outcomes.map((o) => [o.ok, o.result, o.code]), [[false, 'refused', 'SLUICE_ERR_RELOAD'], [false, 'refused', 'SLUICE_ERR_RELOAD']])
  await t.rejects(s.daemon.reload(parseConfig(adminYaml([a.address]), s.file, {})), { code: 'SLUICE_ERR_RELOAD' }, 'Daemon.reload refuses too')
  t.equal(refusals(s.logs.lines).length, 2, 'one line per attempt through the reload path')
  t.equal(metricValue(await s.metrics(), 'sluice_config_reloads_total', { result: 'refused' }), 2)
  t.equal(metricValue(await s.metrics(), 'sluice_config_reloads_total', { result: 'failure' }), 0, 'not counted as a failure')
  open.end()
  await stopped
})

t.test('a stop that begins while a reload binds its new listeners: the reload gives up and the new port never accepts', async (t) => {
  const a = await namedBackend(t, 'a')
  const host = quietLoopback()
  const fresh = await freePort(host)
  const yaml = (extra: string): string => `
log: { level: info, access_log: false }
shutdown_timeout: 30s
listeners:
  - { name: l, listen: "127.0.0.1:0", pool: p }
${extra}
pools: { p: { backends: ["${a.address}"] } }
`
  const run = await startDaemon(t, yaml(''))
  const open = await dial(run.port('l'))
  t.teardown(() => open.destroy())
  await readUntil(open, 'line')
  // reload() runs up to its first bind, then waits for it; the stop begins in that wait.
  const reloading = run.daemon.reload(parseConfig(yaml(`  - { name: m, listen: "${host}:${fresh}", pool: p }`), 'test.yaml', {}))
  const stopped = run.daemon.stop()
  await t.rejects(reloading, { code: 'SLUICE_ERR_RELOAD' })
  t.same([...run.daemon.listeners.keys()], ['l'], 'the listeners are those of before')
  t.equal(await connectOutcome(fresh, host), 'ECONNREFUSED', 'the listener the reload bound was closed again, while the stop still drains')
  open.write('still\n')
  t.equal((await readUntil(open, 'line')).toString(), 'still\n')
  open.end()
  await stopped
  t.notOk(run.logs.lines.some((l) => l.msg === 'configuration reloaded'))
})

t.test('a reload that switched over just before the stop reports before "sluice stopped"', async (t) => {
  const a = await namedBackend(t, 'a')
  // Accepts and never answers: the first redis check waits for its whole timeout.
  const silent = await backend(t, () => {})
  const yaml = (pool: string): string => `
log: { level: info, access_log: false }
listeners: [{ name: l, listen: "127.0.0.1:0", pool: p }]
pools:
  p: ${pool}
`
  const run = await startDaemon(t, yaml(`{ backends: ["${a.address}"] }`))
  const next = parseConfig(yaml(`{ backends: ["${silent.address}"], health_check: { type: redis, interval: 10s, timeout: 5s } }`), 'test.yaml', {})
  const reloading = run.daemon.reload(next)
  // Every worker prepared and the control plane switched over; the first probe still waits.
  await eventually(() => run.daemon.config === next, 'the switch-over')
  const started = Date.now()
  await run.daemon.stop()
  await reloading
  t.ok(Date.now() - started < 4000, 'the stop ended the wait for the probe')
  const msgs = run.logs.lines.map((l) => l.msg)
  const reloaded = msgs.indexOf('configuration reloaded')
  t.ok(reloaded >= 0, 'the reload reported')
  t.ok(reloaded < msgs.indexOf('sluice stopped'), '"configuration reloaded" comes before "sluice stopped"')
  t.equal(msgs.at(-1), 'sluice stopped')
})
