import type { Socket } from 'node:net'
import { parseClientHello, CLIENT_HELLO_MAX } from './tls-client-hello.js'
import { parseProxyHeader, type ProxyHeader } from './proxy-protocol.js'

/**
 * Reading the first bytes of a connection without consuming them for good: the bytes read
 * are handed back so they can be replayed to the backend (ClientHello) or pushed back into
 * the socket (what follows a PROXY header). The socket is paused and left without a 'data'
 * listener when a reader finishes, so whatever comes next waits for the splice.
 */

export type PeekOutcome =
  /** A ClientHello: its server name (lower case, or none) and every byte read so far. */
  | { kind: 'hello'; sni: string | undefined; bytes: Buffer }
  /** Nothing arrived within the peek timeout: a server-first protocol; nothing was read. */
  | { kind: 'silent' }
  | { kind: 'error'; message: string }

export type ProxyOutcome =
  /** `length`: the header's own bytes; `rest`: the bytes read past it. */
  | { kind: 'header'; header: ProxyHeader; length: number; rest: Buffer }
  | { kind: 'error'; message: string }

/** A read in progress; `cancel()` stops it (the client left, or the handshake deadline passed). */
export interface PendingRead {
  cancel(): void
}

/**
 * Leaves `socket` without a 'data' listener, not flowing, but still reading into its bounded
 * stream buffer (highWaterMark): what arrives waits there for the splice, and a reset while
 * the backend connect is in flight is still noticed (a socket that stopped reading would not
 * see it until its next read).
 */
function keepReading(socket: Socket): void {
  socket.pause()
  socket.read(0)
}

/**
 * Reads `socket` until `step` says it has enough. `step` sees every byte so far and returns
 * undefined for "more", or the outcome. `silentMs` > 0: `onSilent` when nothing at all arrived
 * in that time.
 */
function readPrefix<T>(socket: Socket, first: Buffer | undefined, step: (buf: Buffer) => T | undefined, done: (o: T) => void, silentMs = 0, onSilent?: () => T): PendingRead {
  let buf = first ?? Buffer.alloc(0)
  let timer: NodeJS.Timeout | undefined
  let over = false
  const finish = (o: T): void => {
    if (over) return
    over = true
    stop()
    done(o)
  }
  const stop = (): void => {
    clearTimeout(timer)
    socket.off('data', onData)
    keepReading(socket)
  }
  const onData = (chunk: Buffer): void => {
    clearTimeout(timer)
    buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk])
    const o = step(buf)
    if (o !== undefined) finish(o)
  }
  if (buf.length > 0) {
    const o = step(buf)
    if (o !== undefined) {
      keepReading(socket)
      // Called from the caller's own turn: report on the next one, as a read would.
      process.nextTick(() => finish(o))
      return { cancel: () => (over = true) }
    }
  }
  if (silentMs > 0 && onSilent !== undefined && buf.length === 0) {
    timer = setTimeout(() => finish(onSilent()), silentMs)
  }
  socket.on('data', onData)
  socket.resume()
  return {
    cancel: () => {
      over = true
      stop()
    },
  }
}

/**
 * Reads a TLS ClientHello (at most CLIENT_HELLO_MAX bytes) for its server name. A client that
 * sends nothing for `silentMs` is taken to wait for the server to speak first.
 */
export function peekClientHello(socket: Socket, first: Buffer | undefined, silentMs: number, done: (o: PeekOutcome) => void): PendingRead {
  return readPrefix<PeekOutcome>(
    socket,
    first,
    (buf) => {
      const r = parseClientHello(buf.length > CLIENT_HELLO_MAX ? buf.subarray(0, CLIENT_HELLO_MAX) : buf)
      if (r.kind === 'need-more') return undefined
      if (r.kind === 'error') return { kind: 'error', message: r.message }
      return { kind: 'hello', sni: r.sni, bytes: buf }
    },
    done,
    silentMs,
    () => ({ kind: 'silent' }),
  )
}

/** Reads a PROXY protocol v1/v2 header; `rest` holds the bytes read past it. */
export function readProxyHeader(socket: Socket, done: (o: ProxyOutcome) => void): PendingRead {
  return readPrefix<ProxyOutcome>(
    socket,
    undefined,
    (buf) => {
      const r = parseProxyHeader(buf)
      if (r.kind === 'need-more') return undefined
      if (r.kind === 'error') return { kind: 'error', message: r.message }
      return { kind: 'header', header: r.header, length: r.length, rest: buf.subarray(r.length) }
    },
    done,
  )
}
