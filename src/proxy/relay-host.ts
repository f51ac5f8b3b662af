import type { Socket } from 'node:net'
import type { Metrics } from '../metrics/metrics.js'
import { loadNativeRelay, type NativeRelay, type RelayEnd } from './native-relay.js'

/** What carries established plain TCP connections: `relay:` in the configuration. */
export type RelayChoice = 'auto' | 'native' | 'js'

/** Byte-counter groups of one relay: one per listener name, reused round-robin beyond it. */
const GROUPS = 256

/**
 * One data plane's native relay, shared by its TCP sessions: hands a session's two sockets
 * over (`adopt`), routes each end back to its session, and adds the bytes it relays to
 * sluice_bytes_total per listener when /metrics is read (no JS work per chunk).
 */
export class RelayHost {
  private readonly sessions = new Map<number, (end: RelayEnd) => void>()
  private readonly groups = new Map<string, number>()
  private readonly names: string[] = []

  private constructor(private readonly relay: NativeRelay) {}

  /** The native relay for `choice`, or the reason there is none (`js` asked for, or it cannot be loaded). */
  static open(choice: RelayChoice): RelayHost | { reason: string } {
    if (choice === 'js') return { reason: 'relay: js' }
    const loaded = loadNativeRelay()
    if (loaded.addon === undefined) return { reason: loaded.reason }
    const box: { host?: RelayHost } = {}
    const relay = loaded.addon.create({ groups: GROUPS, onEnd: (ends) => box.host?.ended(ends) })
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
    this.sessions.set(id, onEnd)
    return id
  }

  destroy(id: number): void {
    this.relay.destroy(id)
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
      const cb = this.sessions.get(e.id)
      if (cb === undefined) continue
      this.sessions.delete(e.id)
      cb(e)
    }
  }
}
