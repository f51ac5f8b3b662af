import { Socket } from 'node:net'

/**
 * Reading an accepted socket into buffers of its own, as `net.connect({ onread })` does for a
 * socket sluice creates. Node offers `onread` only at construction, and a server constructs
 * its accepted sockets itself, so this is the one place that reaches into Node's internals
 * for it; everything else uses the public option. Why not 'data' events on the accepted
 * side, as the public API would have it: measured in the same runs (docs/performance.md, the
 * JS relay section), reading it with 'data' events (a Readable push and a fresh buffer per
 * read) cost about 30% more CPU per redis request and gave 0.7 of the bulk throughput with
 * four iperf3 streams.
 *
 * How: Node keeps a socket's `onread` in three own symbol properties (`kBuffer`, `kBufferCb`,
 * `kBufferGen`) that its read path (stream_base_commons onStreamRead, net's pause, resume and
 * read) consults, and tells the handle with `useUserBuffer(buffer)`. The symbols are found
 * once on a probe socket built with the public option (by the values it was given, so a
 * renamed symbol is still found), then set on the accepted socket, whose handle is switched
 * in the same call. When anything is not as expected (a Node that stores `onread` otherwise,
 * a handle without `useUserBuffer`, data still in the socket's stream buffer), nothing is
 * changed and the caller reads with 'data' events instead. test/proxy/user-buffer.test.ts
 * checks that this path is taken on the running Node, so a Node change that breaks it fails
 * there instead of slowing the relay down unnoticed.
 */

interface OnreadKeys {
  buffer: symbol
  callback: symbol
  generator: symbol
}

/** The buffer an onread socket reads into next, and what it is given each read. */
export type NextBuffer = () => Uint8Array
export type ReadCallback = (bytes: number, buffer: Uint8Array) => boolean

let keys: OnreadKeys | null | undefined

/** Node's own symbols for a socket's onread, found on a probe built with the public option; null when not found. */
function onreadKeys(): OnreadKeys | null {
  if (keys !== undefined) return keys
  const probeBuffer = Buffer.alloc(1)
  const generator = (): Buffer => probeBuffer
  const callback = (): boolean => true
  // `onread` is documented for the Socket constructor but missing from @types/node's options there.
  const options = { allowHalfOpen: false, onread: { buffer: generator, callback } }
  const probe = new Socket(options)
  let found: Partial<OnreadKeys> = {}
  for (const s of Object.getOwnPropertySymbols(probe)) {
    const v: unknown = Reflect.get(probe, s)
    if (v === generator) found.generator = s
    else if (v === callback) found.callback = s
    // With a generator, Node marks the buffer `true` until a handle asks the generator.
    else if (v === true && s.description === 'kBuffer') found.buffer = s
  }
  probe.destroy()
  const { buffer, callback: cb, generator: gen } = found
  found = {}
  keys = buffer !== undefined && cb !== undefined && gen !== undefined ? { buffer, callback: cb, generator: gen } : null
  return keys
}

/**
 * Makes the connected socket `socket` read into the buffers `next` gives (asked once now and
 * after every read) and hand each read to `onRead` (return false to stop reading; resume()
 * starts again), as the public `onread` option would have. False when it cannot: the socket
 * is left as it was.
 */
export function readIntoBuffers(socket: Socket, next: NextBuffer, onRead: ReadCallback): boolean {
  const k = onreadKeys()
  if (k === null || socket.destroyed || socket.readableLength > 0 || socket.readableEnded) return false
  const handle: unknown = Reflect.get(socket, '_handle')
  if (handle === null || typeof handle !== 'object') return false
  const useUserBuffer: unknown = Reflect.get(handle, 'useUserBuffer')
  if (typeof useUserBuffer !== 'function') return false
  const first = next()
  try {
    Reflect.apply(useUserBuffer, handle, [first])
  } catch {
    return false
  }
  Reflect.set(socket, k.buffer, first)
  Reflect.set(socket, k.callback, onRead)
  Reflect.set(socket, k.generator, next)
  return true
}
