import { spawn } from 'node:child_process'
import { readFile } from 'node:fs/promises'
import { connect, type Socket } from 'node:net'
import type { Test } from 'tap'
import { eventually } from './net.js'

/**
 * A TCP port whose handshakes never complete: a child process listens with a backlog of 1
 * and is stopped (SIGSTOP), then the accept queue is filled, so the kernel drops new SYNs.
 */
export async function blackHole(t: Test): Promise<{ port: number; stop: () => void }> {
  const child = spawn(process.execPath, ['-e', `
    const s = require('net').createServer()
    s.listen({ port: 0, host: '127.0.0.1', backlog: 1 }, () => {
      process.stdout.write(String(s.address().port) + '\\n')
      process.kill(process.pid, 'SIGSTOP')
    })`], { stdio: ['ignore', 'pipe', 'inherit'] })
  const stop = (): void => {
    child.kill('SIGKILL')
  }
  t.teardown(stop)
  const port = await new Promise<number>((resolve) => child.stdout.once('data', (d: Buffer) => resolve(Number(d.toString().trim()))))
  await eventually(async () => readFile(`/proc/${child.pid}/stat`, 'utf8').then((s) => s.split(' ')[2] === 'T', () => false), 'the listener process to stop')
  // Fill the accept queue until a connect no longer completes within 2 s (a connect the kernel
  // completes can still be reported late by a busy event loop: 2 s, not less, tells them apart).
  const fillers: Socket[] = []
  t.teardown(() => fillers.forEach((s) => s.destroy()))
  for (let i = 0; i < 16; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect({ port, host: '127.0.0.1' })
      fillers.push(s)
      s.on('error', () => resolve(false))
      const timer = setTimeout(() => resolve(false), 2000)
      s.once('connect', () => {
        clearTimeout(timer)
        resolve(true)
      })
    })
    if (!ok) return { port, stop }
  }
  throw new Error('could not fill the accept queue of the stopped listener')
}
