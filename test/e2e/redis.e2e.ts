import t from 'tap'
import { startSluice, tempFile } from '../helpers/spawn.js'
import { run, skipWithout, which } from '../helpers/tools.js'
import { redisCli, redisServer, startRedisServers } from '../helpers/servers.js'

const redisBenchmark = which('redis-benchmark')

t.test('redis-benchmark through sluice: every request answered', async (t) => {
  if (skipWithout(t, { 'redis-server': redisServer, 'redis-benchmark': redisBenchmark, 'redis-cli': redisCli })) return
  const ports = await startRedisServers(t, 2)
  const sluice = startSluice(t, tempFile('redis.yaml', `
log: { level: info, access_log: false }
listeners: [{ name: redis, listen: 127.0.0.1:0, pool: redis }]
pools:
  redis:
    algorithm: least-connections
    backends: [127.0.0.1:${ports[0]}, 127.0.0.1:${ports[1]}]
`))
  const port = await sluice.port('redis')
  const n = 20_000
  const out = run(redisBenchmark!, ['-h', '127.0.0.1', '-p', String(port), '-n', String(n), '-c', '20', '-t', 'set,get', '--csv'], { timeoutMs: 120_000 })
  t.match(out, /"SET"/, 'SET ran')
  t.match(out, /"GET"/, 'GET ran')
  // Each server counts what it executed: the two together must hold every request.
  let sets = 0
  let gets = 0
  for (const p of ports) {
    const stats = run(redisCli!, ['-p', String(p), 'INFO', 'commandstats'])
    sets += Number(/cmdstat_set:calls=(\d+)/.exec(stats)?.[1] ?? 0)
    gets += Number(/cmdstat_get:calls=(\d+)/.exec(stats)?.[1] ?? 0)
    t.ok(Number(/cmdstat_set:calls=(\d+)/.exec(stats)?.[1] ?? 0) > 0, `server ${p} took a share of the connections`)
  }
  t.equal(sets, n, `all ${n} SETs reached a server`)
  t.equal(gets, n, `all ${n} GETs reached a server`)
  // A write and a read on one connection through sluice (the two servers are independent).
  const script = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])"
  t.equal(run(redisCli!, ['-p', String(port), 'EVAL', script, '1', 'sluice:key', 'through-the-proxy']).trim(), 'through-the-proxy')
  sluice.signal('SIGTERM')
  t.equal((await sluice.exited).code, 0)
  t.notOk(sluice.lines.some((l) => l.level === 'error'), 'no errors logged')
})
