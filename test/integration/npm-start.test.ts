import t, { type Test } from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { dial, eventually, greeting, namedBackend, readUntil } from '../helpers/net.js'
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

/** sluice under `npm start`: npm's child process, sluice's parsed log lines and its start-up line. */
interface NpmStarted {
  child: ChildProcess
  /** npm has exited and the last byte of its stdout (sluice's log) is in. */
  exited: Promise<void>
  find(pred: (l: Record<string, unknown>) => boolean): Record<string, unknown> | undefined
  started: Record<string, unknown>
}

/**
 * Runs `npm start -- --config FILE` and waits for sluice's start-up line. `detached`: npm
 * leads a process group of its own, as a terminal's foreground job does, so a signal to
 * that group reaches npm and sluice both, as Ctrl-C does.
 */
async function npmStart(t: Test, file: string, detached = false): Promise<NpmStarted> {
  // --ignore-scripts skips prestart (the build the test run has done already), not start itself.
  const child = spawn(npm!, ['start', '--ignore-scripts', '--', '--config', file], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'], detached })
  const lines: Record<string, unknown>[] = []
  let out = ''
  let err = ''
  child.stdout?.on('data', (d: Buffer) => {
    out += d.toString()
    let nl: number
    while ((nl = out.indexOf('\n')) >= 0) {
      const line = out.slice(0, nl)
      out = out.slice(nl + 1)
      // npm prints its own "> sluice@... start" banner before sluice's JSON lines.
      if (line.startsWith('{')) lines.push(JSON.parse(line) as Record<string, unknown>)
    }
  })
  child.stderr?.on('data', (d: Buffer) => (err += d.toString()))
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()))
  const find = (pred: (l: Record<string, unknown>) => boolean): Record<string, unknown> | undefined => lines.find(pred)
  t.teardown(async () => {
    const pid = Number(find((l) => l.msg === 'sluice started')?.pid ?? 0)
    if (pid > 0 && alive(pid)) process.kill(pid, 'SIGKILL')
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    await exited
  })
  // Only bounds a hang: npm itself takes seconds to start on a busy machine.
  await eventually(() => find((l) => l.msg === 'sluice started') !== undefined || child.exitCode !== null, 'sluice to start under npm', 60_000)
  const started = find((l) => l.msg === 'sluice started')
  if (started === undefined) throw new Error(`npm start exited: ${err}`)
  return { child, exited, find, started }
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
  const { child, exited, find, started } = await npmStart(t, file)
  const pid = Number(started.pid)
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

t.test('npm start and Ctrl-C: the terminal\'s SIGINT and the copy npm passes on make one graceful stop', async (t) => {
  if (skipWithout(t, { npm })) return
  const be = await namedBackend(t, 'be')
  const file = tempFile('npm-ctrl-c.yaml', `
shutdown_timeout: 1h
log: { level: info, access_log: true }
listeners: [{ name: l, listen: "127.0.0.1:0", pool: p }]
pools:
  p: { backends: ["${be.address}"] }
`)
  const { child, exited, find, started } = await npmStart(t, file, true)
  const pid = Number(started.pid)
  const listen = (started.listeners as { name: string; listen: string }[])[0]?.listen ?? ''
  const open = await dial(Number(listen.slice(listen.lastIndexOf(':') + 1)))
  t.teardown(() => open.destroy())
  t.equal((await readUntil(open, 'line')).toString(), 'be\n', 'a connection is open')

  // Ctrl-C: SIGINT to every process of the job.
  process.kill(-child.pid!, 'SIGINT')
  const says = (start: string) => (): boolean => find((l) => typeof l.msg === 'string' && l.msg.startsWith(start)) !== undefined
  // npm's copy usually comes as a second signal, logged; when it reaches sluice while the
  // terminal's is still pending, the kernel merges the two into one. Either way: one stop.
  await eventually(() => says('sluice stopping')() || says('second stop signal')(), 'the stop')
  t.ok(says('sluice stopping')(), 'a graceful stop')
  open.write('still works\n')
  t.equal((await readUntil(open, 'line')).toString(), 'still works\n', 'the open connection keeps working during the drain')
  t.comment(says('SIGINT again from npm')() ? "npm's copy came as a second signal" : "npm's copy was merged with the terminal's")
  t.notOk(find((l) => l.msg === 'second stop signal: exiting now'), 'the copy is not taken for a second Ctrl-C')
  t.ok(alive(pid), 'sluice waits for it')
  open.end()
  await exited
  await eventually(() => !alive(pid), 'sluice to exit')
  t.ok(find((l) => l.access === true && l.close_reason === 'client_closed'), 'the connection finished on its own')
  t.ok(find((l) => l.msg === 'sluice stopped'), 'sluice stopped cleanly')
})
