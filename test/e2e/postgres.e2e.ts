import t from 'tap'
import { chownSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { deadPort } from '../helpers/net.js'
import { startSluice, tempFile } from '../helpers/spawn.js'
import { postgresBin, run, skipWithout, which } from '../helpers/tools.js'

const initdb = postgresBin('initdb')
const pgCtl = postgresBin('pg_ctl')
const psql = which('psql')
const runuser = which('runuser')

t.test('psql against PostgreSQL through sluice', async (t) => {
  if (skipWithout(t, { initdb, pg_ctl: pgCtl, psql, runuser })) return
  let uid: number
  try {
    uid = Number(run('id', ['-u', 'postgres']).trim())
  } catch {
    t.skip('needs the postgres system user (Debian package postgresql creates it)', () => {})
    return
  }
  if (process.getuid?.() !== 0) {
    t.skip('needs root to run PostgreSQL as the postgres user', () => {})
    return
  }
  const dir = mkdtempSync(join(tmpdir(), 'sluice-pg-'))
  chownSync(dir, uid, uid)
  const data = join(dir, 'data')
  const port = await deadPort()
  const asPostgres = (cmd: string, args: string[]): string => run(runuser!, ['-u', 'postgres', '--', cmd, ...args], { timeoutMs: 120_000 })
  asPostgres(initdb!, ['-D', data, '--auth=trust', '-U', 'postgres', '--no-sync'])
  asPostgres(pgCtl!, ['-D', data, '-l', join(dir, 'log'), '-w', '-o', `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`, 'start'])
  t.teardown(() => {
    try {
      asPostgres(pgCtl!, ['-D', data, '-m', 'immediate', 'stop'])
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })

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
