import { spawn, type ChildProcess } from 'node:child_process'
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Test } from 'tap'
import { deadPort, eventually } from './net.js'
import { daemon, postgresBin, run, skipWithout, which } from './tools.js'

export const redisServer = which('redis-server')
export const redisCli = which('redis-cli')

/**
 * Starts `count` redis-servers on free loopback ports (killed at teardown) and resolves with
 * their ports once each answers PING. Callers check the tools with skipWithout first.
 */
export async function startRedisServers(t: Test, count: number, extra: string[] = []): Promise<number[]> {
  const ports: number[] = []
  for (let i = 0; i < count; i++) ports.push(await deadPort())
  for (const port of ports) {
    daemon(t, redisServer as string, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', ...extra])
  }
  for (const port of ports) {
    await eventually(() => {
      try {
        return run(redisCli as string, ['-p', String(port), 'PING']).trim() === 'PONG'
      } catch {
        return false
      }
    }, `redis-server on ${port}`)
  }
  return ports
}

export interface PostgresCluster {
  port: number
  /** The directory of the Unix socket (psql -h DIR): local connections are trusted. */
  socketDir: string
  start(): void
  stop(): void
  /** Runs SQL as the superuser over the Unix socket; returns psql's unaligned output. */
  sql(statement: string): string
  /** The server's log so far. */
  log(): string
}

export interface PostgresOptions {
  /** How TCP (host) connections authenticate: trust (default), or scram-sha-256 as most installations. */
  hostAuth?: 'trust' | 'scram-sha-256'
  /** Extra `-c name=value` settings given at start. */
  settings?: string[]
}

/**
 * A fresh PostgreSQL cluster (fsync off) in a temporary directory, on a free loopback port,
 * run as the postgres user; not started yet. TCP connections are trusted, or with
 * `hostAuth: scram-sha-256` authenticate as initdb writes it into pg_hba.conf (the superuser
 * postgres then has a random password nobody uses; the Unix socket stays trusted).
 * Undefined, after skipping `t` with the reason, when PostgreSQL, the postgres user or root
 * is missing. Removed at teardown.
 */
export async function postgresCluster(t: Test, opts: PostgresOptions = {}): Promise<PostgresCluster | undefined> {
  const initdb = postgresBin('initdb')
  const pgCtl = postgresBin('pg_ctl')
  const psql = which('psql')
  const runuser = which('runuser')
  if (skipWithout(t, { initdb, pg_ctl: pgCtl, psql, runuser })) return undefined
  if (process.getuid?.() !== 0) {
    t.skip('needs root to run PostgreSQL as the postgres user', () => {})
    return undefined
  }
  let uid: number
  try {
    uid = Number(run('id', ['-u', 'postgres']).trim())
  } catch {
    t.skip('needs the postgres system user (Debian package postgresql creates it)', () => {})
    return undefined
  }
  const dir = mkdtempSync(join(tmpdir(), 'sluice-pg-'))
  chownSync(dir, uid, uid)
  const data = join(dir, 'data')
  const port = await deadPort()
  const asPostgres = (cmd: string, args: string[]): string => run(runuser as string, ['-u', 'postgres', '--', cmd, ...args], { timeoutMs: 120_000 })
  const auth = opts.hostAuth === 'scram-sha-256' ? ['--auth-local=trust', '--auth-host=scram-sha-256'] : ['--auth=trust']
  if (opts.hostAuth === 'scram-sha-256') {
    writeFileSync(join(dir, 'pwfile'), `${Math.random().toString(36).slice(2)}\n`)
    chownSync(join(dir, 'pwfile'), uid, uid)
    auth.push(`--pwfile=${join(dir, 'pwfile')}`)
  }
  asPostgres(initdb as string, ['-D', data, ...auth, '-U', 'postgres', '--no-sync'])
  t.teardown(() => {
    try {
      asPostgres(pgCtl as string, ['-D', data, '-m', 'immediate', 'stop'])
    } catch {
      // not running
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
  const settings = ['listen_addresses=127.0.0.1', 'fsync=off', ...(opts.settings ?? [])].map((x) => `-c ${x}`).join(' ')
  const logFile = join(dir, 'log')
  return {
    port,
    socketDir: dir,
    start: () => void asPostgres(pgCtl as string, ['-D', data, '-l', logFile, '-w', '-o', `-p ${port} -k ${dir} ${settings}`, 'start']),
    stop: () => void asPostgres(pgCtl as string, ['-D', data, '-m', 'fast', '-w', 'stop']),
    sql: (statement) => run(psql as string, ['-X', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-h', dir, '-p', String(port), '-U', 'postgres', '-d', 'postgres', '-c', statement]).trim(),
    log: () => (existsSync(logFile) ? readFileSync(logFile, 'utf8') : ''),
  }
}

/** `n` different free loopback ports (two calls of deadPort may name the same one). */
export async function freePorts(n: number): Promise<number[]> {
  const out = new Set<number>()
  for (let tries = 0; out.size < n && tries < n * 20; tries++) out.add(await deadPort())
  if (out.size < n) throw new Error(`could not find ${n} different free ports`)
  return [...out]
}

/** A server process that can be stopped and started again on the same ports. */
export interface ProcessServer {
  start(): Promise<void>
  stop(): Promise<void>
}

/** Whether something accepts TCP connections on 127.0.0.1:port (connecting from `from`, when given). */
export function accepts(port: number, from?: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ port, host: '127.0.0.1', ...(from !== undefined ? { localAddress: from } : {}) })
    s.once('connect', () => (s.destroy(), resolve(true)))
    s.once('error', () => resolve(false))
  })
}

/**
 * Runs `cmd args` as a server in the foreground: start waits until every port accepts TCP,
 * stop sends SIGTERM and waits until the process has exited and no port accepts. Killed at
 * teardown if still running. `readyFrom`: the loopback address those connects come from, so
 * a test can tell them from its own in the server's log; `ready`: a test of readiness that
 * needs no connect at all (start also waits for it), given how many starts came before.
 */
export function processServer(t: Test, ports: number[], cmd: string, args: string[], opts: { readyFrom?: string; ready?: (starts: number) => boolean } = {}): ProcessServer {
  const readyFrom = opts.readyFrom
  let starts = 0
  let child: ChildProcess | undefined
  let stderr = ''
  const server: ProcessServer = {
    async start() {
      stderr = ''
      const c = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] })
      c.stderr?.on('data', (d: Buffer) => (stderr += d.toString()))
      child = c
      const ready = opts.ready
      const before = starts++
      await eventually(async () => {
        if (c.exitCode !== null) throw new Error(`${cmd} exited ${c.exitCode}: ${stderr}`)
        if (ready !== undefined) return ready(before)
        return (await Promise.all(ports.map((p) => accepts(p, readyFrom)))).every(Boolean)
      }, `${cmd} to accept on ${ports.join(', ')}`, 30_000)
    },
    async stop() {
      const c = child
      child = undefined
      if (c === undefined || c.exitCode !== null || c.signalCode !== null) return
      const exited = new Promise((resolve) => c.once('exit', resolve))
      c.kill('SIGTERM')
      await exited
      await eventually(async () => !(await Promise.all(ports.map((p) => accepts(p, readyFrom)))).some(Boolean), `ports ${ports.join(', ')} to close`, 10_000)
    },
  }
  t.teardown(async () => {
    const c = child
    if (c === undefined || c.exitCode !== null || c.signalCode !== null) return
    const exited = new Promise((resolve) => c.once('exit', resolve))
    c.kill('SIGTERM')
    const timer = setTimeout(() => c.kill('SIGKILL'), 5000)
    await exited
    clearTimeout(timer)
  })
  return server
}

