import { chownSync, mkdtempSync, rmSync } from 'node:fs'
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
  start(): void
  stop(): void
}

/**
 * A fresh PostgreSQL cluster (trust authentication, fsync off) in a temporary directory, on
 * a free loopback port, run as the postgres user; not started yet. Undefined, after skipping
 * `t` with the reason, when PostgreSQL, the postgres user or root is missing. Removed at teardown.
 */
export async function postgresCluster(t: Test): Promise<PostgresCluster | undefined> {
  const initdb = postgresBin('initdb')
  const pgCtl = postgresBin('pg_ctl')
  const runuser = which('runuser')
  if (skipWithout(t, { initdb, pg_ctl: pgCtl, runuser })) return undefined
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
  asPostgres(initdb as string, ['-D', data, '--auth=trust', '-U', 'postgres', '--no-sync'])
  t.teardown(() => {
    try {
      asPostgres(pgCtl as string, ['-D', data, '-m', 'immediate', 'stop'])
    } catch {
      // not running
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
  return {
    port,
    start: () => void asPostgres(pgCtl as string, ['-D', data, '-l', join(dir, 'log'), '-w', '-o', `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`, 'start']),
    stop: () => void asPostgres(pgCtl as string, ['-D', data, '-m', 'fast', '-w', 'stop']),
  }
}
