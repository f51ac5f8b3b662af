import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { existsSync, readdirSync } from 'node:fs'
import type { Test } from 'tap'

/** The full path of `cmd` on PATH (or one of `extraDirs`), or undefined when it is not installed. */
export function which(cmd: string, extraDirs: string[] = []): string | undefined {
  for (const dir of [...(process.env.PATH ?? '').split(':'), ...extraDirs]) {
    if (dir !== '' && existsSync(`${dir}/${cmd}`)) return `${dir}/${cmd}`
  }
  return undefined
}

/** Debian keeps PostgreSQL's server programs under /usr/lib/postgresql/VERSION/bin. */
export function postgresBin(cmd: string): string | undefined {
  const base = '/usr/lib/postgresql'
  if (!existsSync(base)) return which(cmd)
  const versions = readdirSync(base).sort((a, b) => Number(b) - Number(a))
  for (const v of versions) if (existsSync(`${base}/${v}/bin/${cmd}`)) return `${base}/${v}/bin/${cmd}`
  return which(cmd)
}

/** Runs a program to completion and returns its stdout; throws with its stderr on failure. */
export function run(cmd: string, args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): string {
  return execFileSync(cmd, args, { encoding: 'utf8', maxBuffer: 256 * 1024 * 1024, timeout: opts.timeoutMs ?? 60_000, env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] })
}

/** Starts a long-running server process; it is killed at teardown. */
export function daemon(t: Test, cmd: string, args: string[]): ChildProcess {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] })
  let err = ''
  child.stderr?.on('data', (d: Buffer) => (err += d.toString()))
  child.on('exit', (code) => {
    if (code !== null && code !== 0) process.stderr.write(`${cmd} exited ${code}: ${err}\n`)
  })
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL')
  })
  return child
}

/** Skips the test with a message naming what is missing; returns true when it skipped. */
export function skipWithout(t: Test, tools: Record<string, string | undefined>): boolean {
  const missing = Object.entries(tools).filter(([, path]) => path === undefined).map(([name]) => name)
  if (missing.length === 0) return false
  t.skip(`needs ${missing.join(', ')} (not installed here; .ci/run installs them with apt-get)`, () => {})
  return true
}
