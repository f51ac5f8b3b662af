import { createSocket } from 'node:dgram'
import { connect, createServer, type AddressInfo } from 'node:net'

/**
 * A loopback address of its own (all of 127.0.0.0/8 is loopback on Linux): a port found free
 * on it stays free, because the port-0 servers of other tests bind 127.0.0.1.
 */
export function quietLoopback(): string {
  const n = (max: number): number => 1 + Math.floor(Math.random() * max)
  return `127.${n(250)}.${n(250)}.${n(250)}`
}

/** A TCP and UDP port with nothing bound to it on `host` (bound then released). */
export async function freePort(host: string): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const s = createServer()
    await new Promise<void>((resolve) => s.listen(0, host, resolve))
    const port = (s.address() as AddressInfo).port
    await new Promise<void>((resolve) => s.close(() => resolve()))
    // The same number must be free for UDP too (a test may move a listener between the two).
    const u = createSocket('udp4')
    const udpFree = await new Promise<boolean>((resolve) => {
      u.once('error', () => {
        try {
          u.close()
        } catch {
          // A failed bind may have closed it already.
        }
        resolve(false)
      })
      u.bind(port, host, () => u.close(() => resolve(true)))
    })
    if (udpFree) return port
  }
  throw new Error(`no port free for both TCP and UDP on ${host}`)
}

/** The outcome of a fresh TCP connection: 'connected' or the errno (ECONNREFUSED when nothing listens). */
export function connectOutcome(port: number, host: string): Promise<string> {
  return new Promise((resolve) => {
    const s = connect({ port, host })
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'))
    s.once('connect', () => {
      s.destroy()
      resolve('connected')
    })
  })
}
