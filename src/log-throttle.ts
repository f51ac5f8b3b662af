/**
 * Lets one log line per key through per interval, so a pool that is down does not flood the
 * log with one line per refused connection. The next line that passes says how many were
 * held back. Keys are built from configuration names only, so the table stays small.
 */
export class LogThrottle {
  private readonly seen = new Map<string, { at: number; suppressed: number }>()

  constructor(private readonly intervalMs = 1000) {}

  /** The number of lines suppressed since the last one for `key`, or false to suppress this one. */
  take(key: string, now = Date.now()): number | false {
    const s = this.seen.get(key)
    if (s === undefined) {
      this.seen.set(key, { at: now, suppressed: 0 })
      return 0
    }
    if (now - s.at < this.intervalMs) {
      s.suppressed++
      return false
    }
    const n = s.suppressed
    s.at = now
    s.suppressed = 0
    return n
  }
}
