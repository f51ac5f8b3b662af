import t from 'tap'
import { startSluice, tempFile } from '../helpers/spawn.js'
import { run, skipWithout, which } from '../helpers/tools.js'
import { postgresCluster } from '../helpers/servers.js'

const psql = which('psql')

t.test('psql against PostgreSQL through sluice', async (t) => {
  if (skipWithout(t, { psql })) return
  const pg = await postgresCluster(t)
  if (pg === undefined) return
  pg.start()
  const port = pg.port

  const sluice = startSluice(t, tempFile('pg.yaml', `
listeners: [{ name: pg, listen: 127.0.0.1:0, pool: pg }]
pools:
  pg: { algorithm: least-connections, backends: [127.0.0.1:${port}] }
`))
  const via = await sluice.port('pg')
  const q = (sql: string): string => run(psql!, ['-X', '-A', '-t', '-h', '127.0.0.1', '-p', String(via), '-U', 'postgres', '-d', 'postgres', '-c', sql]).trim()
  t.equal(q('select 40 + 2'), '42', 'a query through sluice')
  t.equal(q("select length(string_agg(md5(i::text), '')) from generate_series(1, 50000) i"), String(50000 * 32), 'a larger result')
  t.equal(q("select length(repeat('x', 4000000))"), '4000000')
  t.equal(q('select sum(length(s)) from (select repeat(\'y\', 1000000) s) x'), '1000000')
  const big = q("select repeat('z', 2000000)")
  t.equal(big.length, 2_000_000, '2 MB of result bytes back through the proxy')
  const addr = q('select inet_client_addr()')
  t.equal(addr, '127.0.0.1', 'the server sees sluice as its client (loopback)')
  sluice.signal('SIGTERM')
  t.equal((await sluice.exited).code, 0)
  const access = sluice.lines.filter((l) => l.access === true)
  t.equal(access.length, 6, 'one access-log line per psql connection')
  t.ok(access.every((l) => l.backend === `127.0.0.1:${port}` && l.close_reason === 'client_closed'), 'each ended by the client, normally')
})
