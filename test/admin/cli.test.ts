import t from 'tap'
import { writeFileSync } from 'node:fs'
import { createServer, type AddressInfo } from 'node:net'
import { deadPort, greeting, namedBackend } from '../helpers/net.js'
import { runCli, startSluice, tempFile, type SluiceProcess } from '../helpers/spawn.js'
import { reusePortAvailable } from '../../src/config/validate.js'
import { adminYaml } from './helpers.js'

async function adminUrl(p: SluiceProcess, msg = 'sluice started'): Promise<string> {
  const line = await p.waitFor((l) => l.msg === msg, msg)
  return `http://${String(line.admin)}`
}

const noToken = { ...process.env, SLUICE_ADMIN_TOKEN: '' }

t.test('status: an aligned table, and --json', async (t) => {
  const a = await namedBackend(t, 'a')
  const sluice = startSluice(t, tempFile('s.yaml', adminYaml([a.address, '127.0.0.1:9'])))
  const url = await adminUrl(sluice)
  const port = await sluice.port('l')
  const r = await runCli(['status', '--admin', url], 20_000, noToken)
  t.equal(r.code, 0, r.stderr)
  const lines = r.stdout.trimEnd().split('\n')
  t.match(lines[0], /^sluice \d+\.\d+\.\d+ \(pid \d+\), up \d+s, .*s\.yaml; 1 listener, 2\/2 backends up, 0 active connections, (native|js) relay$/)
  t.equal(lines[1], '')
  t.match(lines[2], /^LISTENER +LISTEN +POOL +BACKEND +STATE +ACTIVE +TOTAL$/)
  t.match(lines[3], new RegExp(`^l/tcp +127\\.0\\.0\\.1:${port} +p +${a.address.replace(/\./g, '\\.')} +up +0 +0$`))
  t.match(lines[4], /^l\/tcp +127\.0\.0\.1:\d+ +p +127\.0\.0\.1:9 +up +0 +0$/)
  const col = (line: string | undefined, word: string): number => (line ?? '').indexOf(word)
  t.equal(col(lines[3], a.address), col(lines[2], 'BACKEND'), 'columns are aligned')
  t.equal(lines[3]?.length, lines[2]?.length, 'numbers are right-aligned to the header')
  const j = await runCli(['status', '--json', '--admin', url], 20_000, noToken)
  t.equal(j.code, 0)
  const body = JSON.parse(j.stdout) as { pools: { backends: { address: string }[] }[] }
  t.same(body.pools[0]?.backends.map((b) => b.address), [a.address, '127.0.0.1:9'])
})

t.test('status with workers: 2: a table of the workers, whose totals add up', { skip: reusePortAvailable() ? false : `workers above 1 need Node.js 22.12+ (reusePort); this is ${process.version}` }, async (t) => {
  const a = await namedBackend(t, 'a')
  const sluice = startSluice(t, tempFile('w.yaml', adminYaml([a.address], undefined, 'workers: 2')))
  const url = await adminUrl(sluice)
  const port = await sluice.port('l')
  const greeted = await Promise.all(Array.from({ length: 40 }, () => greeting(port)))
  t.same([...new Set(greeted)], ['a'])
  const r = await runCli(['status', '--admin', url], 20_000, noToken)
  t.equal(r.code, 0, r.stderr)
  const lines = r.stdout.trimEnd().split('\n')
  const head = lines.indexOf('WORKER  ACTIVE  TOTAL')
  t.ok(head > 0, 'a table of the workers under the backends')
  const rows = lines.slice(head + 1).map((l) => /^(\d+) +(\d+) +(\d+)$/.exec(l))
  t.equal(rows.length, 2, 'one row per worker')
  t.same(rows.map((m) => Number(m?.[1])), [1, 2], 'workers 1 and 2')
  t.equal(rows.reduce((n, m) => n + Number(m?.[3]), 0), 40, 'their connection totals add up to the 40 made')
  t.ok(rows.every((m) => Number(m?.[3]) > 0), `the kernel spread them (${rows.map((m) => m?.[3]).join(' + ')})`)
  const j = await runCli(['status', '--json', '--admin', url], 20_000, noToken)
  const body = JSON.parse(j.stdout) as { workers: { id: number; active_connections: number; connections_total: number }[] }
  t.same(body.workers.map((w) => w.id), [1, 2], '--json lists them too')
  sluice.signal('SIGTERM')
  t.equal((await sluice.exited).code, 0)
})

