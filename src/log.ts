import pino, { type DestinationStream, type Logger } from 'pino'
import type { LogLevel } from './config/types.js'

export type { Logger }

/**
 * The daemon's logger: pino JSON lines, one per event, on stdout unless a destination is
 * injected (tests pass their own sink). Nothing in sluice imports a global logger.
 */
export function createLogger(level: LogLevel, destination?: DestinationStream): Logger {
  const dest = destination ?? pino.destination({ dest: 1, sync: false })
  return pino(
    {
      level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    dest,
  )
}

/** The stream the logger writes to, with an end that takes every line written before it. */
export interface FinishableDestination extends DestinationStream {
  /**
   * Writes out every line still buffered, in order, then closes. Lines written from then on
   * are dropped: a worker's line or "sluice stopped" that comes while the process exits on a
   * second stop signal must not throw on the closed stream (which would exit 70).
   */
  finish(): Promise<void>
}

/**
 * Wraps an asynchronous pino destination (stdout). `finish` writes the line in flight first,
 * then the rest (a flush at exit would write the rest first and could lose the one in flight);
 * it is bounded, for a stdout that no longer takes anything.
 */
export function finishableDestination(stream: ReturnType<typeof pino.destination>): FinishableDestination {
  let ending: Promise<void> | undefined
  return {
    write(line: string): boolean {
      if (ending !== undefined) return true
      return stream.write(line)
    },
    finish(): Promise<void> {
      ending ??= new Promise<void>((done) => {
        const timer = setTimeout(done, 2000)
        stream.once('close', () => {
          clearTimeout(timer)
          done()
        })
        try {
          stream.end()
        } catch {
          clearTimeout(timer)
          done()
        }
      })
      return ending
    },
  }
}
