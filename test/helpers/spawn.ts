import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Test } from 'tap'

export const MAIN = join(import.meta.dirname ?? new URL('.', import.meta.url).pathname, '../../dist/main.js')

/** Writes `text` to a fresh temporary file and returns its path. */
export function tempFile(name: string, text: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-test-'))
  const file = join(dir, name)
  writeFileSync(file, text)
  return file
}

export interface Exited {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

/** Runs the compiled CLI to completion (bounded by `timeoutMs`). */
export function runCli(args: string[], timeoutMs = 20_000, env: NodeJS.ProcessEnv = process.env): Promise<Exited> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MAIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`sluice ${args.join(' ')} did not exit within ${timeoutMs}ms; stdout: ${stdout} stderr: ${stderr}`))
    }, timeoutMs)
    child.on('exit', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr })
    })
  })
}

/** A daemon running as a child process, with its JSON log lines parsed as they arrive. */
export class SluiceProcess {
  readonly lines: Record<string, unknown>[] = []
  stderr = ''
  readonly exited: Promise<Exited>
  private buf = ''
  private stdout = ''

  constructor(readonly child: ChildProcess) {
    child.stdout?.on('data', (d: Buffer) => {
      this.stdout += d.toString()
      this.buf += d.toString()
      let nl: number
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, nl)
        this.buf = this.buf.slice(nl + 1)
        if (line.trim() !== '') this.lines.push(JSON.parse(line) as Record<string, unknown>)
      }
    })
    child.stderr?.on('data', (d: Buffer) => (this.stderr += d.toString()))
    this.exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal, stdout: this.stdout, stderr: this.stderr })))
  }

  /** Waits for a log line matching `pred` (bounded by `timeoutMs`). */
  async waitFor(pred: (l: Record<string, unknown>) => boolean, what: string, timeoutMs = 60_000): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const hit = this.lines.find(pred)
      if (hit) return hit
      if (Date.now() > deadline) throw new Error(`no log line for ${what} within ${timeoutMs}ms; stderr: ${this.stderr}`)
      if (this.child.exitCode !== null) throw new Error(`sluice exited (${this.child.exitCode}) before ${what}; stderr: ${this.stderr}`)
      await new Promise((r) => setTimeout(r, 10))
    }
  }

  /** The bound port of listener `name`, from the start-up (or reload) summary line. */
  async port(name: string, msg = 'sluice started'): Promise<number> {
    const line = await this.waitFor((l) => l.msg === msg, msg)
    const l = (line.listeners as { name: string; listen: string }[]).find((x) => x.name === name)
    if (!l) throw new Error(`no listener ${name} in ${JSON.stringify(line)}`)
    return Number(l.listen.slice(l.listen.lastIndexOf(':') + 1))
  }

  signal(sig: NodeJS.Signals): void {
    this.child.kill(sig)
  }
}

/** Starts `sluice run -c FILE` in a child process; killed at teardown if still running. */
export function startSluice(t: Test, configFile: string, env: NodeJS.ProcessEnv = process.env): SluiceProcess {
  const child = spawn(process.execPath, [MAIN, 'run', '--config', configFile], { stdio: ['ignore', 'pipe', 'pipe'], env })
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  return new SluiceProcess(child)
}
