import t, { type Test } from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { rmSync } from 'node:fs'
import { dirname } from 'node:path'
import { startDaemon, type Running } from '../helpers/daemon.js'
import { eventually } from '../helpers/net.js'
import { tempFile } from '../helpers/spawn.js'
import { which } from '../helpers/tools.js'
import { mariadbClient, mariadbServer, postgresCluster } from '../helpers/servers.js'

/**
 * Login-level database checks against PostgreSQL and MariaDB with their default settings
 * (scram-sha-256 from initdb's pg_hba.conf; mysql_native_password): up while the login works,
 * down with the server's own message when it refuses (all non-reserved connection slots
 * held, a wrong password), up again when it accepts; and the servers log nothing about the
 * probes (MariaDB logged an aborted connection for every anonymous probe).
 */

const psql = which('psql')
// The timeout only bounds a hang, and a login on a busy machine can take longer than the
// 400 ms this once had: a probe that times out is cut off with a reset, which turns "the
// server's words" into a timeout and makes the servers log the reset this file checks they
// never see. (A timeout may not exceed the interval, so transitions take up to 2 s each.)
const timing = 'interval: 2s, timeout: 2s, rise: 1, fall: 1'
const msg = (l: Record<string, unknown>): string => String(l.msg)

/**
 * Keeps `n` clients (`cmd args`, each holding a connection open) running until `held()` says
 * the server has all `n`; a client the server turned away (a probe held a slot at that moment)
 * is replaced. Every client is killed at teardown.
 */
async function hold(t: Test, n: number, cmd: string, args: string[], held: () => number, env: NodeJS.ProcessEnv = process.env): Promise<void> {
  let alive: ChildProcess[] = []
  t.teardown(() => {
    for (const c of alive) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL')
  })
  await eventually(() => {
    alive = alive.filter((c) => c.exitCode === null && c.signalCode === null)
    if (held() >= n) return true
    while (alive.length < n) alive.push(spawn(cmd, args, { stdio: 'ignore', env }))
    return false
  }, `${n} held connections`, 20_000)
}

/**
 * `query` (the superuser's SQL), tried again while the server has no connection for it: the
 * slot kept for the superuser can be held for a moment by a probe that has connected but not
 * yet logged in (MariaDB: 1040 Too many connections; PostgreSQL: too many clients already).
 */
async function asSuperuser(query: () => string, what: string): Promise<string> {
  let out = ''
  await eventually(() => {
    try {
      out = query()
      return true
    } catch (err) {
      if (/1040|Too many connections|too many clients already/i.test(String(err))) return false
      throw err
    }
  }, `a superuser connection for ${what}`, 20_000)
  return out
}

/** Like asSuperuser, for the count `held()` of `hold`: a refused count is "not yet". */
function countOrNone(query: () => string): () => number {
  return () => {
    try {
      return Number(query())
    } catch (err) {
      if (/1040|Too many connections|too many clients already/i.test(String(err))) return -1
      throw err
    }
  }
}

/** The first log line of pool `pool` saying its backend went `state` after line `from`. */
function transition(run: Running, pool: string, state: 'up' | 'down', from = 0): Promise<Record<string, unknown>> {
  return run.logs.waitFor((l) => l.pool === pool && msg(l).includes(` is ${state}: `) && run.logs.lines.indexOf(l) >= from, 20_000)
}

function secretFile(t: Test, text: string): string {
  const file = tempFile('password', `${text}\n`)
  t.teardown(() => rmSync(dirname(file), { recursive: true, force: true }))
  return file
}

