import t from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import { connect, createServer, Socket, type AddressInfo, type NetConnectOpts, type Server } from 'node:net'
import type { Test } from 'tap'
import { Flow, READ_BYTES, relay, relayKind } from '../../src/proxy/splice.js'
import { readIntoBuffers } from '../../src/proxy/user-buffer.js'
import { STREAM_BUFFER_BYTES } from '../../src/proxy/tcp-session.js'
import { startDaemon } from '../helpers/daemon.js'
import { backend, closed, dial, eventually, flood, readUntil, stalled } from '../helpers/net.js'

const MiB = 1024 * 1024

/** What the test proxy in front of a backend holds: its accepted socket and its backend socket per connection. */
interface Proxy {
  port: number
  pairs: { client: Socket; backend: Socket }[]
}

/** A proxy that carries each connection with relay('js') exactly as TcpSession does: backend socket wired to a Flow. */
async function jsProxy(t: Test, backendPort: number, opts: { afterClientEnd?: boolean; dataEvents?: boolean } = {}): Promise<Proxy> {
  const pairs: Proxy['pairs'] = []
  const server: Server = createServer({ allowHalfOpen: true, highWaterMark: STREAM_BUFFER_BYTES }, (c) => {
    const flow = new Flow()
    const options: NetConnectOpts & { highWaterMark: number } = { port: backendPort, host: '127.0.0.1', allowHalfOpen: true, highWaterMark: STREAM_BUFFER_BYTES, onread: flow.onread }
    const up = connect(options)
    c.on('error', () => up.destroy())
    up.on('error', () => c.destroy())
    c.on('close', () => up.destroy())
    up.on('close', () => c.destroy())
    const start = (): void => {
      pairs.push({ client: c, backend: up })
      if (opts.dataEvents !== true) relay('js', c, up, flow)
      else {
        // The fallback: the accepted socket read with 'data' events.
        new Flow().start(c, up, false, () => false)
        flow.start(up, c, true)
      }
    }
    // afterClientEnd: the relay starts only once the client's FIN is in (as when it comes during a slow backend connect).
    up.once('connect', () => {
      if (opts.afterClientEnd !== true) start()
      else void eventually(() => finReceived(c), 'the client FIN to be read', 5000).then(start)
    })
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  t.teardown(() => {
    server.close()
    for (const p of pairs) {
      p.client.destroy()
      p.backend.destroy()
    }
  })
  return { port: (server.address() as AddressInfo).port, pairs }
}

/** Whether Node has read the FIN of `s` (whether or not its 'end' was emitted yet). */
function finReceived(s: Socket): boolean {
  const state: unknown = Reflect.get(s, '_readableState')
  return typeof state === 'object' && state !== null && Reflect.get(state, 'ended') === true
}

function sha(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex')
}

/** Collects what `s` receives until its end (or close). */
function collect(s: Socket): Promise<Buffer> {
  const parts: Buffer[] = []
  s.on('data', (d: Buffer) => parts.push(d))
  return new Promise((resolve) => {
    s.once('end', () => resolve(Buffer.concat(parts)))
    s.once('close', () => resolve(Buffer.concat(parts)))
  })
}

t.test('accepted sockets read into the relay buffers on this Node (user-buffer.ts)', async (t) => {
  // If a Node release changes how it stores onread, this fails here instead of the relay
  // quietly falling back to 'data' events.
  const got: string[] = []
  const buf = Buffer.alloc(64)
  let adopted = false
  const srv = createServer((s) => {
    s.pause()
    adopted = readIntoBuffers(s, () => buf, (n, b) => {
      got.push(Buffer.from(b.subarray(0, n)).toString())
      return true
    })
    s.resume()
    s.on('end', () => s.end())
  })
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r))
  t.teardown(() => srv.close())
  const c = await dial((srv.address() as AddressInfo).port)
  await eventually(() => adopted, 'the accepted socket to be adopted', 5000)
  c.end('hello through a buffer of its own')
  await closed(c)
  t.ok(adopted, 'readIntoBuffers takes the socket')
  t.equal(got.join(''), 'hello through a buffer of its own', 'the bytes arrive in the given buffer, and the end still comes')
  t.notOk(readIntoBuffers(new Socket(), () => buf, () => true), 'a socket without a handle is left alone (the caller reads with data events)')
})