/** Postfix's master daemon (Debian package postfix). */
export const postfixMaster = which('master', ['/usr/lib/postfix/sbin'])

export interface PostfixInstance {
  port: number
  server: ProcessServer
  /** Postfix's log (maillog_file) so far. */
  maillog(): string
}

/**
 * A Postfix instance of its own in a temporary directory: main.cf and master.cf written there,
 * its queue made as `postfix check` would, an smtpd on a free loopback port, logging to a file
 * there (postlogd), no mail delivered anywhere. `main` adds main.cf settings (for example
 * `smtpd_upstream_proxy_protocol: haproxy`); everything else is Postfix's default. The master
 * runs in the foreground as root and its daemons as the postfix user, as in a normal
 * installation; no system service is touched. Its readiness is read from its log. Undefined, after skipping `t`, when Postfix,
 * its users or root are missing.
 */
export async function postfixInstance(t: Test, main: Record<string, string> = {}): Promise<PostfixInstance | undefined> {
  if (skipWithout(t, { 'postfix (Debian package postfix)': postfixMaster })) return undefined
  if (process.getuid?.() !== 0) {
    t.skip('needs root: the Postfix master binds as root and runs its daemons as the postfix user', () => {})
    return undefined
  }
  let postfixUid: number
  let postdropGid: number
  try {
    postfixUid = Number(run('id', ['-u', 'postfix']).trim())
    postdropGid = Number(run('getent', ['group', 'postdrop']).split(':')[2])
  } catch {
    t.skip('needs the postfix user and postdrop group (Debian package postfix creates them)', () => {})
    return undefined
  }
  const dir = mkdtempSync(join(tmpdir(), 'sluice-postfix-'))
  chmodSync(dir, 0o755)
  const queue = join(dir, 'queue')
  mkdirSync(join(queue, 'pid'), { recursive: true, mode: 0o755 })
  for (const d of ['active', 'bounce', 'corrupt', 'defer', 'deferred', 'flush', 'hold', 'incoming', 'private', 'saved', 'trace']) {
    mkdirSync(join(queue, d), { mode: 0o700 })
    chownSync(join(queue, d), postfixUid, 0)
  }
  for (const [d, mode] of [['maildrop', 0o730], ['public', 0o710]] as const) {
    mkdirSync(join(queue, d))
    chmodSync(join(queue, d), mode)
    chownSync(join(queue, d), postfixUid, postdropGid)
  }
  mkdirSync(join(dir, 'data'))
  chownSync(join(dir, 'data'), postfixUid, 0)
  const port = await deadPort()
  const settings: Record<string, string> = {
    compatibility_level: '3.6',
    queue_directory: queue,
    data_directory: join(dir, 'data'),
    mail_owner: 'postfix',
    setgid_group: 'postdrop',
    inet_interfaces: '127.0.0.1',
    inet_protocols: 'ipv4',
    myhostname: 'mail.sluice.test',
    mydestination: '',
    alias_maps: '',
    alias_database: '',
    maillog_file: join(dir, 'maillog'),
    maillog_file_prefixes: dir,
    ...main,
  }
  writeFileSync(join(dir, 'main.cf'), Object.entries(settings).map(([k, v]) => `${k} = ${v}\n`).join(''))
  writeFileSync(join(dir, 'master.cf'), [
    `127.0.0.1:${port} inet n - n - - smtpd`,
    'postlog unix-dgram n - n - 1 postlogd',
    'anvil unix - - n - 1 anvil',
    'rewrite unix - - n - - trivial-rewrite',
    'cleanup unix n - n - 0 cleanup',
    'proxymap unix - - n - - proxymap',
    '',
  ].join('\n'))
  // Ready once the master has opened its listeners and says so (no connect, which Postfix
  // would log); the connects that wait for the port to close come from 127.0.0.2.
  const maillog = (): string => (existsSync(join(dir, 'maillog')) ? readFileSync(join(dir, 'maillog'), 'utf8') : '')
  const ready = (before: number): boolean => (maillog().match(/postfix\/master\[\d+\]: daemon started/g) ?? []).length > before
  const server = processServer(t, [port], postfixMaster as string, ['-c', dir, '-d'], { readyFrom: '127.0.0.2', ready })
  t.teardown(async () => {
    await server.stop()
    rmSync(dir, { recursive: true, force: true })
  })
  return {
    port,
    server,
    maillog,
  }
}