t.test('postgres login check against PostgreSQL 15 with scram-sha-256', async (t) => {
  // Five connections, three of them reserved for superusers: two for everyone else.
  const pg = await postgresCluster(t, { hostAuth: 'scram-sha-256', settings: ['max_connections=5'] })
  if (pg === undefined) return
  pg.start()
  t.equal(pg.sql('show password_encryption'), 'scram-sha-256')
  pg.sql("create role probe login password 'probe pw'")
  pg.sql("create role holder login password 'holder pw'")
  const address = `127.0.0.1:${pg.port}`
  const run = await startDaemon(t, `
listeners:
  - { name: a, listen: 127.0.0.1:0, pool: login }
  - { name: b, listen: 127.0.0.1:0, pool: anonymous }
  - { name: c, listen: 127.0.0.1:0, pool: wrong }
pools:
  login:
    backends: [${address}]
    health_check: { type: postgres, user: probe, database: postgres, password_file: ${secretFile(t, 'probe pw')}, ${timing} }
  anonymous:
    backends: [${address}]
    health_check: { type: postgres, ${timing} }
  wrong:
    backends: [${address}]
    health_check: { type: postgres, user: probe, password: not-it, ${timing} }
`)
  const state = (pool: string): string | undefined => run.daemon.pools.get(pool)?.find(address)?.state
  t.equal(state('login'), 'up', 'the login works')
  t.match(run.logs.lines.find((l) => l.pool === 'login' && msg(l).includes('is up')), { detail: /^logged in as probe \(PostgreSQL 15/ })
  t.equal(state('wrong'), 'down', 'a wrong password is down')
  t.match(run.logs.lines.find((l) => l.pool === 'wrong' && msg(l).includes('is down')), { code: 'SLUICE_ERR_HEALTH_CHECK', detail: 'server refused: FATAL 28P01 password authentication failed for user "probe"' })

  // Hold both slots that non-superusers may use.
  const mark = run.logs.lines.length
  const heldPg = countOrNone(() => pg.sql("select count(*) from pg_stat_activity where usename = 'holder'"))
  await hold(t, 2, psql!, ['-X', '-h', '127.0.0.1', '-p', String(pg.port), '-U', 'holder', '-d', 'postgres', '-c', 'select pg_sleep(60)'], heldPg, { ...process.env, PGPASSWORD: 'holder pw' })
  const down = await transition(run, 'login', 'down', mark)
  t.match(down.detail, /^server refused: FATAL 53300 remaining connection slots are reserved for .*superuser/, `the server's words: ${String(down.detail)}`)
  t.equal(state('anonymous'), 'up', 'the anonymous check does not see it: the SSLRequest is still answered')

  const back = run.logs.lines.length
  await asSuperuser(() => pg.sql("select pg_terminate_backend(pid) from pg_stat_activity where usename = 'holder'"), 'ending the holders')
  await transition(run, 'login', 'up', back)
  t.equal(state('login'), 'up', 'up again once a slot is free')

  const log = pg.log().split('\n')
  t.same(log.filter((l) => /could not receive data|connection reset|unexpected EOF|incomplete startup packet/i.test(l)), [], 'PostgreSQL logged no reset or broken start-up for any probe')
})

t.test('mysql login check against MariaDB', async (t) => {
  // MariaDB's smallest max_connections is 10 (one more is kept for SUPER).
  const db = await mariadbServer(t, ['--max-connections=10'])
  if (db === undefined) return
  db.sql("create user probe@'%' identified by 'probe pw'; create user holder@'%' identified by 'holder pw'")
  const address = `127.0.0.1:${db.port}`
  const run = await startDaemon(t, `
listeners:
  - { name: a, listen: 127.0.0.1:0, pool: login }
  - { name: c, listen: 127.0.0.1:0, pool: wrong }
pools:
  login:
    backends: [${address}]
    health_check: { type: mysql, user: probe, password_file: ${secretFile(t, 'probe pw')}, ${timing} }
  wrong:
    backends: [${address}]
    health_check: { type: mysql, user: probe, password: not-it, ${timing} }
`)
  const state = (pool: string): string | undefined => run.daemon.pools.get(pool)?.find(address)?.state
  t.equal(state('login'), 'up', 'the login works')
  t.match(run.logs.lines.find((l) => l.pool === 'login' && msg(l).includes('is up')), { detail: /^logged in as probe \(.*MariaDB/ })
  t.equal(state('wrong'), 'down')
  t.match(run.logs.lines.find((l) => l.pool === 'wrong' && msg(l).includes('is down')), { detail: /^server refused: ERROR 1045 \(28000\): Access denied for user 'probe'@'[^']+' \(using password: YES\)$/ })

  // Hold every connection MariaDB gives a user without SUPER.
  const mark = run.logs.lines.length
  const heldDb = countOrNone(() => db.sql("select count(*) from information_schema.processlist where user = 'holder'"))
  await hold(t, 10, mariadbClient!, ['--no-defaults', '-h', '127.0.0.1', '-P', String(db.port), '-u', 'holder', '-pholder pw', '-e', 'select sleep(60)'], heldDb)
  const down = await transition(run, 'login', 'down', mark)
  t.equal(down.detail, 'server refused: ERROR 1040 (08004): Too many connections', 'the server\'s words')
  const back = run.logs.lines.length
  const holders = await asSuperuser(() => db.sql("select id from information_schema.processlist where user = 'holder'"), 'the holders')
  for (const id of holders.split('\n')) await asSuperuser(() => db.sql(`kill ${id}`), `ending holder ${id}`)
  await transition(run, 'login', 'up', back)
  t.equal(state('login'), 'up', 'up again once a connection is free')
  const passes = async (): Promise<number> => (await run.registry.getSingleMetric('sluice_health_checks_total')?.get())?.values.find((v) => v.labels.pool === 'login' && v.labels.result === 'success')?.value ?? 0
  await eventually(async () => (await passes()) >= 6, 'six passing login checks')
  run.daemon.destroy()
  await eventually(() => db.sql("select count(*) from information_schema.processlist where user = 'probe'") === '0', 'the last probe to have left')

  // What MariaDB logs for a client that leaves without a goodbye: "closed normally without
  // authentication" (the anonymous check) or, once logged in, "Got an error reading
  // communication packets". (A connection it turns away as one too many is logged as aborted
  // too, as the server's own refusal: not counted here.)
  const aborted = (): string[] => db.errorLog().split('\n').filter((l) => /Aborted connection .*(without authentication|user: 'probe')/.test(l))
  t.same(aborted(), [], 'no "Aborted connection" for any login probe (each ends with COM_QUIT)')

  // The anonymous check, for comparison: MariaDB logs each of its probes.
  const anon = await startDaemon(t, `
listeners: [{ name: a, listen: 127.0.0.1:0, pool: anonymous }]
pools:
  anonymous: { backends: [${address}], health_check: { type: mysql, ${timing} } }
`)
  t.equal(anon.daemon.pools.get('anonymous')?.find(address)?.state, 'up')
  await eventually(() => aborted().length >= 2, 'MariaDB to log the anonymous probes as aborted connections')
  t.match(aborted()[0], /Aborted connection \d+ to db: 'unconnected' user: 'unauthenticated'.*without authentication/)
})
