import { parentPort, workerData } from 'node:worker_threads'
import { Writable } from 'node:stream'
import { Registry } from 'prom-client'
import { parseConfig } from '../config/load.js'
import { createLogger, type Logger } from '../log.js'
import type { LogLevel } from '../config/types.js'
import { SharedCounters } from '../control/shared-counters.js'
import { SourceTables } from '../control/source-tables.js'
import type { FromWorker, ToWorker } from '../control/messages.js'
import type { WorkerData } from '../control/worker-link.js'
import { DataPlane } from './data-plane.js'
import { dispatch } from './worker-dispatch.js'

/**
 * A data-plane worker thread: builds its DataPlane from the control plane's messages and
 * carries them out one after the other, in order.
 */
const port = parentPort
if (port === null) throw new TypeError('worker-main runs only as a worker thread')
const data = workerData as WorkerData
let pending: string[] = []
/** Log lines still to send go first, so an answer (say, `stopped`) never overtakes them. */
const post = (m: FromWorker): void => {
  if (m.type !== 'log' && pending.length > 0) flushLines()
  port.postMessage(m)
}

/**
 * Log lines go to the control plane, which writes them to its own destination: one writer on
 * stdout, so lines of several threads never interleave. Lines written in one turn of the
 * event loop travel in one message.
 */
const flushLines = (): void => {
  if (pending.length === 0) return
  const lines = pending
  pending = []
  port.postMessage({ type: 'log', line: lines.join('\n') } satisfies FromWorker)
}
const log: Logger = createLogger(
  data.logLevel as LogLevel,
  new Writable({
    write(chunk: Buffer, _enc, cb): void {
      const text = chunk.toString('utf8').replace(/\n$/, '')
      if (text !== '') {
        if (pending.length === 0) setImmediate(flushLines)
        pending.push(text)
      }
      cb()
    },
  }),
)
const child = log.child({ worker: data.id })
const registry = new Registry()
const sources = data.sources !== undefined ? new SourceTables(data.sources) : undefined
const plane = new DataPlane({ id: data.id, log: child, registry, counters: new SharedCounters(data.counters), shared: data.shared, report: post, ...(sources !== undefined ? { sources } : {}) })

const run = (msg: ToWorker): Promise<void> =>
  dispatch(plane, registry, msg, (m) => parseConfig(m.source.text, m.source.file, m.source.env), post).catch((err: unknown) => {
    post({ type: 'fatal', message: err instanceof Error ? (err.stack ?? err.message) : String(err) })
  })

// In order, one after the other; a stop (which waits for connections to drain) runs beside
// the queue, so status requests and backend states still get through while it drains.
let queue: Promise<void> = Promise.resolve()
port.on('message', (msg: ToWorker) => {
  if (msg.type === 'stop') void run(msg)
  else queue = queue.then(() => run(msg))
})
