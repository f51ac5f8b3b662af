import { existsSync } from 'node:fs'
import { Worker } from 'node:worker_threads'
import { Registry } from 'prom-client'
import type { Config } from '../config/types.js'
import type { Logger } from '../log.js'
import { DataPlane } from '../data/data-plane.js'
import { dispatch } from '../data/worker-dispatch.js'
import type { SharedCounters } from './shared-counters.js'
import type { SourceTables } from './source-tables.js'
import type { FromWorker, ToWorker } from './messages.js'

/** Messages that expect an answer, and the answer each gets. */
type Request = Extract<ToWorker, { type: 'prepare' | 'commit' | 'stats' | 'stop' }>
type Answer<R extends Request> = R extends { type: 'prepare' } ? Extract<FromWorker, { type: 'prepared' }> : R extends { type: 'commit' } ? Extract<FromWorker, { type: 'committed' }> : R extends { type: 'stats' } ? Extract<FromWorker, { type: 'stats' }> : Extract<FromWorker, { type: 'stopped' }>

/**
 * The control plane's handle on one data-plane worker: messages out, answers matched by
 * `seq`, and everything else the worker says (failed connects, log lines) to `onEvent`.
 */
export abstract class WorkerLink {
  private readonly waiting = new Map<number, (m: FromWorker) => void>()
  /** Set when the worker is gone; pending requests fail with it. */
  protected gone: Error | undefined

  constructor(
    readonly id: number,
    protected readonly onEvent: (link: WorkerLink, m: FromWorker) => void,
  ) {}

  abstract send(msg: ToWorker, config?: Config): void
  abstract terminate(): Promise<void>

  /** Sends `msg` and resolves with the worker's answer to it. */
  request<R extends Request>(msg: R, config?: Config): Promise<Answer<R>> {
    if (this.gone !== undefined) return Promise.reject(this.gone)
    return new Promise((resolve, reject) => {
      this.waiting.set(msg.seq, (m) => (m.type === 'fatal' ? reject(new Error(m.message)) : resolve(m as Answer<R>)))
      this.send(msg, config)
    })
  }

  protected received(m: FromWorker): void {
    if ('seq' in m) {
      const w = this.waiting.get(m.seq)
      if (w !== undefined) {
        this.waiting.delete(m.seq)
        w(m)
        return
      }
    }
    this.onEvent(this, m)
  }

  protected failAll(err: Error): void {
    this.gone = err
    const waiting = [...this.waiting.values()]
    this.waiting.clear()
    for (const w of waiting) w({ type: 'fatal', message: err.message })
  }
}

/**
 * The data plane of a one-worker daemon, in the control plane's own thread: the same
 * messages, delivered by call instead of over a port (and the parsed configuration passed
 * as it is instead of as text).
 */
export class InProcessWorker extends WorkerLink {
  readonly plane: DataPlane
  readonly registry = new Registry()

  constructor(id: number, log: Logger, counters: SharedCounters, onEvent: (link: WorkerLink, m: FromWorker) => void, sources?: SourceTables) {
    super(id, onEvent)
    this.plane = new DataPlane({ id, log: log.child({ worker: id }), registry: this.registry, counters, shared: false, report: (m) => this.received(m), ...(sources !== undefined ? { sources } : {}) })
  }

  send(msg: ToWorker, config?: Config): void {
    void dispatch(this.plane, this.registry, msg, () => {
      if (config === undefined) throw new TypeError('an in-process prepare needs the parsed configuration')
      return config
    }, (m) => this.received(m))
  }

  terminate(): Promise<void> {
    this.plane.destroy()
    return Promise.resolve()
  }
}

/**
 * The worker thread's entry: worker-main.js beside this module in the compiled daemon. Run
 * from the TypeScript sources (the test suite), the compiled one when it has been built (a
 * worker is self-contained: it speaks to this side only in messages), else the source.
 */
function workerEntry(): URL {
  if (!import.meta.url.endsWith('.ts')) return new URL('../data/worker-main.js', import.meta.url)
  const built = new URL('../../dist/data/worker-main.js', import.meta.url)
  return existsSync(built) ? built : new URL('../data/worker-main.ts', import.meta.url)
}

/** What a worker thread starts from (workerData). */
export interface WorkerData {
  id: number
  counters: SharedArrayBuffer
  /** The per-source tables (SourceTables.buffers); absent: the worker makes its own. */
  sources?: { connections: SharedArrayBuffer; rates: SharedArrayBuffer }
  /** Several workers bind each listener (SO_REUSEPORT). */
  shared: boolean
  logLevel: string
}

/**
 * A data plane in a worker thread (workers above 1). Its log lines come over the port and
 * the control plane writes them. An unexpected exit is reported as `fatal` to onEvent.
 */
export class ThreadWorker extends WorkerLink {
  private readonly worker: Worker
  private exiting = false

  constructor(id: number, counters: SharedCounters, logLevel: string, shared: boolean, onEvent: (link: WorkerLink, m: FromWorker) => void, sources?: SourceTables) {
    super(id, onEvent)
    const data: WorkerData = { id, counters: counters.buffer, shared, logLevel, ...(sources !== undefined ? { sources: sources.buffers } : {}) }
    this.worker = new Worker(workerEntry(), { workerData: data })
    this.worker.on('message', (m: FromWorker) => this.received(m))
    this.worker.on('error', (err: Error) => {
      this.failAll(err)
      if (!this.exiting) onEvent(this, { type: 'fatal', message: err.stack ?? err.message })
    })
    this.worker.on('exit', (code) => {
      if (this.gone === undefined) this.failAll(new Error(`worker ${id} exited with code ${code}`))
      if (!this.exiting && code !== 0) onEvent(this, { type: 'fatal', message: `worker ${id} exited with code ${code}` })
    })
  }

  send(msg: ToWorker): void {
    this.worker.postMessage(msg)
  }

  async terminate(): Promise<void> {
    this.exiting = true
    await this.worker.terminate()
  }
}