export const dovecot = which('dovecot', ['/usr/sbin'])

/**
 * A Dovecot configuration in `dir` serving IMAP and POP3 on the given loopback ports, logging
 * to `dir`/dovecot.log. With `haproxy`, both listeners expect a PROXY header from 127.0.0.0/8
 * (`haproxy = yes`, `haproxy_trusted_networks`); every other setting is Dovecot's default.
 */
export function dovecotConf(dir: string, imapPort: number, pop3Port: number, opts: { haproxy?: boolean } = {}): string {
  mkdirSync(join(dir, 'mail'), { recursive: true })
  const conf = join(dir, 'dovecot.conf')
  const haproxy = opts.haproxy === true ? '    haproxy = yes\n' : ''
  writeFileSync(conf, `base_dir = ${dir}/run
state_dir = ${dir}/state
log_path = ${dir}/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
ssl = no
mail_location = maildir:${dir}/mail/%u
${opts.haproxy === true ? 'haproxy_trusted_networks = 127.0.0.0/8\n' : ''}passdb {
  driver = static
  args = password=unused
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=${dir}/mail/%u
}
service imap-login {
  chroot =
  inet_listener imap {
    port = ${imapPort}
${haproxy}  }
  inet_listener imaps {
    port = 0
  }
}
service pop3-login {
  chroot =
  inet_listener pop3 {
    port = ${pop3Port}
${haproxy}  }
  inet_listener pop3s {
    port = 0
  }
}
service anvil {
  chroot =
}
`)
  return conf
}

