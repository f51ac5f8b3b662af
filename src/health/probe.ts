import type { ConfigReader, MapView } from '../config/reader.js'

/** Where one probe goes and how long it may take in all (connect, exchange, close). */
export interface ProbeTarget {
  host: string
  port: number
  timeoutMs: number
  /**
   * Send a PROXY protocol header first (`send_proxy`): v2 with the LOCAL command (a check has
   * no client to speak for), or v1 naming the probe's own connection. Absent: no header.
   */
  proxy?: 'v1' | 'v2'
}

/**
 * What a probe found. `detail` is a short phrase for logs and the admin API: on success what
 * was seen ("+PONG"), on failure why ("connect ECONNREFUSED", "timeout after 1s waiting for
 * the 220 banner", "expected +PONG, got \"-NOAUTH ...\"").
 */
export interface ProbeResult {
  ok: boolean
  detail: string
}

/**
 * One kind of active health check. `check` never rejects, resolves within about
 * `target.timeoutMs`, reads a bounded number of bytes, and leaves no socket open.
 */
export interface Probe {
  check(target: ProbeTarget): Promise<ProbeResult>
}

/** A probe type as the configuration names it, with the keys it reads besides the common ones. */
export interface ProbeFactory<O = unknown> {
  readonly type: string
  /** `health_check` keys only this type reads (e.g. `send`, `expect` for send-expect). */
  readonly optionKeys: readonly string[]
  /** Reads and checks this type's keys; reports problems to `reader`; undefined when any is wrong. */
  parseOptions(check: MapView, reader: ConfigReader, context: string): O | undefined
  create(options: O): Probe
  /** Whether these options make the probe speak UDP (a PROXY header must then have a datagram form). */
  datagram?(options: O): boolean
}

/** A failed probe step; the message becomes the result's `detail`. */
export class ProbeFailure extends Error {
  override readonly name = 'ProbeFailure'
}

/** Shortens what a backend sent for a log line: printable, at most `max` (60) characters. */
export function snippet(data: Buffer | string, max = 60): string {
  const text = (typeof data === 'string' ? data : data.toString('latin1')).replace(/\r?\n$/, '')
  // eslint-disable-next-line no-control-regex
  const clean = text.replace(/[\x00-\x1f\x7f-\xff]/g, (c) => (c === '\r' ? '\\r' : c === '\n' ? '\\n' : '.'))
  return clean.length > max ? `${clean.slice(0, max - 3)}...` : clean
}
