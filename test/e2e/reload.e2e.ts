import t from 'tap'
import { spawn } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { eventually } from '../helpers/net.js'
import { startSluice, tempFile } from '../helpers/spawn.js'
import { run, skipWithout, which } from '../helpers/tools.js'
import { redisCli, redisServer, startRedisServers } from '../helpers/servers.js'
import { reusePortAvailable } from '../../src/config/validate.js'

const redisBenchmark = which('redis-benchmark')

const RELOADS = 10

/** Calls of SET and GET summed over the servers (INFO commandstats). */
function calls(ports: readonly number[]): { set: number; get: number } {
  let set = 0
  let get = 0
  for (const p of ports) {
    const stats = run(redisCli!, ['-p', String(p), 'INFO', 'commandstats'])
    set += Number(/cmdstat_set:calls=(\d+)/.exec(stats)?.[1] ?? 0)
    get += Number(/cmdstat_get:calls=(\d+)/.exec(stats)?.[1] ?? 0)
  }
  return { set, get }
}

interface Bench {
  name: string
  n: number
  done: Promise<{ code: number | null; out: string; err: string }>
  running: () => boolean
}

function bench(name: string, port: number, n: number, extra: string[]): Bench {
  const child = spawn(redisBenchmark!, ['-h', '127.0.0.1', '-p', String(port), '-n', String(n), '-t', 'set,get', '-q', ...extra], { stdio: ['ignore', 'pipe', 'pipe'] })
  let out = ''
  let err = ''
  child.stdout.on('data', (d: Buffer) => (out += d.toString()))
  child.stderr.on('data', (d: Buffer) => (err += d.toString()))
  const done = new Promise<{ code: number | null; out: string; err: string }>((resolve) => child.on('exit', (code) => resolve({ code, out, err })))
  return { name, n, done, running: () => child.exitCode === null && child.signalCode === null }
}

for (const workers of [1, 2]) {
t.test(`redis-benchmark through sluice (workers: ${workers}) across ${RELOADS} reloads that change the pool and rename the listener: zero failed requests`, { skip: workers > 1 && !reusePortAvailable() ? `workers: ${workers} needs Node.js 22.12+ (reusePort); this is ${process.version}` : false }, async (t) => {
  if (skipWithout(t, { 'redis-server': redisServer, 'redis-benchmark': redisBenchmark, 'redis-cli': redisCli })) return
  const ports = await startRedisServers(t, 2, ['--maxclients', '10000'])
  const [r1, r2] = ports.map((p) => `127.0.0.1:${p}`)
  // Each reload changes the pool: weights swap, the second server leaves and comes back; and
  // the listener is renamed every other time, on the port it was given (it keeps its socket).
  const variants = [
    `[{ address: "${r1}", weight: 1 }, { address: "${r2}", weight: 3 }]`,
    `[{ address: "${r1}", weight: 3 }, { address: "${r2}", weight: 1 }]`,
    `[{ address: "${r1}", weight: 2 }]`,
  ]
  let listen = '127.0.0.1:0'
  const yaml = (i: number): string => `
workers: ${workers}
admin: { listen: "127.0.0.1:0" }
log: { level: info, access_log: false }
listeners: [{ name: ${i % 2 === 0 ? 'redis' : 'redis-renamed'}, listen: "${listen}", pool: redis }]
pools:
  redis:
    algorithm: ${i % 2 === 0 ? 'round-robin' : 'least-connections'}
    backends: ${variants[i % variants.length]}
`
  const file = tempFile('reload.yaml', yaml(0))
  const sluice = startSluice(t, file)
  const port = await sluice.port('redis')
  listen = `127.0.0.1:${port}`
  const started = await sluice.waitFor((l) => l.msg === 'sluice started', 'start')
  const admin = `http://${String(started.admin)}`

  // Persistent connections (they must survive their backend leaving the pool) and a new
  // connection per request (every one of them is balanced by whichever pool is current).
  const benches = [bench('persistent', port, 200_000, ['-c', '20']), bench('new-connection', port, 12_000, ['-c', '8', '-k', '0'])]
  t.teardown(() => Promise.all(benches.map((b) => b.done)))
  await eventually(() => calls(ports).set > 1000, 'the benchmarks to get going', 30_000)

  let reloaded = 0
  for (let i = 1; i <= RELOADS; i++) {
    writeFileSync(file, yaml(i))
    const before = calls(ports)
    if (i % 2 === 1) {
      const seen = sluice.lines.filter((l) => l.msg === 'configuration reloaded').length
      sluice.signal('SIGHUP')
      await sluice.waitFor(() => sluice.lines.filter((l) => l.msg === 'configuration reloaded').length > seen, `SIGHUP reload ${i}`)
    } else {
      const res = await fetch(`${admin}/api/reload`, { method: 'POST' })
      t.equal(res.status, 200, `API reload ${i}`)
    }
    reloaded++
    await sluice.waitFor(() => sluice.lines.filter((l) => l.msg === 'configuration reloaded').length === i, `the log line of reload ${i}`)
    const summary = sluice.lines.filter((l) => l.msg === 'configuration reloaded').at(-1)?.listeners as { name: string; listen: string }[]
    t.same(summary, [{ name: i % 2 === 0 ? 'redis' : 'redis-renamed', listen, pool: 'redis' }], `reload ${i}: the listener has its name, on the same port`)
    const live = benches.filter((b) => b.running()).map((b) => b.name)
    t.same(live, ['persistent', 'new-connection'], `both benchmarks still running after reload ${i}`)
    // Let traffic flow on the new pool before the next change (progress, not a sleep).
    await eventually(() => calls(ports).get > before.get + 300 || benches.every((b) => !b.running()), `traffic after reload ${i}`, 30_000)
  }
  t.equal(reloaded, RELOADS)

  const results = await Promise.all(benches.map((b) => b.done))
  for (const [i, r] of results.entries()) {
    t.equal(r.code, 0, `${benches[i]?.name} redis-benchmark exit 0 ${r.err}`)
    t.notMatch(r.err + r.out, /error|reset|refused/i, `${benches[i]?.name}: no errors reported`)
  }
  const expected = benches.reduce((n, b) => n + b.n, 0)
  const total = calls(ports)
  t.equal(total.set, expected, `every SET reached a server (${expected})`)
  t.equal(total.get, expected, `every GET reached a server (${expected})`)
  t.comment(`${RELOADS} reloads; ${total.set + total.get} requests, ${2 * expected - total.set - total.get} lost`)

  const metrics = await (await fetch(`${admin}/metrics`)).text()
  t.match(metrics, new RegExp(`sluice_config_reloads_total\\{result="success"\\} ${RELOADS}`))
  t.notMatch(metrics, /sluice_config_reloads_total\{result="failure"\}/)
  t.notMatch(metrics, /sluice_rejected_connections_total\{[^}]*\} [1-9]/, 'no connection was rejected')
  sluice.signal('SIGTERM')
  t.equal((await sluice.exited).code, 0)
  t.notOk(sluice.lines.some((l) => l.level === 'error'), 'no errors logged')
})
}
