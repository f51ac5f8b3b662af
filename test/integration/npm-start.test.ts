import t from 'tap'
import { spawn } from 'node:child_process'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { eventually, greeting, namedBackend } from '../helpers/net.js'
import { runCli, tempFile } from '../helpers/spawn.js'
import { skipWithout, which } from '../helpers/tools.js'

const root = join(import.meta.dirname ?? new URL('.', import.meta.url).pathname, '../..')
const npm = which('npm')

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/** The parent pid of `pid`, from /proc (field 4 of /proc/PID/stat, after the command in parentheses). */
function parentOf(pid: number): number | undefined {
  const stat = `/proc/${pid}/stat`
  if (!existsSync(stat)) return undefined
  const text = readFileSync(stat, 'utf8')
  return Number(text.slice(text.lastIndexOf(')') + 2).split(' ')[1])
}

t.test('npm start: sluice runs as npm\'s own child, logs its pid, and a SIGHUP to that pid reloads it', async (t) => {
  if (skipWithout(t, { npm })) return
  const a = await namedBackend(t, 'a')
  const b = await namedBackend(t, 'b')
  const yaml = (backend: string): string => `
admin: { listen: "127.0.0.1:0" }
log: { level: info, access_log: false }
listeners: [{ name: l, listen: "127.0.0.1:0", pool: p }]
pools:
  p: { backends: ["${backend}"] }
`
  const file = tempFile('npm-start.yaml', yaml(a.address))
  // --ignore-scripts skips prestart (the build the test run has done already), not start itself.
  const child = spawn(npm!, ['start', '--ignore-scripts', '--', '--config', file], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] })
  const lines: Record<string, unknown>[] = []
  let out = ''
  let err = ''
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString()
    let nl: number
    while ((nl = out.indexOf('\n')) >= 0) {
      const line = out.slice(0, nl)
      out = out.slice(nl + 1)
      // npm prints its own "> sluice@... start" banner before sluice's JSON lines.
      if (line.startsWith('{')) lines.push(JSON.parse(line) as Record<string, unknown>)
    }
  })
  child.stderr.on('data', (d: Buffer) => (err += d.toString()))
  // 'close': npm has exited and the last byte of its stdout (sluice's log) is in.
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()))
  let sluicePid: number | undefined
  t.teardown(async () => {
    if (sluicePid !== undefined && alive(sluicePid)) process.kill(sluicePid, 'SIGKILL')
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    await exited
  })
  const find = (pred: (l: Record<string, unknown>) => boolean): Record<string, unknown> | undefined => lines.find(pred)
  await eventually(() => find((l) => l.msg === 'sluice started') !== undefined || child.exitCode !== null, 'sluice to start under npm', 20_000)
  const started = find((l) => l.msg === 'sluice started')
  if (started === undefined) throw new Error(`npm start exited: ${err}`)

  const pid = Number(started.pid)
  sluicePid = pid
  t.not(pid, child.pid, 'the start-up line gives sluice\'s own pid, not npm\'s')
  const parent = parentOf(pid)
  if (parent !== undefined) t.equal(parent, child.pid, 'no shell between npm and sluice: the script execs node')
  await eventually(() => find((l) => l.npm_pid !== undefined) !== undefined, 'the line on which pid to signal')
  t.match(find((l) => l.npm_pid !== undefined), { npm_pid: child.pid, pid }, 'a start-up line says which pid to signal')
  const admin = `http://${String(started.admin)}`
  const status = await runCli(['status', '--json', '--admin', admin])
  t.equal(status.code, 0, status.stderr)
  t.equal((JSON.parse(status.stdout) as { pid: number }).pid, pid, 'sluice status gives the same pid')

  const listen = (started.listeners as { name: string; listen: string }[])[0]?.listen ?? ''
  const port = Number(listen.slice(listen.lastIndexOf(':') + 1))
  t.equal(await greeting(port), 'a')
  writeFileSync(file, yaml(b.address))
  process.kill(pid, 'SIGHUP')
  await eventually(() => find((l) => l.msg === 'configuration reloaded') !== undefined, 'the SIGHUP reload')
  t.equal(await greeting(port), 'b', 'the reload took effect')
  t.ok(alive(pid), 'sluice still runs')
  t.equal(child.exitCode, null, 'and so does npm, its parent')
  t.equal(parentOf(pid) ?? child.pid, child.pid, 'sluice is not orphaned')

  // npm passes SIGTERM on: sluice stops and npm exits with it.
  child.kill('SIGTERM')
  await exited
  await eventually(() => !alive(pid), 'sluice to exit')
  t.ok(find((l) => l.msg === 'sluice stopped'), 'sluice stopped cleanly')
})