t.test('relayKind: TLS keeps pipe, plain goes native when there is one, else js', async (t) => {
  t.equal(relayKind(false, true), 'pipe')
  t.equal(relayKind(false, false), 'pipe')
  t.equal(relayKind(true, true), 'native')
  t.equal(relayKind(true, false), 'js')
})

for (const dataEvents of [false, true]) {
  const mode = dataEvents ? ' (accepted socket read with data events, the fallback)' : ''

  t.test(`20 MiB each way at once arrive intact (SHA-256)${mode}`, async (t) => {
    const size = 20 * MiB
    const up = randomBytes(size)
    const down = randomBytes(size)
    let atBackend: Promise<Buffer> | undefined
    const be = await backend(t, (s) => {
      atBackend = collect(s)
      s.end(down)
    }, '127.0.0.1', { allowHalfOpen: true })
    const proxy = await jsProxy(t, be.port, { dataEvents })
    const c = await dial(proxy.port)
    const atClient = collect(c)
    c.end(up)
    const [gotDown, gotUp] = [await atClient, await (atBackend ?? Promise.reject(new Error('no backend connection')))]
    t.equal(gotUp.length, size, 'client → backend: every byte')
    t.equal(sha(gotUp), sha(up), 'client → backend: the same bytes')
    t.equal(gotDown.length, size, 'backend → client: every byte')
    t.equal(sha(gotDown), sha(down), 'backend → client: the same bytes')
    const p = proxy.pairs[0]!
    t.equal(p.client.bytesRead, size, 'the client socket counts what it read')
    t.equal(p.client.bytesWritten, size, 'and what it wrote')
  })

  t.test(`a backend that never reads: what the relay holds towards it is bounded${mode}`, async (t) => {
    let beSock: Socket | undefined
    const be = await backend(t, (s) => {
      beSock = s
      s.pause()
    })
    const proxy = await jsProxy(t, be.port, { dataEvents })
    const c = await dial(proxy.port)
    const chunk = Buffer.alloc(MiB, 0x63)
    const total = 96 * MiB
    const pushed = flood(c, chunk, total)
    await stalled(() => pushed.bytes - c.writableLength, 300, 'the client to stall')
    const p = proxy.pairs[0]!
    // Two read buffers; with 'data' events, the stream buffer (128 KiB) plus the chunk that passed it.
    const bound = dataEvents ? STREAM_BUFFER_BYTES + READ_BYTES : 2 * READ_BYTES
    t.ok(p.backend.writableLength <= bound, `the relay holds ${p.backend.writableLength} bytes towards the backend (≤ ${bound})`)
    t.ok(p.client.bytesRead - p.backend.bytesWritten <= bound, 'what was read from the client and not yet written out is bounded the same way')
    let got = 0
    const h = createHash('sha256')
    const s = beSock!
    s.on('data', (d: Buffer) => {
      got += d.length
      h.update(d)
    })
    const ended = new Promise<void>((r) => s.once('end', () => r()))
    s.resume()
    await ended
    t.equal(got, total, 'every byte arrived once the backend read')
    t.equal(h.digest('hex'), sha(Buffer.alloc(total, 0x63)), 'and they are the bytes sent')
  })
}

t.test('half-close: the client FIN reaches the backend, which still answers', async (t) => {
  const be = await backend(t, (s) => {
    const parts: Buffer[] = []
    s.on('data', (d: Buffer) => parts.push(d))
    s.on('end', () => {
      // Only after the client's FIN: the answer travels on the half-open connection.
      const q = Buffer.concat(parts)
      s.end(`got ${q.length} bytes, ${sha(q)}`)
    })
  }, '127.0.0.1', { allowHalfOpen: true })
  const proxy = await jsProxy(t, be.port)
  const c = connect({ port: proxy.port, host: '127.0.0.1', allowHalfOpen: true })
  const answer = collect(c)
  const q = randomBytes(3 * MiB)
  c.end(q)
  t.equal((await answer).toString(), `got ${q.length} bytes, ${sha(q)}`, 'the backend saw every byte and the end, and its answer came back')
})

