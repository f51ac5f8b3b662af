import { createRequire } from 'node:module'
import { existsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Socket } from 'node:net'
import { constants as osConstants } from 'node:os'

/**
 * The native relay (native/relay.c): relays established TCP connections on an epoll thread of
 * its own, after taking over both descriptors, so no Node socket stays alive per connection.
 * Optional: loadNativeRelay() says why when it is not built or does not load, and the caller
 * runs the JS relay instead.
 */

/** Why a relayed connection ended (in the addon's order: reasons[code]). */
export const RELAY_END_REASONS = [
  'client_closed', // both FINs passed on; the client's came first
  'backend_closed', // both FINs passed on; the backend's came first
  'client_error', // the client reset the connection, or a read or write on it failed
  'backend_error', // the same on the backend's side
  'idle_timeout', // no byte moved either way for idleMs
  'destroyed', // destroy(), close(), or the relay could not take the connection
  'client_aborted', // an accepted client reset before its backend connection was made
] as const
export type RelayEndReason = (typeof RELAY_END_REASONS)[number]

/** A relayed connection that ended; both descriptors are closed. */
export interface RelayEnd {
  readonly id: number
  /** Bytes the relay wrote to the backend (from the client), initial bytes not included. */
  readonly bytesIn: number
  /** Bytes the relay wrote to the client (from the backend), initial bytes not included. */
  readonly bytesOut: number
  readonly reason: RelayEndReason
}

/**
 * How bytes move: `copy` reads a chunk (256 KiB at most) into one buffer per relay with recv(2)
 * and writes it on with send(2); `splice` moves it through one pipe per relay with splice(2),
 * without copying it through user space. In both, what the destination does not take waits
 * in a buffer of the connection's own (one chunk at most per direction) while its source is
 * not read. Measured on loopback, copy moves as many bytes per CPU-second as splice at this
 * chunk size and more per second, so it is the default (see bench/native-relay.bench.ts).
 */
export type RelayMode = 'copy' | 'splice'
export const DEFAULT_RELAY_MODE: RelayMode = 'copy'

/** A connection the relay accepted on a listening socket given with listen(). */
export interface RelayAccept {
  readonly id: number
  /** The listen() id of the socket it came in on. */
  readonly listener: number
  /** The client's address, as Node writes it (`::ffff:` before an IPv4 client of a dual-stack socket). */
  readonly address: string
  readonly port: number
  readonly family: 4 | 6
}

/** The result of connect(): made (with how long it took), or failed (with the errno name). */
export type RelayConnectResult =
  | { readonly id: number; readonly ok: true; readonly micros: number }
  | { readonly id: number; readonly ok: false; readonly code: string; readonly errno: number }

/** A listening socket could not accept (out of descriptors, say) and pauses for `pauseMs`. */
export interface RelayAcceptError {
  readonly listener: number
  readonly code: string
  readonly errno: number
  readonly pauseMs: number
}

/**
 * Where the relay runs: `inline` on the event loop of the thread that made it (a uv poll on
 * its epoll set), so an accept, the JS pick and the backend connect follow each other
 * without waking another thread; `own` on an epoll thread of its own.
 */
export type RelayThread = 'inline' | 'own'
/**
 * `inline`, unless SLUICE_RELAY_THREAD=own asks for the other: inline, a new connection costs
 * about a seventh of the context switches, as few as HAProxy's (docs/performance.md), and each
 * worker's relay still runs on that worker's own thread, away from the control plane.
 */
export const DEFAULT_RELAY_THREAD: RelayThread = process.env.SLUICE_RELAY_THREAD === 'own' ? 'own' : 'inline'

export interface NativeRelayOptions {
  /** Where the relay runs (default DEFAULT_RELAY_THREAD). */
  thread?: RelayThread
  /** Called with the connections that ended, in batches (never once per chunk). */
  onEnd(ends: readonly RelayEnd[]): void
  /**
   * Called for each connection accepted on a listening socket (listen()), before any later
   * event of it. It waits until connect() or destroy().
   */
  onAccept?(accept: RelayAccept): void
  /** Called with the result of each connect(). */
  onConnect?(result: RelayConnectResult): void
  /** Called when a listening socket pauses accepting after an error. */
  onAcceptError?(error: RelayAcceptError): void
  /** An accepted connection given back with release(): its descriptor is the caller's now. */
  onReleased?(id: number, fd: number): void
  /** No accept of this listening socket comes after this (it was taken back with unlisten()). */
  onUnlistened?(listener: number): void
  mode?: RelayMode
  /** Byte counter groups (one per listener, say); add() names one. Default 1. */
  groups?: number
}

