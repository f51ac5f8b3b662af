import type { Socket } from 'node:net'
import { closeSync } from 'node:fs'
import type { Metrics } from '../metrics/metrics.js'
import { loadNativeRelay, type NativeRelay, type RelayAccept, type RelayAcceptError, type RelayConnectResult, type RelayEnd } from './native-relay.js'

/** What carries established plain TCP connections: `relay:` in the configuration. */
export type RelayChoice = 'auto' | 'native' | 'js'

/** Byte-counter groups of one relay: one per listener name, reused round-robin beyond it. */
const GROUPS = 256

/** A connection the relay carries, as its events reach JS. */
export interface RelayedConnection {
  onRelayEnd(end: RelayEnd): void
  /** The backend connect asked for with connect() was made or failed. */
  onRelayConnect?(result: RelayConnectResult): void
  /** The accepted connection given back with release(): its descriptor is the caller's. */
  onRelayReleased?(fd: number): void
}

/** A listening socket the relay accepts on, as its events reach JS. */
export interface RelayAcceptor {
  onRelayAccept(accept: RelayAccept, host: RelayHost): void
  onRelayAcceptError(error: RelayAcceptError): void
}

/**
 * One data plane's native relay, shared by its TCP listeners and sessions: hands a session's
 * two sockets over (`adopt`), or accepts on a listener's socket itself (`listen`) and connects
 * its connections to the backends JS picks (`connect`); routes each event back to its
 * listener or session, and adds the bytes it relays to sluice_bytes_total per listener when
 * /metrics is read (no JS work per chunk).
 */
export class RelayHost {
  private readonly sessions = new Map<number, RelayedConnection>()
  private readonly acceptors = new Map<number, RelayAcceptor>()
  private readonly groups = new Map<string, number>()
  private readonly names: string[] = []

  private constructor(private readonly relay: NativeRelay) {}

  /** The native relay for `choice`, or the reason there is none (`js` asked for, or it cannot be loaded). */
  static open(choice: RelayChoice): RelayHost | { reason: string } {
    if (choice === 'js') return { reason: 'relay: js' }
    const loaded = loadNativeRelay()
    if (loaded.addon === undefined) return { reason: loaded.reason }
    const box: { host?: RelayHost } = {}
    const relay = loaded.addon.create({
      groups: GROUPS,
      onEnd: (ends) => box.host?.ended(ends),
      onAccept: (a) => box.host?.accepted(a),
      onConnect: (c) => box.host?.sessions.get(c.id)?.onRelayConnect?.(c),
      onAcceptError: (e) => box.host?.acceptors.get(e.listener)?.onRelayAcceptError(e),
      onReleased: (id, fd) => box.host?.released(id, fd),
      onUnlistened: (listener) => box.host?.acceptors.delete(listener),
    })
    box.host = new RelayHost(relay)
    return box.host
  }

  /** Connections it carries now. */
  get size(): number {
    return this.relay.size
  }

  /**
   * Takes over the client and backend sockets of an established connection (they are
   * destroyed; their descriptors live on in the relay) after writing `toBackend` first.
   * Returns the relay's id, or undefined when it cannot take them (the caller splices in JS).
   */
  adopt(listener: string, client: Socket, backend: Socket, idleMs: number, toBackend: Buffer | undefined, onEnd: (end: RelayEnd) => void): number | undefined {
    if (client.writableLength > 0 || backend.writableLength > 0) return undefined
    let id: number
    try {
      id = this.relay.adopt(client, backend, { idleMs, group: this.groupOf(listener), ...(toBackend !== undefined ? { toBackend } : {}) })
    } catch {
      return undefined
    }
    this.sessions.set(id, { onRelayEnd: onEnd })
    return id
  }

  /** Closes a connection now; `reset`: the client gets a reset (a refused connection). */
  destroy(id: number, reset = false): void {
    this.relay.destroy(id, reset)
  }

  /**
   * Accepts on the listening socket `fd` of listener `listener` from now on (the relay holds
   * its own descriptor; the caller closes its server). Returns the id for unlisten().
   */
  listen(fd: number, listener: string, acceptor: RelayAcceptor): number {
    const id = this.relay.listen(fd, this.groupOf(listener))
    this.acceptors.set(id, acceptor)
    return id
  }

  /**
   * Stops accepting on `id`; returns a descriptor of the still-listening socket (or -1).
   * Connections it accepted just before still come to its acceptor.
   */
  unlisten(id: number, stop = false): number {
    return this.relay.unlisten(id, stop)
  }

  /** Stops accepting on `id` for now, or accepts again (`on` false). */
  hold(id: number, on: boolean): void {
    this.relay.hold(id, on)
  }

  /** Gives an accepted connection back (to `conn.onRelayReleased`, with its descriptor). */
  release(id: number, conn: RelayedConnection): void {
    this.sessions.set(id, conn)
    this.relay.release(id)
  }

  private released(id: number, fd: number): void {
    const conn = this.sessions.get(id)
    this.sessions.delete(id)
    if (conn?.onRelayReleased !== undefined) conn.onRelayReleased(fd)
    else closeSync(fd)
  }

  /**
   * A listener renamed by a reload: the bytes of its connections, open ones included, count
   * under the new name from now on.
   */
  rename(from: string, to: string): void {
    const g = this.groups.get(from)
    if (g === undefined || this.groups.has(to) || this.names[g] !== from) return
    this.groups.delete(from)
    this.groups.set(to, g)
    this.names[g] = to
  }

  /** Connects an accepted connection to a backend (numeric ip); the result goes to `conn`. */
  connect(id: number, conn: RelayedConnection, ip: string, port: number, timeoutMs: number, idleMs: number, toBackend?: Uint8Array): void {
    this.sessions.set(id, conn)
    this.relay.connect(id, ip, port, timeoutMs, idleMs, toBackend)
  }

  /** An accepted connection's events go to `conn` from now on. */
  track(id: number, conn: RelayedConnection): void {
    this.sessions.set(id, conn)
  }

  private accepted(a: RelayAccept): void {
    const acceptor = this.acceptors.get(a.listener)
    if (acceptor === undefined) this.relay.destroy(a.id, true)
    else acceptor.onRelayAccept(a, this)
  }

  /** Adds the bytes relayed since the last call to sluice_bytes_total, per listener. */
  flush(metrics: Metrics): void {
    const bytes = this.relay.takeBytes()
    for (let g = 0; g < this.names.length; g++) {
      const listener = this.names[g]!
      const toBackend = bytes[2 * g] ?? 0
      const toClient = bytes[2 * g + 1] ?? 0
      if (toBackend > 0) metrics.bytesTotal.inc({ listener, direction: 'in' }, toBackend)
      if (toClient > 0) metrics.bytesTotal.inc({ listener, direction: 'out' }, toClient)
    }
  }

  /** Closes every connection it carries now (their ends are reported before this returns). */
  close(): void {
    this.relay.close()
  }

  private groupOf(listener: string): number {
    let g = this.groups.get(listener)
    if (g === undefined) {
      // Beyond GROUPS listeners, names share a group: the bytes of the newer one are then
      // counted under the older name.
      g = this.names.length < GROUPS ? this.names.length : this.groups.size % GROUPS
      if (this.names.length < GROUPS) this.names.push(listener)
      this.groups.set(listener, g)
    }
    return g
  }

  private ended(ends: readonly RelayEnd[]): void {
    for (const e of ends) {
      const conn = this.sessions.get(e.id)
      if (conn === undefined) continue
      this.sessions.delete(e.id)
      conn.onRelayEnd(e)
    }
  }
}