export const mariadbd = which('mariadbd', ['/usr/sbin'])
export const mariadbInstallDb = which('mariadb-install-db')
export const mariadbClient = which('mariadb')

export interface MariadbServer {
  port: number
  /** Runs SQL as root over the Unix socket (root authenticates by its system user); returns the rows, tab-separated. */
  sql(statement: string): string
  /** The server's error log so far. */
  errorLog(): string
}

/**
 * A MariaDB server of its own: a fresh data directory (mariadb-install-db) in a temporary
 * directory, mariadbd on a free loopback port, run as the mysql user, with its error log
 * there and the server's defaults otherwise (`settings` adds `--name=value` options).
 * Started; stopped and removed at teardown. Undefined, after skipping `t`, when MariaDB,
 * the mysql user or root are missing.
 */
export async function mariadbServer(t: Test, settings: string[] = []): Promise<MariadbServer | undefined> {
  if (skipWithout(t, { 'mariadbd (Debian package mariadb-server)': mariadbd, 'mariadb-install-db': mariadbInstallDb, 'mariadb (client)': mariadbClient })) return undefined
  if (process.getuid?.() !== 0) {
    t.skip('needs root to run mariadbd as the mysql user', () => {})
    return undefined
  }
  let uid: number
  try {
    uid = Number(run('id', ['-u', 'mysql']).trim())
  } catch {
    t.skip('needs the mysql system user (Debian package mariadb-server creates it)', () => {})
    return undefined
  }
  const dir = mkdtempSync(join(tmpdir(), 'sluice-mariadb-'))
  chownSync(dir, uid, uid)
  const data = join(dir, 'data')
  const socket = join(dir, 'sock')
  const errLog = join(dir, 'error.log')
  run(mariadbInstallDb as string, ['--no-defaults', `--datadir=${data}`, '--user=mysql', '--auth-root-authentication-method=socket', '--skip-test-db'], { timeoutMs: 120_000 })
  const port = await deadPort()
  const sql = (statement: string): string => run(mariadbClient as string, ['--no-defaults', '-S', socket, '-u', 'root', '-N', '-B', '-e', statement]).trim()
  // Ready when root can log in over the socket: a bare TCP connect would be logged as aborted.
  const ready = (): boolean => {
    try {
      return sql('select 1') === '1'
    } catch {
      return false
    }
  }
  const server = processServer(t, [port], mariadbd as string, [
    '--no-defaults', `--datadir=${data}`, '--user=mysql', `--port=${port}`, '--bind-address=127.0.0.1',
    `--socket=${socket}`, `--pid-file=${join(dir, 'pid')}`, `--log-error=${errLog}`, '--innodb-buffer-pool-size=16M', ...settings,
  ], { readyFrom: '127.0.0.2', ready })
  t.teardown(async () => {
    await server.stop()
    rmSync(dir, { recursive: true, force: true })
  })
  await server.start()
  return {
    port,
    sql,
    errorLog: () => (existsSync(errLog) ? readFileSync(errLog, 'utf8') : ''),
  }
}