export interface RelayAddOptions {
  /** Close the connection after this long without a byte either way; 0 or absent: never. */
  idleMs?: number
  /** Byte counter group, below the relay's `groups`. Default 0. */
  group?: number
  /** Written to the backend before anything the client sends from now on. */
  toBackend?: Uint8Array
  /** Written to the client before anything the backend sends from now on. */
  toClient?: Uint8Array
}

/** What native/relay.c exports. */
interface RelayHandle {
  add(clientFd: number, backendFd: number, idleMs: number, group: number, toBackend: Uint8Array | undefined, toClient: Uint8Array | undefined): number
  destroy(id: number, reset?: boolean): void
  listen(fd: number, group: number): number
  unlisten(id: number, stop?: boolean): number
  connect(id: number, ip: string, port: number, timeoutMs: number, idleMs: number, toBackend: Uint8Array | undefined): void
  release(id: number): void
  hold(listener: number, on: boolean): void
  takeBytes(): Float64Array
  close(): void
  readonly size: number
}
interface RelayBinding {
  readonly Relay: new (onEvents: (events: Float64Array, addresses: string[]) => void, splice: boolean, groups: number, inline: boolean) => RelayHandle
  readonly reasons: readonly string[]
  /** A copy of a descriptor (close-on-exec); throws with the errno name as `code`. */
  readonly dupFd?: (fd: number) => number
}

/** The file descriptor under a plain net.Socket; undefined for a TLS socket or a closed one. */
export function socketFd(socket: Socket): number | undefined {
  const handle = (socket as unknown as { _handle?: { fd?: unknown } | null })._handle
  const fd = handle?.fd
  return typeof fd === 'number' && Number.isInteger(fd) && fd >= 0 ? fd : undefined
}

/** Takes what Node has read from `socket` and not yet handed out. */
function takeBuffered(socket: Socket): Buffer | undefined {
  if (socket.readableLength === 0) return undefined
  const chunks: Buffer[] = []
  for (let chunk: unknown = socket.read(); chunk !== null; chunk = socket.read()) {
    if (Buffer.isBuffer(chunk)) chunks.push(chunk)
    else if (typeof chunk === 'string') chunks.push(Buffer.from(chunk))
    if (socket.readableLength === 0) break
  }
  return chunks.length === 0 ? undefined : Buffer.concat(chunks)
}

function joined(a: Uint8Array | undefined, b: Uint8Array | undefined): Uint8Array | undefined {
  if (a === undefined || a.length === 0) return b
  if (b === undefined || b.length === 0) return a
  return Buffer.concat([a, b])
}

/**
 * One relay (on the creating thread's event loop, or on a thread of its own: `thread`) and the
 * connections it holds. Call close() when done: it closes what is left and stops the relay
 * (the environment's teardown does the same for a worker that ends). The relay keeps the
 * event loop alive only while it holds connections or listening sockets.
 */
export class NativeRelay {
  private readonly handle: RelayHandle

  /** Use NativeRelayAddon.create(). */
  constructor(binding: RelayBinding, options: NativeRelayOptions) {
    const groups = options.groups ?? 1
    if (!Number.isInteger(groups) || groups < 1 || groups > 65536) throw new RangeError(`groups must be an integer from 1 to 65536, not ${groups}`)
    this.handle = new binding.Relay(
      (flat, addresses) => {
        try {
          dispatch(options, flat, addresses)
        } catch (err) {
          // Thrown here, it would only be warned about by N-API: make it an uncaught exception.
          queueMicrotask(() => {
            throw err
          })
        }
      },
      (options.mode ?? DEFAULT_RELAY_MODE) === 'splice',
      groups,
      (options.thread ?? DEFAULT_RELAY_THREAD) === 'inline',
    )
  }