t.test('a client FIN that came before the relay started is passed on, after the bytes before it', async (t) => {
  for (const early of ['', 'early bytes']) {
    let atBackend: Promise<Buffer> | undefined
    const be = await backend(t, (s) => {
      atBackend = collect(s)
      atBackend.then(() => s.end('bye'), () => {})
    }, '127.0.0.1', { allowHalfOpen: true })
    const proxy = await jsProxy(t, be.port, { afterClientEnd: true })
    const c = connect({ port: proxy.port, host: '127.0.0.1', allowHalfOpen: true })
    const answer = collect(c)
    c.end(early)
    t.equal((await answer).toString(), 'bye', `${early === '' ? 'no bytes' : 'bytes'}, then FIN: the backend saw the end and answered`)
    t.equal((await (atBackend ?? Promise.reject(new Error('no backend connection')))).toString(), early, 'and got what the client sent')
  }
})

t.test('half-close: the backend FIN reaches the client, which still sends', async (t) => {
  const greeting = randomBytes(2 * MiB)
  let atBackend: Promise<Buffer> | undefined
  const be = await backend(t, (s) => {
    atBackend = collect(s)
    s.end(greeting)
  }, '127.0.0.1', { allowHalfOpen: true })
  const proxy = await jsProxy(t, be.port)
  const c = connect({ port: proxy.port, host: '127.0.0.1', allowHalfOpen: true })
  const down = await collect(c)
  t.equal(sha(down), sha(greeting), 'the backend data, then its end, reached the client')
  t.notOk(c.destroyed, 'the client side is still open for writing')
  const late = randomBytes(3 * MiB)
  c.end(late)
  const gotLate = await (atBackend ?? Promise.reject(new Error('no backend connection')))
  t.equal(sha(gotLate), sha(late), 'what the client sent after the backend FIN arrived')
})

t.test('a client that never reads: the relay holds at most two read buffers towards it', async (t) => {
  const chunk = Buffer.alloc(MiB, 0x61)
  const pushed = { bytes: 0 }
  let beSock: Socket | undefined
  const total = 128 * MiB
  const be = await backend(t, (s) => {
    beSock = s
    flood(s, chunk, total, pushed)
  })
  const proxy = await jsProxy(t, be.port)
  const c = await dial(proxy.port)
  c.pause()
  const last = await stalled(() => pushed.bytes - (beSock?.writableLength ?? 0), 300, 'the backend to stall')
  const p = proxy.pairs[0]!
  const held = p.client.writableLength
  t.ok(held <= 2 * READ_BYTES, `the relay holds ${held} bytes towards the client (≤ ${2 * READ_BYTES})`)
  t.ok(last < 64 * MiB, `the backend could push only ${(last / MiB).toFixed(1)} MiB while nobody read`)
  t.ok(p.backend.bytesRead - p.client.bytesWritten <= 2 * READ_BYTES, 'what was read from the backend and not yet written out is bounded the same way')
  let got = 0
  const h = createHash('sha256')
  c.on('data', (d: Buffer) => {
    got += d.length
    h.update(d)
  })
  c.resume()
  await closed(c)
  t.equal(got, total, 'every byte arrived once the client read')
  t.equal(h.digest('hex'), sha(Buffer.alloc(total, 0x61)), 'and they are the bytes sent')
})

t.test('a backend that resets mid-stream closes the client, after what it had sent', async (t) => {
  const first = randomBytes(256 * 1024)
  const be = await backend(t, (s) => {
    s.write(first, () => setImmediate(() => s.resetAndDestroy()))
  })
  const proxy = await jsProxy(t, be.port)
  const c = await dial(proxy.port)
  const parts: Buffer[] = []
  c.on('data', (d: Buffer) => parts.push(d))
  c.on('error', () => {})
  await closed(c)
  const got = Buffer.concat(parts)
  t.ok(got.length <= first.length, 'nothing more than the backend sent')
  t.equal(sha(got), sha(first.subarray(0, got.length)), 'and the bytes that arrived are the ones sent, in order')
})

