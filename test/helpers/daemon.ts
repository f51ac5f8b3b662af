import { Writable } from 'node:stream'
import { Registry } from 'prom-client'
import type { Test } from 'tap'
import { parseConfig } from '../../src/config/load.js'
import { createLogger } from '../../src/log.js'
import { Daemon } from '../../src/daemon.js'

/** Collects the daemon's pino JSON lines in memory so tests can assert on them. */
export class LogSink extends Writable {
  readonly lines: Record<string, unknown>[] = []
  private waiters: { pred: (l: Record<string, unknown>) => boolean; resolve: (l: Record<string, unknown>) => void }[] = []

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    for (const text of chunk.toString('utf8').split('\n')) {
      if (text.trim() === '') continue
      const line = JSON.parse(text) as Record<string, unknown>
      this.lines.push(line)
      this.waiters = this.waiters.filter((w) => {
        if (!w.pred(line)) return true
        w.resolve(line)
        return false
      })
    }
    cb()
  }

  /** Lines with `access: true`: one per finished connection. */
  get access(): Record<string, unknown>[] {
    return this.lines.filter((l) => l.access === true)
  }

  /** Resolves with the first line (already written or future) that matches. */
  waitFor(pred: (l: Record<string, unknown>) => boolean, timeoutMs = 10_000): Promise<Record<string, unknown>> {
    const found = this.lines.find(pred)
    if (found) return Promise.resolve(found)
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no matching log line within ${timeoutMs}ms`)), timeoutMs)
      this.waiters.push({
        pred,
        resolve: (l) => {
          clearTimeout(timer)
          resolve(l)
        },
      })
    })
  }

  /** Resolves when `n` access-log lines have been written. */
  async waitForAccess(n: number, timeoutMs = 10_000): Promise<Record<string, unknown>[]> {
    const deadline = Date.now() + timeoutMs
    while (this.access.length < n) {
      if (Date.now() > deadline) throw new Error(`only ${this.access.length} of ${n} access-log lines within ${timeoutMs}ms`)
      await new Promise((r) => setTimeout(r, 10))
    }
    return this.access
  }
}

export interface Running {
  daemon: Daemon
  logs: LogSink
  registry: Registry
  /** The real port of a listener. */
  port(listener: string): number
  metrics(): Promise<string>
}

/**
 * SLUICE_TEST_RELAY=js|native runs every in-process daemon of a test with that relay (unless
 * its YAML names one), so the data-path tests hold each relay to the same contract.
 */
export function withRelay(yaml: string): string {
  const relay = process.env.SLUICE_TEST_RELAY
  if (relay === undefined || relay === '' || /^relay:/m.test(yaml)) return yaml
  return `relay: ${relay}\n${yaml}`
}

/** Starts a daemon in this process from YAML text; the test's teardown destroys it. */
export async function startDaemon(t: Test, yaml: string, file = 'test.yaml'): Promise<Running> {
  const config = parseConfig(withRelay(yaml), file, {})
  const logs = new LogSink()
  const log = createLogger(config.log.level, logs)
  const registry = new Registry()
  const daemon = await Daemon.start(config, { log, registry, workerLines: (line) => logs.write(`${line}\n`) })
  t.teardown(() => daemon.destroy())
  return {
    daemon,
    logs,
    registry,
    port: (name) => daemon.listenerAddress(name).port,
    metrics: () => daemon.metricsText(),
  }
}