  /**
   * Relays the connection whose sockets are `clientFd` and `backendFd`: the relay duplicates
   * both, so the caller closes (destroys) its own sockets right after, without sending
   * anything. Bytes Node had already read from one side go in toBackend/toClient. Returns the
   * connection's id. Throws (err.code an errno name) when a descriptor cannot be duplicated.
   */
  add(clientFd: number, backendFd: number, options: RelayAddOptions = {}): number {
    return this.handle.add(clientFd, backendFd, options.idleMs ?? 0, options.group ?? 0, options.toBackend, options.toClient)
  }

  /**
   * Takes over two connected plain TCP sockets: what Node had read from each and not handed
   * out is written on first (after options.toBackend/toClient), and both sockets are
   * destroyed. Detach their 'data', 'end' and 'close' listeners first (taking the buffered
   * bytes emits 'data', and destroying them emits 'close'). The sockets must be created with
   * allowHalfOpen (else Node answers a FIN it reads before the handover) and have nothing
   * left to write. Throws TypeError when a socket cannot be taken over.
   */
  adopt(client: Socket, backend: Socket, options: RelayAddOptions = {}): number {
    const cfd = socketFd(client)
    const bfd = socketFd(backend)
    if (cfd === undefined || bfd === undefined) throw new TypeError('adopt() needs two open plain TCP sockets')
    if (client.writableLength > 0 || backend.writableLength > 0) throw new TypeError('adopt() needs sockets with nothing left to write')
    client.pause()
    backend.pause()
    const fromClient = takeBuffered(client)
    const fromBackend = takeBuffered(backend)
    const id = this.add(cfd, bfd, {
      ...options,
      toBackend: joined(options.toBackend, fromClient),
      toClient: joined(options.toClient, fromBackend),
    })
    client.destroy()
    backend.destroy()
    return id
  }

  /**
   * Closes the connection now; its end follows with reason 'destroyed' (unless it ended
   * already). `reset`: the client gets a reset, not a FIN (a refused connection).
   */
  destroy(id: number, reset = false): void {
    this.handle.destroy(id, reset)
  }

  /**
   * Accepts the connections of a listening socket from now on: the relay duplicates `fd`
   * (the caller closes its own, e.g. the net.Server it came from). Each connection comes to
   * onAccept and waits for connect() or destroy(). Returns the socket's id for unlisten().
   */
  listen(fd: number, group = 0): number {
    return this.handle.listen(fd, group)
  }

  /**
   * Stops accepting on a socket given with listen() and returns a new descriptor of it, still
   * listening (its backlog kept), for the caller to close or to hand to Node
   * (`server.listen({ fd })`). -1 when the relay is closed. With `stop` the socket stops
   * listening at once (new connections are refused from now on) and -1 is returned.
   */
  unlisten(id: number, stop = false): number {
    return this.handle.unlisten(id, stop)
  }

  /**
   * Connects an accepted connection to a backend at `ip` (numeric) and `port`; the result
   * comes to onConnect. Gives up after timeoutMs (ETIMEDOUT); once connected the connection
   * is relayed with idleMs, after toBackend is written to the backend.
   */
  connect(id: number, ip: string, port: number, timeoutMs: number, idleMs: number, toBackend?: Uint8Array): void {
    this.handle.connect(id, ip, port, timeoutMs, idleMs, toBackend)
  }

  /**
   * Gives an accepted connection that waits for connect() back: onReleased brings its
   * descriptor (wrap it with `new Socket({ fd })`), or its end comes when it ended meanwhile.
   */
  release(id: number): void {
    this.handle.release(id)
  }

  /** Stops accepting on a listening socket for now (its backlog waits in the kernel), or accepts again. */
  hold(listener: number, on: boolean): void {
    this.handle.hold(listener, on)
  }

  /**
   * Bytes written since the last call, per group: [2g] to the backend, [2g + 1] to the client.
   * For live byte metrics; a connection's own totals come with its end.
   */
  takeBytes(): Float64Array {
    return this.handle.takeBytes()
  }

  /** Connections added whose end has not yet been handed to onEnd. */
  get size(): number {
    return this.handle.size
  }

  /**
   * Closes every connection now and stops the thread; their ends are handed to onEnd before
   * this returns. add() then throws; destroy() does nothing. Idempotent.
   */
  close(): void {
    this.handle.close()
  }
}

const enum EventKind {
  End = 0,
  Accept = 1,
  Connected = 2,
  ConnectFailed = 3,
  AcceptError = 4,
  Released = 5,
  Unlistened = 6,
}

