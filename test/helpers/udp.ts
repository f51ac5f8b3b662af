import { createSocket, type RemoteInfo, type Socket } from 'node:dgram'
import type { Test } from 'tap'

export interface UdpBackend {
  socket: Socket
  port: number
  /** `host:port` (`[v6]:port`) for a pool's backends list. */
  address: string
  /** Datagrams received so far. */
  received: Buffer[]
  /** Source address:port of each datagram received (sluice's upstream sockets). */
  sources: string[]
}

/**
 * A UDP backend on port 0. By default it answers each datagram with `name:` followed by the
 * datagram; `echo` sends the datagram back unchanged; `silent` answers nothing; `twice`
 * answers as `named` and then once more with `:again` after it. A datagram starting with
 * `ignore` gets no answer in any mode.
 */
export async function udpBackend(t: Test, name: string, opts: { host?: string; mode?: 'named' | 'echo' | 'silent' | 'twice' } = {}): Promise<UdpBackend> {
  const host = opts.host ?? '127.0.0.1'
  const mode = opts.mode ?? 'named'
  const socket = createSocket(host.includes(':') ? 'udp6' : 'udp4')
  const received: Buffer[] = []
  const sources: string[] = []
  socket.on('message', (msg: Buffer, r: RemoteInfo) => {
    received.push(msg)
    sources.push(`${r.address}:${r.port}`)
    if (msg.subarray(0, 6).toString() === 'ignore') return
    if (mode === 'named' || mode === 'twice') socket.send(Buffer.concat([Buffer.from(`${name}:`), msg]), r.port, r.address)
    else if (mode === 'echo') socket.send(msg, r.port, r.address)
    if (mode === 'twice') socket.send(Buffer.concat([Buffer.from(`${name}:`), msg, Buffer.from(':again')]), r.port, r.address)
  })
  await new Promise<void>((resolve) => socket.bind(0, host, resolve))
  const port = socket.address().port
  t.teardown(() => socket.close())
  return { socket, port, address: host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`, received, sources }
}

/** A UDP port on 127.0.0.1 with nothing bound to it (bound then released). */
export async function deadUdpPort(): Promise<number> {
  const s = createSocket('udp4')
  await new Promise<void>((resolve) => s.bind(0, '127.0.0.1', resolve))
  const port = s.address().port
  await new Promise<void>((resolve) => s.close(resolve))
  return port
}

/**
 * Sends `qs` from a new socket (a new source port, as stub resolvers do) to 127.0.0.1:`port` and
 * resolves with the datagrams that came back within `ms`, or as soon as `wanted` have
 * (all of `qs` by default). `recvBufferSize` sets the socket's receive buffer.
 */
export async function askFromNewPort(port: number, qs: Buffer[], opts: { ms: number; wanted?: number; recvBufferSize?: number }): Promise<Buffer[]> {
  const wanted = opts.wanted ?? qs.length
  const s = createSocket('udp4')
  await new Promise<void>((resolve) => s.bind(0, '127.0.0.1', resolve))
  if (opts.recvBufferSize !== undefined) s.setRecvBufferSize(opts.recvBufferSize)
  const got: Buffer[] = []
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer)
      s.close()
      resolve(got)
    }
    const timer = setTimeout(done, opts.ms)
    s.on('message', (m: Buffer) => {
      got.push(m)
      if (got.length >= wanted) done()
    })
    for (const q of qs) s.send(q, port, '127.0.0.1')
  })
}

/** A UDP client socket that queues what it receives, so a test can await the next datagram. */
export class UdpClient {
  readonly inbox: { msg: Buffer; from: RemoteInfo }[] = []
  private waiter: (() => void) | undefined

  private constructor(readonly socket: Socket) {
    socket.on('message', (msg: Buffer, from: RemoteInfo) => {
      this.inbox.push({ msg, from })
      this.waiter?.()
    })
  }

  static async open(t: Test, host = '127.0.0.1'): Promise<UdpClient> {
    const socket = createSocket(host.includes(':') ? 'udp6' : 'udp4')
    await new Promise<void>((resolve) => socket.bind(0, host, resolve))
    t.teardown(() => socket.close())
    return new UdpClient(socket)
  }

  get port(): number {
    return this.socket.address().port
  }

  send(port: number, data: string | Buffer, host = '127.0.0.1'): void {
    this.socket.send(typeof data === 'string' ? Buffer.from(data) : data, port, host)
  }

  /** The next datagram received (or one already queued); fails after `timeoutMs`. */
  async next(timeoutMs = 5000): Promise<{ msg: Buffer; from: RemoteInfo }> {
    const deadline = Date.now() + timeoutMs
    while (this.inbox.length === 0) {
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`no datagram within ${timeoutMs}ms`)
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left)
        this.waiter = () => {
          clearTimeout(timer)
          resolve()
        }
      })
      this.waiter = undefined
    }
    return this.inbox.shift()!
  }

  /** Sends `data` and returns the text of the reply. */
  async ask(port: number, data: string, host = '127.0.0.1'): Promise<string> {
    this.send(port, data, host)
    return (await this.next()).msg.toString()
  }
}

/** The value of metric `name` whose labels include `labels` (any order), or 0 when absent. */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`)
  for (const line of text.split('\n')) {
    const m = /^([a-z_:]+)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (m === null || m[1] !== name) continue
    const have = (m[2] ?? '').split(',')
    if (want.every((w) => have.includes(w))) return Number(m[3])
  }
  return 0
}
