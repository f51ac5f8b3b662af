import { connect as netConnect, type Socket } from 'node:net'
import { connect as tlsConnect, type ConnectionOptions } from 'node:tls'
import { errnoCode } from '../../errors.js'
import { formatDuration } from '../../config/duration.js'
import { encodeV1, encodeV2 } from '../../proxy/proxy-header-out.js'
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
  waitingFor = 'the first reply'
  private buf: Buffer = Buffer.alloc(0)
  private ended = false
  private discarding = false
  private wake: (() => void) | undefined

  constructor(readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      if (this.discarding) return
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

  /** The exchange is over: what still arrives is read and dropped. */
  discard(): void {
    this.discarding = true
    this.buf = Buffer.alloc(0)
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
 * The PROXY header a probe sends first: v2 with the LOCAL command (the connection is the
 * checker's own, there is no client; receivers then use the connection's real addresses),
 * or for v1, which has no such command that every server takes (postfix refuses
 * `PROXY UNKNOWN`), a TCP4/TCP6 line naming the probe's own connection, which is the truth.
 */
export function probeProxyHeader(version: 'v1' | 'v2', socket: Socket): Buffer {
  if (version === 'v2') return encodeV2(undefined)
  return encodeV1({
    sourceAddress: socket.localAddress ?? '',
    sourcePort: socket.localPort ?? 0,
    destAddress: socket.remoteAddress ?? '',
    destPort: socket.remotePort ?? 0,
  })
}

/**
 * Connects to `target`, sends the PROXY header when `target.proxy` says so, starts TLS over
 * the connection when `tls` is given, runs `talk` (or, for 'connect-only', nothing), and
 * closes. The probe's result (connect, handshake, exchange) is bounded by `target.timeoutMs`.
 * `talk` returns the success detail or throws a ProbeFailure.
 *
 * The close is polite once the exchange is over, passed or failed: a FIN after the last
 * request, then what the backend still sends (its `221 Bye`, its banner when the probe did
 * not wait for it) is read and dropped until its own FIN, so the kernel never answers late
 * bytes with a reset and backends do not log one per probe. That close runs after the result
 * is handed back, holds nothing open past the probe's deadline (`timeoutMs` after it began),
 * and never keeps the process alive. A probe that timed out, or whose connection failed, is
 * closed at once.
 */
export function converse(target: ProbeTarget, talk: ((c: Conversation) => Promise<string>) | 'connect-only', tls?: ConnectionOptions): Promise<ProbeResult> {
  return new Promise((resolve) => {
    let done = false
    let connected = false
    let phase = 'connect'
    let conv: Conversation | undefined
    // No TCP_NODELAY: probes write one request and wait for its answer, so Nagle never holds
    // a write back, and the setsockopt would cost a syscall per probe.
    const raw = netConnect({ host: target.host, port: target.port })
    let socket: Socket = raw
    const finish = (r: ProbeResult, polite: boolean): void => {
      if (done) return
      done = true
      resolve(r)
      conv?.discard()
      if (polite && !socket.destroyed) {
        // The probe's own timer stays armed: at the deadline it ends a close still lingering.
        closePolitely(socket)
        socket.once('close', () => clearTimeout(timer))
        timer.unref()
      } else {
        clearTimeout(timer)
        socket.destroy()
      }
    }
    const timer = setTimeout(() => {
      if (done) {
        socket.destroy()
        return
      }
      const pending = conv?.pending ?? Buffer.alloc(0)
      const seen = pending.length > 0 ? `; got "${snippet(pending)}"` : ''
      finish({ ok: false, detail: `timeout after ${formatDuration(target.timeoutMs)} waiting for ${conv?.waitingFor ?? phase}${seen}` }, false)
    }, target.timeoutMs)
    const onError = (err: Error): void => {
      const code = errnoCode(err) ?? err.message
      if (!connected) finish({ ok: false, detail: `connect ${code}` }, false)
      else if (conv === undefined && tls !== undefined) finish({ ok: false, detail: `tls handshake: ${code}` }, false)
      else finish({ ok: false, detail: `${code} waiting for ${conv?.waitingFor ?? phase}` }, false)
    }
    const begin = (s: Socket): void => {
      if (done) return
      if (talk === 'connect-only') {
        finish({ ok: true, detail: 'connected' }, true)
        return
      }
      const c = new Conversation(s)
      conv = c
      talk(c).then(
        (detail) => finish({ ok: true, detail }, true),
        (err: unknown) => finish({ ok: false, detail: err instanceof ProbeFailure ? err.message : `probe error: ${String(err)}` }, true),
      )
    }
    const startTls = (): void => {
      if (done || tls === undefined) return
      phase = 'the TLS handshake'
      const secure = tlsConnect({ ...tls, socket: raw })
      socket = secure
      secure.on('error', onError)
      secure.once('secureConnect', () => begin(secure))
    }
    raw.on('error', onError)
    raw.once('connect', () => {
      connected = true
      if (target.proxy !== undefined) {
        phase = 'the PROXY header to be sent'
        // TLS starts once the header has left, so the ClientHello cannot overtake it.
        raw.write(probeProxyHeader(target.proxy, raw), (err) => {
          if (err === undefined || err === null) {
            if (tls === undefined) begin(raw)
            else startTls()
          }
        })
        return
      }
      if (tls === undefined) begin(raw)
      else startTls()
    })
  })
}

/**
 * Ends `socket` with a FIN (after what is still queued) and reads (dropping it) until the
 * backend closes too. Unreferenced: it never holds the process. The caller bounds it.
 */
function closePolitely(socket: Socket): void {
  socket.on('error', () => socket.destroy())
  socket.resume()
  socket.end()
  socket.unref()
}
