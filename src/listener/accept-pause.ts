import { closeSync } from 'node:fs'
import type { Server } from 'node:net'
import { loadNativeRelay } from '../proxy/native-relay.js'

/**
 * Stopping a TCP listener from accepting without closing its socket. Node's net.Server has
 * no pause: libuv accepts whenever the socket is readable, and when accept fails with
 * EMFILE its fallback (uv__emfile_trick) accepts and closes every connection waiting in the
 * backlog. So while descriptors are out the listener hands its socket to a copy of the
 * descriptor (dup, from the native addon) and closes its own server: the kernel goes on
 * completing handshakes into the backlog, and nothing is accepted. To resume, a new server
 * listens on that copy and takes the backlog as it was.
 */

/** The descriptor under a listening net.Server, when it has one. */
export function serverFd(server: Server): number | undefined {
  const handle = (server as unknown as { _handle?: { fd?: unknown } | null })._handle
  const fd = handle?.fd
  return typeof fd === 'number' && Number.isInteger(fd) && fd >= 0 ? fd : undefined
}

/** dup(2) from the native addon, or undefined when it is not built (then listeners cannot pause). */
export function nativeDup(): ((fd: number) => number) | undefined {
  return loadNativeRelay().addon?.dupFd
}

/** A listening socket held while its server is closed. */
export interface HeldSocket {
  fd: number
  address: { host: string; port: number; text: string }
}

/** Copies the server's listening socket and closes the server; undefined when it cannot (nothing changes). */
export function holdListening(server: Server, address: HeldSocket['address'], dup = nativeDup()): HeldSocket | undefined {
  const fd = serverFd(server)
  if (fd === undefined || dup === undefined || !server.listening) return undefined
  let copy: number
  try {
    copy = dup(fd)
  } catch {
    return undefined
  }
  server.close()
  return { fd: copy, address }
}

/**
 * The listen backlog for a listener of `maxConnections`: as HAProxy does, as long as the
 * connection limit (the kernel caps it at net.core.somaxconn), and never below nginx's 511. A
 * burst of connects larger than the backlog while the event loop is busy is otherwise dropped
 * by the kernel (ListenOverflows) before sluice sees it.
 */
export function listenBacklog(maxConnections: number): number {
  return Math.max(511, Math.min(maxConnections, 65_535))
}

/** Listens on a held socket again (the server then owns the descriptor). */
export function listenHeld(server: Server, held: HeldSocket, backlog: number): void {
  server.listen({ fd: held.fd, backlog })
}

/** Closes a held socket for good (the listener is closing). */
export function dropHeld(held: HeldSocket): void {
  try {
    closeSync(held.fd)
  } catch {
    // Closed already.
  }
}
