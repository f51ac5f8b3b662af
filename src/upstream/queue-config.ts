import type { ConfigReader, MapView } from '../config/reader.js'
import { DEFAULTS } from '../config/types.js'

/** The pool keys of the backend queue. */
export const QUEUE_KEYS = ['max_queue', 'queue_timeout'] as const

/** `max_queue` and `queue_timeout` of a pool (none set: no queue); undefined after an error. */
export function readQueue(reader: ConfigReader, pool: MapView, context: string): { maxQueue?: number; queueTimeoutMs?: number } | undefined {
  if (!pool.has('max_queue')) {
    if (pool.has('queue_timeout')) {
      reader.report(pool.keyAt('queue_timeout'), `${context}: queue_timeout bounds the wait in the queue, which only max_queue turns on; add max_queue (e.g. 1000) or remove queue_timeout`)
      return undefined
    }
    return {}
  }
  const maxQueue = reader.int(pool.get('max_queue'), `${context} max_queue (connections that may wait when every backend is at max_connections)`, 0, 1_000_000)
  const queueTimeoutMs = pool.has('queue_timeout') ? reader.duration(pool.get('queue_timeout'), `${context} queue_timeout`, { minMs: 1 }) : DEFAULTS.queueTimeoutMs
  if (maxQueue === undefined || queueTimeoutMs === undefined) return undefined
  return { maxQueue, queueTimeoutMs }
}