// Through the daemon with relay: js, so the session's close reasons and idle timeout are the JS relay's.
const daemonYaml = (addr: string, idle = ''): string => `
relay: js
log: { level: debug }
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p${idle} }]
pools:
  p: { backends: ["${addr}"] }
`

t.test('relay: js in the daemon: idle timeout, a backend reset and a client reset each end with their reason', async (t) => {
  t.test('idle timeout', async (t) => {
    const be = await backend(t, (s) => s.pipe(s))
    const run = await startDaemon(t, daemonYaml(be.address, ', timeouts: { idle: 300ms }'))
    const c = await dial(run.port('l'))
    // Traffic keeps it open past the timeout: the relay's reads and writes refresh it.
    const began = Date.now()
    let lastEcho = began
    for (let i = 0; i < 6; i++) {
      c.write('ping\n')
      t.equal((await readUntil(c, 'line')).toString(), 'ping\n', `echo ${i + 1} through the JS relay`)
      lastEcho = Date.now()
      await new Promise((r) => setTimeout(r, 100))
    }
    t.ok(Date.now() - began > 500 && !c.closed, 'still open after twice the idle timeout with traffic')
    await closed(c)
    t.ok(Date.now() - lastEcho >= 250, `closed once idle for the timeout (${Date.now() - lastEcho} ms after the last echo)`)
    const line = await run.logs.waitFor((l) => l.access === true)
    t.equal(line.close_reason, 'idle_timeout')
    t.equal(line.bytes_in, 30)
    t.equal(line.bytes_out, 30)
  })
  t.test('backend reset mid-stream', async (t) => {
    const be = await backend(t, (s) => {
      s.once('data', () => s.write(randomBytes(MiB), () => s.resetAndDestroy()))
    })
    const run = await startDaemon(t, daemonYaml(be.address))
    const c = await dial(run.port('l'))
    c.on('error', () => {})
    c.on('data', () => {})
    c.write('go')
    await closed(c)
    const line = await run.logs.waitFor((l) => l.access === true)
    t.equal(line.close_reason, 'backend_error')
  })
  t.test('a graceful stop serves an open connection until it ends', async (t) => {
    const be = await backend(t, (s) => s.pipe(s))
    const run = await startDaemon(t, daemonYaml(be.address))
    const open = await dial(run.port('l'))
    open.write('x\n')
    await readUntil(open, 'line')
    const stopping = run.daemon.stop()
    open.write('still\n')
    t.equal((await readUntil(open, 'line')).toString(), 'still\n', 'served while stopping')
    open.end()
    await stopping
    const line = await run.logs.waitFor((l) => l.access === true)
    t.equal(line.close_reason, 'client_closed')
  })
  t.test('the shutdown deadline closes what is still open', async (t) => {
    const be = await backend(t, (s) => s.pipe(s))
    const run = await startDaemon(t, `shutdown_timeout: 200ms\n${daemonYaml(be.address)}`)
    const open = await dial(run.port('l'))
    open.write('x\n')
    await readUntil(open, 'line')
    await run.daemon.stop()
    await closed(open)
    const line = await run.logs.waitFor((l) => l.access === true)
    t.equal(line.close_reason, 'shutdown')
  })
  t.test('client reset mid-stream', async (t) => {
    let beClosed: Promise<void> | undefined
    const be = await backend(t, (s) => {
      beClosed = closed(s)
      s.pipe(s)
    })
    const run = await startDaemon(t, daemonYaml(be.address))
    const c = await dial(run.port('l'))
    c.write(randomBytes(MiB))
    await readUntil(c, 1024)
    c.resetAndDestroy()
    const line = await run.logs.waitFor((l) => l.access === true)
    t.equal(line.close_reason, 'client_error')
    await beClosed
    t.pass('the backend connection was closed too')
  })
})
