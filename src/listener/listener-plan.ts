import type { AnyListenerConfig } from '../config/types.js'
import type { Listener } from './listener.js'

/** What a reload does with the listeners: which bound sockets it keeps, which it binds, which it retires. */
export interface ListenerPlan {
  /** A listener of the new configuration -> the running listener whose socket it takes over (perhaps under another name). */
  readonly keep: ReadonlyMap<AnyListenerConfig, Listener>
  /** Listeners of the new configuration that need a socket of their own, in file order. */
  readonly bind: readonly AnyListenerConfig[]
  /** Running listeners that no listener of the new configuration takes over: they stop accepting and drain. */
  readonly retire: readonly Listener[]
}

/**
 * Matches the listeners of a new configuration to the running ones by address, not by name:
 * a socket belongs to its protocol, host and port, so a renamed listener keeps its socket
 * (and its open connections), two listeners that swap ports swap sockets, and a listener that
 * changes protocol on the same port gets a new socket (TCP and UDP ports do not collide).
 * A running listener is compared on its bound port, so one started on port 0 is kept by a
 * file that now names the port it got. A new listener on port 0 has no address to match: it
 * keeps the socket of the running listener of the same name, protocol and host that was also
 * on port 0, and otherwise binds a port of its own.
 */
export function planListeners(running: Iterable<Listener>, next: readonly AnyListenerConfig[]): ListenerPlan {
  const free = new Set(running)
  const keep = new Map<AnyListenerConfig, Listener>()
  const take = (lc: AnyListenerConfig, match: (l: Listener) => boolean): void => {
    for (const l of free) {
      if (l.protocol !== lc.protocol || l.config.host !== lc.host || !match(l)) continue
      keep.set(lc, l)
      free.delete(l)
      return
    }
  }
  for (const lc of next) if (lc.port !== 0) take(lc, (l) => boundPort(l) === lc.port)
  for (const lc of next) if (lc.port === 0) take(lc, (l) => l.config.port === 0 && l.name === lc.name)
  return { keep, bind: next.filter((lc) => !keep.has(lc)), retire: [...free] }
}

function boundPort(l: Listener): number {
  return l.listening ? l.address().port : l.config.port
}
