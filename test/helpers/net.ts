import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import type { Test } from 'tap'

/** A backend on 127.0.0.1 (or `host`) port 0; closed (with its sockets) at teardown. */
export async function backend(t: Test, onConnection: (s: Socket) => void, host = '127.0.0.1', opts: { allowHalfOpen?: boolean } = {}): Promise<{ server: Server; port: number; address: string; sockets: Set<Socket> }> {
  const sockets = new Set<Socket>()
  const server = createServer({ allowHalfOpen: opts.allowHalfOpen ?? false }, (s) => {
    sockets.add(s)
    s.on('close', () => sockets.delete(s))
    s.on('error', () => {})
    onConnection(s)
  })
  await new Promise<void>((resolve) => server.listen(0, host, resolve))
  const port = (server.address() as AddressInfo).port
  t.teardown(() => {
    server.close()
    for (const s of sockets) s.destroy()
  })
  return { server, port, address: host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`, sockets }
}

/** A backend that writes `name\n` to every connection, then echoes. */
export function namedBackend(t: Test, name: string, host = '127.0.0.1'): ReturnType<typeof backend> {
  return backend(t, (s) => {
    s.write(`${name}\n`)
    s.pipe(s)
  }, host)
}

/** Ports deadPort() has handed out in this process: never handed out twice. */
const deadPorts = new Set<number>()

/**
 * A port on 127.0.0.1 with nothing listening. Taken below the kernel's ephemeral range
 * (32768 and up), where no listen on port 0 (of this process or of a test running beside it)
 * can be given it after it was released; checked free, and never handed out twice.
 */
export async function deadPort(): Promise<number> {
  for (;;) {
    const port = 20_000 + Math.floor(Math.random() * 12_000)
    if (deadPorts.has(port)) continue
    const s = createServer()
    const free = await new Promise<boolean>((resolve) => {
      s.once('error', () => resolve(false))
      s.listen(port, '127.0.0.1', () => resolve(true))
    })
    if (!free) continue
    await new Promise<void>((resolve) => s.close(() => resolve()))
    deadPorts.add(port)
    return port
  }
}

/**
 * A connected client socket. A connection that sluice accepts and resets at once (a refusal)
 * can be reset before Node has seen its connect complete: that socket is resolved too, already
 * closed, for the test to look at; any other error rejects.
 */
export function dial(port: number, host = '127.0.0.1'): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error & { code?: string }): void => {
      if (err.code !== 'ECONNRESET') {
        reject(err)
        return
      }
      s.on('error', () => {})
      resolve(s)
    }
    const s = connect({ port, host }, () => {
      s.off('error', onError)
      resolve(s)
    })
    s.once('error', onError)
  })
}

/** Reads from `s` until it holds at least `n` bytes (or a newline when n is 'line'). */
export function readUntil(s: Socket, n: number | 'line', timeoutMs = 10_000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = []
    let len = 0
    const timer = setTimeout(() => done(new Error(`read timed out after ${len} bytes`)), timeoutMs)
    const onData = (c: Buffer): void => {
      parts.push(c)
      len += c.length
      const buf = Buffer.concat(parts)
      if (n === 'line' ? buf.includes(10) : len >= n) done(undefined, buf)
    }
    const onEnd = (): void => done(new Error(`connection ended after ${len} bytes`))
    function done(err?: Error, buf?: Buffer): void {
      clearTimeout(timer)
      s.off('data', onData)
      s.off('end', onEnd)
      s.off('error', onEnd)
      if (err) reject(err)
      else resolve(buf as Buffer)
    }
    s.on('data', onData)
    s.once('end', onEnd)
    s.once('error', onEnd)
  })
}

/** Connects, reads the first line (a named backend's greeting), closes; returns the line. */
export async function greeting(port: number, host = '127.0.0.1'): Promise<string> {
  const s = await dial(port, host)
  const line = (await readUntil(s, 'line')).toString().trim()
  s.destroy()
  return line
}

/** Resolves when `s` has closed. */
export function closed(s: Socket): Promise<void> {
  return new Promise((resolve) => (s.closed ? resolve() : s.once('close', () => resolve())))
}

/** Polls `pred` until true, or fails after `timeoutMs`. */
/** Bytes handed to a socket by flood(), counted as it goes. */
export interface Written {
  bytes: number
}

/** Writes chunk to s again and again until total bytes are written, waiting for 'drain' each
 * time s's buffer is full, then ends s. written.bytes counts what it has handed to s so far. */
export function flood(s: Socket, chunk: Buffer, total: number, written: Written = { bytes: 0 }): Written {
  const pump = (): void => {
    while (written.bytes < total) {
      written.bytes += chunk.length
      if (!s.write(chunk)) {
        s.once('drain', pump)
        return
      }
    }
    s.end()
  }
  pump()
  return written
}

export async function eventually(pred: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

/** Polls `progress` until it is above 0 and has stayed the same for `quietMs` (the writer
 * behind it has stalled), or fails after `timeoutMs`; resolves with its value then. */
export async function stalled(progress: () => number, quietMs: number, what: string, timeoutMs = 30_000): Promise<number> {
  let last = -1
  let stableSince = Date.now()
  await eventually(() => {
    const now = progress()
    if (now !== last) {
      last = now
      stableSince = Date.now()
    }
    return now > 0 && Date.now() - stableSince > quietMs
  }, what, timeoutMs)
  return last
}