/** errno numbers of Linux, by name, for connect results and accept errors. */
const ERRNO_NAMES: ReadonlyMap<number, string> = new Map(Object.entries(osConstants.errno).map(([name, n]) => [n, name]))

function errnoName(n: number): string {
  return ERRNO_NAMES.get(n) ?? `E${n}`
}

/** Hands a batch of events to the callbacks, in order, with the ends of the batch last. */
function dispatch(options: NativeRelayOptions, flat: Float64Array, addresses: readonly string[]): void {
  const ends: RelayEnd[] = []
  let a = 0
  for (let i = 0; i + 4 < flat.length; i += 5) {
    const kind = flat[i] as EventKind
    const id = flat[i + 1] ?? 0
    const x = flat[i + 2] ?? 0
    const y = flat[i + 3] ?? 0
    const z = flat[i + 4] ?? 0
    if (kind === EventKind.End) ends.push({ id, bytesIn: x, bytesOut: y, reason: RELAY_END_REASONS[z] ?? 'destroyed' })
    else if (kind === EventKind.Accept) options.onAccept?.({ id, listener: x, address: addresses[a++] ?? '', port: y, family: z === 6 ? 6 : 4 })
    else if (kind === EventKind.Connected) options.onConnect?.({ id, ok: true, micros: x })
    else if (kind === EventKind.ConnectFailed) options.onConnect?.({ id, ok: false, errno: x, code: errnoName(x) })
    else if (kind === EventKind.AcceptError) options.onAcceptError?.({ listener: x, errno: y, code: errnoName(y), pauseMs: z })
    else if (kind === EventKind.Released) options.onReleased?.(id, x)
    else if (kind === EventKind.Unlistened) options.onUnlistened?.(x)
  }
  if (ends.length > 0) options.onEnd(ends)
}

export interface NativeRelayAddon {
  /** The addon file that was loaded. */
  readonly path: string
  create(options: NativeRelayOptions): NativeRelay
  /** dup(2) of a descriptor, when the loaded addon has it (see src/listener/accept-pause.ts). */
  readonly dupFd: ((fd: number) => number) | undefined
}

export type NativeRelayLoad = { addon: NativeRelayAddon; reason?: undefined } | { addon: undefined; reason: string }

const ADDON_FILE = join('native', 'build', 'Release', 'sluice_relay.node')

/** The built addon, searched upward from this module (src/proxy, dist/proxy, dist-bench/src/proxy). */
function findAddon(): string | undefined {
  let dir = dirname(fileURLToPath(import.meta.url))
  for (let i = 0; i < 5; i++) {
    const candidate = join(dir, ADDON_FILE)
    if (existsSync(candidate)) return candidate
    const up = dirname(dir)
    if (up === dir) break
    dir = up
  }
  return undefined
}

function isBinding(m: unknown): m is RelayBinding {
  if (typeof m !== 'object' || m === null) return false
  const b = m as { Relay?: unknown; reasons?: unknown }
  return typeof b.Relay === 'function' && Array.isArray(b.reasons)
}

const loaded = new Map<string, NativeRelayLoad>()

/**
 * Loads the native relay once (per thread): `addon` when it is built and loads, else
 * undefined with the reason, one line for the start-up log. `path` loads another file.
 */
export function loadNativeRelay(path?: string): NativeRelayLoad {
  const file = path ?? findAddon()
  if (file === undefined) return { addon: undefined, reason: `not built (no ${ADDON_FILE}; npm run build:native builds it)` }
  const known = loaded.get(file)
  if (known !== undefined) return known
  let result: NativeRelayLoad
  try {
    const m: unknown = createRequire(import.meta.url)(file)
    if (!isBinding(m)) result = { addon: undefined, reason: `${file} is not the native relay` }
    else if (m.reasons.join() !== RELAY_END_REASONS.join()) result = { addon: undefined, reason: `${file} is out of date (npm run build:native rebuilds it)` }
    else result = { addon: { path: file, create: (options) => new NativeRelay(m, options), dupFd: m.dupFd } }
  } catch (err) {
    const message = err instanceof Error ? err.message.split('\n')[0] : String(err)
    result = { addon: undefined, reason: `${file} failed to load: ${message}` }
  }
  loaded.set(file, result)
  return result
}
