import { connect as netConnect, type Socket } from 'node:net'
import { connect as tlsConnect, type ConnectionOptions } from 'node:tls'
import { errnoCode } from '../../errors.js'
import { formatDuration } from '../../config/duration.js'
import { ProbeFailure, snippet, type ProbeResult, type ProbeTarget } from '../probe.js'

/** A probe never holds more than this many unread bytes from a backend. */
export const MAX_PROBE_BYTES = 16 * 1024

/** A parser over the bytes received so far: the value and how many bytes it used, or undefined for "need more". */
export type Parse<T> = (buf: Buffer) => { value: T; used: number } | undefined

/**
 * The exchange of one probe over one TCP (or TLS) connection. `read` waits for the bytes a
 * parser accepts; a close, an error, too many bytes or the probe's deadline fails the wait.
 */
export class Conversation {
  /** What the probe waits for now, for the timeout message ("the 220 banner"). */
  waitingFor = 'connect'
  private buf: Buffer = Buffer.alloc(0)
  private ended = false
  private wake: (() => void) | undefined

  constructor(readonly socket: Socket, connectOnly = false) {
    if (connectOnly) return
    socket.on('data', (chunk: Buffer) => {
      this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk])
      this.wake?.()
    })
    socket.on('end', () => this.stop())
    socket.on('close', () => this.stop())
  }

  send(data: string | Buffer): void {
    this.socket.write(data)
  }

  /** Waits until `parse` accepts the start of the unread bytes; consumes what it used. */
  async read<T>(what: string, parse: Parse<T>): Promise<T> {
    this.waitingFor = what
    for (;;) {
      const got = parse(this.buf)
      if (got !== undefined) {
        this.buf = this.buf.subarray(got.used)
        return got.value
      }
      if (this.buf.length > MAX_PROBE_BYTES) throw new ProbeFailure(`more than ${MAX_PROBE_BYTES} bytes without ${what}`)
      if (this.ended) {
        const seen = this.buf.length > 0 ? `; got "${snippet(this.buf)}"` : ''
        throw new ProbeFailure(`closed by the backend before ${what}${seen}`)
      }
      await new Promise<void>((resolve) => (this.wake = resolve))
      this.wake = undefined
    }
  }

  /** One line (without its CR LF). */
  line(what: string): Promise<string> {
    return this.read(what, parseLine)
  }

  /** The unread bytes, for messages. */
  get pending(): Buffer {
    return this.buf
  }

  private stop(): void {
    this.ended = true
    this.wake?.()
  }
}

export function parseLine(buf: Buffer): { value: string; used: number } | undefined {
  const nl = buf.indexOf(10)
  if (nl < 0) return undefined
  const end = nl > 0 && buf[nl - 1] === 13 ? nl - 1 : nl
  return { value: buf.toString('latin1', 0, end), used: nl + 1 }
}

/**
 * Connects to `target` (over TLS when `tls` is given), runs `talk`, and always destroys the
 * socket. The whole probe (connect, handshake, exchange) is bounded by `target.timeoutMs`.
 * `talk` returns the success detail or throws a ProbeFailure.
 */
export function converse(target: ProbeTarget, talk: ((c: Conversation) => Promise<string>) | 'connect-only', tls?: ConnectionOptions): Promise<ProbeResult> {
  return new Promise((resolve) => {
    let done = false
    let connected = false
    // No TCP_NODELAY: probes write one request and wait for its answer, so Nagle never holds
    // a write back, and the setsockopt would cost a syscall per probe.
    const socket: Socket = tls === undefined
      ? netConnect({ host: target.host, port: target.port })
      : tlsConnect({ ...tls, host: target.host, port: target.port })
    const conv = new Conversation(socket, talk === 'connect-only')
    const finish = (r: ProbeResult): void => {
      if (done) return
      done = true
      clearTimeout(timer)
      socket.destroy()
      resolve(r)
    }
    const timer = setTimeout(() => {
      const seen = conv.pending.length > 0 ? `; got "${snippet(conv.pending)}"` : ''
      finish({ ok: false, detail: `timeout after ${formatDuration(target.timeoutMs)} waiting for ${conv.waitingFor}${seen}` })
    }, target.timeoutMs)
    socket.once('connect', () => {
      connected = true
      if (tls !== undefined) conv.waitingFor = 'the TLS handshake'
    })
    socket.once(tls === undefined ? 'connect' : 'secureConnect', () => {
      if (talk === 'connect-only') {
        finish({ ok: true, detail: 'connected' })
        return
      }
      conv.waitingFor = 'the first reply'
      talk(conv).then(
        (detail) => finish({ ok: true, detail }),
        (err: unknown) => finish({ ok: false, detail: err instanceof ProbeFailure ? err.message : `probe error: ${String(err)}` }),
      )
    })
    socket.on('error', (err) => {
      const code = errnoCode(err) ?? err.message
      if (!connected) finish({ ok: false, detail: `connect ${code}` })
      else if (tls !== undefined && conv.waitingFor === 'the TLS handshake') finish({ ok: false, detail: `tls handshake: ${code}` })
      else finish({ ok: false, detail: `${code} waiting for ${conv.waitingFor}` })
    })
  })
}
