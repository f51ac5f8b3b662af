import type { OnReadOpts, Socket } from 'node:net'
import { readIntoBuffers } from './user-buffer.js'

/**
 * What carries an established TCP connection, chosen once per connection (TcpSession.onConnected):
 * - `native`: the native relay (relay-host.ts) takes both descriptors; no Node socket stays.
 * - `js`: the JS relay below, on the Node sockets but without their streams' read side.
 * - `pipe`: `pipe()` both ways, for connections with TLS on either side: a TLSSocket stays on
 *   Node's TLS streams.
 */
export type RelayKind = 'pipe' | 'js' | 'native'

/**
 * The relay for a connection: TLS on either side (`plain` false) keeps Node's streams; plain
 * ones go to the native relay when there is one, else to the JS relay. When the native relay
 * cannot take a connection after all, the JS relay carries it.
 */
export function relayKind(plain: boolean, native: boolean): RelayKind {
  if (!plain) return 'pipe'
  return native ? 'native' : 'js'
}

/**
 * Read buffer sizes. A connection starts with a small one (request/response traffic rarely
 * fills it, and an idle connection holds only this much per side); the first read that fills
 * it moves that direction to big ones, the most the kernel hands over in one read on loopback.
 */
export const FIRST_READ_BYTES = 1024
export const READ_BYTES = 64 * 1024

/**
 * One direction of the JS relay: reads `src` into buffers of its own and writes them to
 * `dst`, with no Readable stream in between and no allocation per chunk while `dst` keeps up.
 *
 * A write that the kernel takes at once (the usual case) leaves the buffer free for the next
 * read. One that stays pending still points into the buffer, so the next read goes into a
 * second one; when both hold pending bytes the direction stops reading `src` until `dst`'s
 * writes complete. What sluice holds for a slow reader is so bounded by two read buffers per
 * direction (besides the kernel's socket buffers). Pending bytes are always the newest ones
 * written (writes complete in order), which is how a buffer is known to be free:
 * `dst.writableLength` no larger than what was written from the other buffer since.
 */
export class Flow {
  /** The buffer the next read of `src` goes into. */
  private current: Uint8Array = Buffer.allocUnsafe(FIRST_READ_BYTES)
  /** The other buffer, once a write kept `current`. */
  private spare: Uint8Array | undefined
  /** Bytes written from `current` that may still be pending. */
  private currentBytes = 0
  /** Bytes written from `spare` (the older buffer) that may still be pending. */
  private spareBytes = 0
  /** Reading stopped until a buffer (or, reading with 'data', the stream buffer) is free. */
  private waiting = false
  private src: Socket | undefined
  private dst: Socket | undefined
  /** Bytes read before the direction was started (copied; a backend does not get the chance in practice). */
  private early: Buffer[] | undefined

  private readonly next = (): Uint8Array => this.current
  private readonly onRead = (bytes: number, buffer: Uint8Array): boolean => this.moved(bytes, buffer)

  /** For `net.connect`: the socket reads into this direction's buffers from its first read. */
  readonly onread: OnReadOpts = { buffer: this.next, callback: this.onRead }

  /**
   * Starts moving bytes from `src` to `dst`. `wired`: `src` was created with `this.onread`;
   * otherwise it is made to read into these buffers now (user-buffer.ts), or, where that is
   * not possible, it reads with 'data' events under its stream buffer's bound (`readInto`
   * stands for user-buffer.ts, so the tests can take that path on purpose).
   */
  start(src: Socket, dst: Socket, wired: boolean, readInto: typeof readIntoBuffers = readIntoBuffers): void {
    this.src = src
    this.dst = dst
    dst.on('drain', this.onDrain)
    src.on('end', this.onEnd)
    const early = this.early
    this.early = undefined
    if (early !== undefined) for (const b of early) dst.write(b)
    // What the socket read before (into its stream buffer) goes first.
    if (!wired) for (let chunk: unknown = src.read(); chunk instanceof Buffer; chunk = src.read()) dst.write(chunk)
    if (src.readableEnded) {
      // Its FIN came before the relay started (during the backend connect): pass it on now.
      this.onEnd()
      return
    }
    if (wired) return
    if (readInto(src, this.next, this.onRead)) {
      src.resume()
      return
    }
    src.on('data', this.onData)
  }

  /** `bytes` were read into `buffer`: write them on, and choose the buffer for the next read. */
  private moved(bytes: number, buffer: Uint8Array): boolean {
    const dst = this.dst
    if (dst === undefined) {
      ;(this.early ??= []).push(Buffer.from(buffer.subarray(0, bytes)))
      return true
    }
    if (dst.destroyed || dst.writableEnded) return false
    const chunk = bytes === buffer.length ? buffer : buffer.subarray(0, bytes)
    // A write behind a pending one gets a callback: its completion may free a buffer.
    if (dst.writableLength > 0) dst.write(chunk, this.onWritten)
    else dst.write(chunk)
    const pending = dst.writableLength
    if (pending === 0) {
      // The kernel took it all: every buffer is free.
      this.currentBytes = 0
      this.spareBytes = 0
      if (bytes === buffer.length && buffer.length < READ_BYTES) this.current = Buffer.allocUnsafeSlow(READ_BYTES)
      return true
    }
    // `current` holds pending bytes now: the next read goes into the other buffer.
    const held = this.current
    const spare = this.spare
    const reuse = spare !== undefined && spare.length === READ_BYTES
    this.current = reuse ? spare : Buffer.allocUnsafeSlow(READ_BYTES)
    this.spare = held
    this.spareBytes = this.currentBytes + bytes
    this.currentBytes = 0
    // The reused buffer is free when every pending byte came from the one just set aside.
    if (!reuse || pending <= this.spareBytes) return true
    this.waiting = true
    return false
  }

  /** A write behind others completed: the buffer read next may be free now. */
  private readonly onWritten = (): void => {
    const dst = this.dst
    if (!this.waiting || dst === undefined || dst.writableLength > this.spareBytes) return
    this.waiting = false
    this.src?.resume()
  }

  /** The fallback, 'data' events: Node's buffer per read, paused while `dst` is past its stream buffer. */
  private readonly onData = (chunk: Buffer): void => {
    const dst = this.dst
    if (dst === undefined || dst.destroyed || dst.writableEnded) return
    if (!dst.write(chunk)) {
      this.waiting = true
      this.src?.pause()
    }
  }

  /** `dst` wrote everything out: every buffer is free. */
  private readonly onDrain = (): void => {
    if (!this.waiting) return
    this.waiting = false
    this.currentBytes = 0
    this.spareBytes = 0
    this.src?.resume()
  }

  /** `src` sent its FIN: pass it on, after what is still pending; the other direction keeps flowing. */
  private readonly onEnd = (): void => {
    const dst = this.dst
    if (dst !== undefined && !dst.destroyed && !dst.writableEnded) dst.end()
  }
}

/**
 * Starts relaying an established connection. `pipe`: Node's streams both ways. `js` (and
 * `native` when the native relay did not take it): a Flow each way; `fromBackend` is the one
 * whose `onread` the backend socket was created with, if any.
 */
export function relay(kind: RelayKind, client: Socket, backend: Socket, fromBackend: Flow | undefined): void {
  if (kind === 'pipe') {
    // pipe() carries backpressure both ways (a slow reader pauses the fast writer) and ends
    // the other side's writable on FIN, which is the half-close a TCP proxy must pass on.
    client.pipe(backend)
    backend.pipe(client)
    return
  }
  new Flow().start(client, backend, false)
  if (fromBackend !== undefined) fromBackend.start(backend, client, true)
  else new Flow().start(backend, client, false)
}