t.test('backend drain/enable/disable and reload through the CLI, with a token', async (t) => {
  const a = await namedBackend(t, 'a')
  const b = await namedBackend(t, 'b')
  const file = tempFile('s.yaml', adminYaml([a.address, b.address], '{ listen: "127.0.0.1:0", token: "${SLUICE_ADMIN_TOKEN}" }'))
  const env = { ...process.env, SLUICE_ADMIN_TOKEN: 'cli-token-1234' }
  const sluice = startSluice(t, file, env)
  const url = await adminUrl(sluice)
  const port = await sluice.port('l')

  const missing = await runCli(['backend', 'drain', 'p', a.address, '--admin', url], 20_000, noToken)
  t.equal(missing.code, 1)
  t.equal(missing.stderr, `sluice: the admin API at ${url} refused the request (401): no token was given: pass --token or set SLUICE_ADMIN_TOKEN\n`)
  const wrong = await runCli(['backend', 'drain', 'p', a.address, '--admin', url, '--token', 'nope'], 20_000, noToken)
  t.equal(wrong.code, 1)
  t.match(wrong.stderr, /refused the request \(401\): the token is wrong/)

  const drain = await runCli(['backend', 'drain', 'p', a.address, '--admin', url], 20_000, env)
  t.equal(drain.code, 0, drain.stderr)
  t.equal(drain.stdout, `pool p backend ${a.address}: up -> draining (0 active connections)\n`)
  t.same([await greeting(port), await greeting(port), await greeting(port)], ['b', 'b', 'b'])
  const again = await runCli(['backend', 'drain', 'p', a.address, '--admin', url, '--token', 'cli-token-1234'], 20_000, noToken)
  t.match(again.stdout, /was already draining/)
  const unknown = await runCli(['backend', 'enable', 'p', '127.0.0.1:1', '--admin', url], 20_000, env)
  t.equal(unknown.code, 1)
  t.match(unknown.stderr, /^sluice: the admin API at .*: pool "p" has no backend 127\.0\.0\.1:1; its backends: /)
  t.equal((await runCli(['backend', 'enable', 'p', a.address, '--admin', url], 20_000, env)).code, 0)

  writeFileSync(file, adminYaml([b.address], '{ listen: "127.0.0.1:0", token: "${SLUICE_ADMIN_TOKEN}" }').replace('round-robin', 'round-robbin'))
  const bad = await runCli(['reload', '--admin', url], 20_000, env)
  t.equal(bad.code, 1)
  const errLines = bad.stderr.trimEnd().split('\n')
  t.match(errLines[0], new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:7:\\d+: pool "p" algorithm "round-robbin"`))
  t.match(errLines.at(-1), /^sluice: reload refused: .*1 problem; nothing was changed$/)
  writeFileSync(file, adminYaml([b.address], '{ listen: "127.0.0.1:0", token: "${SLUICE_ADMIN_TOKEN}" }'))
  const good = await runCli(['reload', '--admin', url], 20_000, env)
  t.equal(good.code, 0, good.stderr)
  t.match(good.stdout, /reloaded \(1 listener, 1 pool, 1 backend\)/)
  // SIGHUP shares the path: counted in the same metric.
  sluice.signal('SIGHUP')
  await sluice.waitFor((l) => l.msg === 'configuration reloaded' && sluice.lines.filter((x) => x.msg === 'configuration reloaded').length === 2, 'the SIGHUP reload')
  const metrics = await fetch(`${url}/metrics`, { headers: { authorization: 'Bearer cli-token-1234' } })
  const text = await metrics.text()
  t.match(text, /sluice_config_reloads_total\{result="success"\} 2/)
  t.match(text, /sluice_config_reloads_total\{result="failure"\} 1/)
  sluice.signal('SIGTERM')
  t.equal((await sluice.exited).code, 0)
})

t.test('unreachable admin API: one line, exit 1; a bad URL: exit 2', async (t) => {
  const port = await deadPort()
  for (const args of [['status'], ['reload'], ['backend', 'disable', 'p', '127.0.0.1:1']]) {
    const r = await runCli([...args, '--admin', `http://127.0.0.1:${port}`], 20_000, noToken)
    t.equal(r.code, 1, args.join(' '))
    t.equal(r.stderr, `sluice: cannot reach the admin API at http://127.0.0.1:${port}: connection refused (ECONNREFUSED) (is sluice running with admin.listen at this address? see --admin)\n`)
  }
  const bad = await runCli(['status', '--admin', 'not a url'], 20_000, noToken)
  t.equal(bad.code, 2)
  t.match(bad.stderr, /--admin not a url is not a URL/)
  // Something that is not sluice answering on the port.
  const other = createServer((s) => s.end('HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello'))
  await new Promise<void>((r) => other.listen(0, '127.0.0.1', r))
  t.teardown(() => other.close())
  const notSluice = await runCli(['status', '--admin', `http://127.0.0.1:${(other.address() as AddressInfo).port}`], 20_000, noToken)
  t.equal(notSluice.code, 1)
  t.match(notSluice.stderr, /answered HTTP 200 but not with JSON: is it a sluice admin API\?/)
})

t.test('run refuses a public admin.listen without a token, at its line', async (t) => {
  const file = tempFile('pub.yaml', adminYaml(['127.0.0.1:9'], '{ listen: "0.0.0.0:0" }'))
  const r = await runCli(['run', '-c', file], 20_000, noToken)
  t.equal(r.code, 1)
  t.match(r.stderr, new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:2:18: admin\\.listen 0\\.0\\.0\\.0:0 is not a loopback address and admin\\.token is not set`))
})
