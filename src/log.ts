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
