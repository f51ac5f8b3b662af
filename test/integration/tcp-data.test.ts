import t from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import type { Socket } from 'node:net'
import { startDaemon } from '../helpers/daemon.js'
import type { TcpListener } from '../../src/listener/tcp-listener.js'
import { TcpSession } from '../../src/proxy/tcp-session.js'
import { backend, closed, dial, eventually, flood, readUntil, stalled } from '../helpers/net.js'

const ONE_POOL = (addr: string, extra = ''): string => `
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p ${extra} }]
pools:
  p: { backends: [${addr}] }
`

t.test('20 MiB each way through the proxy arrive intact (SHA-256)', async (t) => {
  const size = 20 * 1024 * 1024
  const down = randomBytes(size)
  let upHash = ''
  const be = await backend(t, (s) => {
    const h = createHash('sha256')
    let n = 0
    s.on('data', (c: Buffer) => {
      h.update(c)
      n += c.length
      if (n === size) {
        upHash = h.digest('hex')
        s.end(down)
      }
    })
  })
  const run = await startDaemon(t, ONE_POOL(be.address))
  const up = randomBytes(size)
  const c = await dial(run.port('l'))
  const h = createHash('sha256')
  let got = 0
  c.on('data', (d: Buffer) => {
    h.update(d)
    got += d.length
  })
  c.write(up)
  await closed(c)
  t.equal(upHash, createHash('sha256').update(up).digest('hex'), 'client → backend: same SHA-256')
  t.equal(got, size, 'backend → client: every byte')
  t.equal(h.digest('hex'), createHash('sha256').update(down).digest('hex'), 'backend → client: same SHA-256')
  const line = (await run.logs.waitForAccess(1))[0]!
  t.equal(line.bytes_in, size, 'access log bytes_in')
  t.equal(line.bytes_out, size, 'access log bytes_out')
  t.equal(line.close_reason, 'backend_closed', `the backend ended the connection (${String(line.close_reason)})`)
})

t.test('half-close: the client FIN reaches the backend and its reply still comes back', async (t) => {
  const be = await backend(
    t,
    (s) => {
      const parts: Buffer[] = []
      s.on('data', (c: Buffer) => parts.push(c))
      // Answer only after the client's FIN: a request/response that needs half-close.
      s.on('end', () => s.end(`got ${Buffer.concat(parts).toString()} and your FIN`))
    },
    '127.0.0.1',
    { allowHalfOpen: true },
  )
  const run = await startDaemon(t, ONE_POOL(be.address))
  const c = await dial(run.port('l'))
  c.end('question')
  const parts: Buffer[] = []
  c.on('data', (d: Buffer) => parts.push(d))
  await closed(c)
  t.equal(Buffer.concat(parts).toString(), 'got question and your FIN', 'reply arrived after the client half-closed')
  const line = (await run.logs.waitForAccess(1))[0]!
  t.equal(line.close_reason, 'client_closed', `close_reason names the side that closed first (${String(line.close_reason)})`)
})

t.test('a slow reader with a fast backend keeps sluice memory bounded (backpressure)', async (t) => {
  const total = 256 * 1024 * 1024
  const chunk = Buffer.alloc(1024 * 1024, 0x61)
  const accepted = { bytes: 0 } // bytes the backend's kernel took: what sluice has read or the kernel holds
  let beSock: Socket | undefined
  const be = await backend(t, (s) => {
    beSock = s
    flood(s, chunk, total, accepted)
  })
  const run = await startDaemon(t, ONE_POOL(be.address))
  const c = await dial(run.port('l'))
  c.pause()
  // Wait until the backend stops making progress: everything in between is full.
  const last = await stalled(() => accepted.bytes - (beSock?.writableLength ?? 0), 500, 'the backend to stall')
  const session = [...(run.daemon.listeners.get('l') as TcpListener).sessions][0]
  t.ok(last < 64 * 1024 * 1024, `backend could push only ${(last / 1048576).toFixed(1)} MiB of 256 MiB while nobody read`)
  // Node's queue towards the client exists with the JS relay only (the native relay holds
  // one chunk per direction at most, and no Node socket).
  if (session instanceof TcpSession) {
    const held = session.client.writableLength
    t.ok(held <= 1024 * 1024, `sluice holds ${held} bytes queued towards the client (≤ 1 MiB)`)
  }
  // Now read it all: nothing was lost while paused.
  let got = 0
  c.on('data', (d: Buffer) => (got += d.length))
  c.resume()
  await closed(c)
  t.equal(got, total, 'every byte arrived once the client read')
})

t.test('an error on one connection closes that connection only', async (t) => {
  const be = await backend(t, (s) => s.pipe(s))
  const run = await startDaemon(t, ONE_POOL(be.address))
  const good = await dial(run.port('l'))
  const bad = await dial(run.port('l'))
  good.write('ping-1\n')
  t.equal((await readUntil(good, 'line')).toString(), 'ping-1\n', 'first connection echoes')
  bad.write('x')
  await readUntil(bad, 1)
  bad.resetAndDestroy() // RST from the client
  await run.logs.waitForAccess(1)
  t.equal(run.logs.access[0]!.close_reason, 'client_error', 'the reset connection ends as client_error')
  good.write('ping-2\n')
  t.equal((await readUntil(good, 'line')).toString(), 'ping-2\n', 'the other connection is untouched')
  await eventually(() => be.sockets.size === 1, "the reset connection's backend side to close")
  good.destroy()
})

t.test('idle timeout closes a silent connection; traffic either way keeps it open', async (t) => {
  const be = await backend(t, (s) => s.pipe(s))
  const run = await startDaemon(t, ONE_POOL(be.address, ', timeouts: { idle: 1s }'))
  const c = await dial(run.port('l'))
  const start = Date.now()
  let lastTraffic = start
  let longestPause = 0
  // Keep it busy past the timeout: an echo, then 100 ms, for 3 s. A busy machine may stretch
  // a pause, so the pauses are measured: one close to the timeout would make an idle close
  // right, and the check below says so rather than blame sluice.
  while (Date.now() - start < 3000) {
    c.write('.')
    await readUntil(c, 1)
    const now = Date.now()
    longestPause = Math.max(longestPause, now - lastTraffic)
    lastTraffic = now
    await new Promise((r) => setTimeout(r, 100))
  }
  t.ok(longestPause < 900, `the longest pause between echoes was ${longestPause} ms, under the 1 s idle timeout`)
  t.notOk(c.closed, 'still open after 3× the idle timeout while traffic flows')
  await closed(c)
  const silent = Date.now() - lastTraffic
  const line = (await run.logs.waitForAccess(1))[0]!
  t.equal(line.close_reason, 'idle_timeout', 'closed by the idle timeout once silent')
  t.ok(silent >= 990, `closed after ${silent} ms of silence, not before the 1 s timeout`)
})

t.test('default settings never cut an idle connection and arm TCP keep-alive on both sides', async (t) => {
  const be = await backend(t, (s) => s.pipe(s))
  // The client socket's own settings are the JS relay's (the native relay keeps no Node socket).
  const run = await startDaemon(t, `relay: js\n${ONE_POOL(be.address)}`)
  const lc = run.daemon.config.listeners[0]!
  t.equal(lc.protocol === 'tcp' ? lc.timeouts.idleMs : -1, 0, 'no idle timeout by default')
  const c = await dial(run.port('l'))
  c.write('hi')
  await readUntil(c, 2)
  const session = [...(run.daemon.listeners.get('l') as TcpListener).sessions][0] as TcpSession
  t.equal(session.client.timeout, undefined, 'no socket timeout armed on the client side')
  t.equal(session.client.writableHighWaterMark, 128 * 1024, '128 KiB stream buffer on the client side')
  // /proc/net/tcp shows the kernel's timer per socket: 2 is the keep-alive timer.
  const up = [...be.sockets][0]!
  // A retransmit or delayed-ACK timer shows instead while bytes are in flight: wait it out.
  const clientSide = await settledTimer(run.port('l'), c.localPort!)
  const backendSide = await settledTimer(up.remotePort!, be.port)
  if (clientSide === undefined || backendSide === undefined) {
    t.skip('/proc/net/tcp not readable here', () => {})
  } else {
    t.equal(clientSide, 2, "keep-alive timer armed on sluice's client socket")
    t.equal(backendSide, 2, "keep-alive timer armed on sluice's backend socket")
  }
  c.destroy()
})

t.test('connections the native relay accepts itself get keep-alive on both sides too', async (t) => {
  const be = await backend(t, (s) => s.pipe(s))
  const run = await startDaemon(t, `relay: native\n${ONE_POOL(be.address)}`)
  const c = await dial(run.port('l'))
  c.write('hi')
  await readUntil(c, 2)
  const sessions = [...(run.daemon.listeners.get('l') as TcpListener).sessions]
  t.equal(sessions.length, 1, 'one open session')
  t.notOk(sessions[0] instanceof TcpSession, 'accepted by the relay: no Node socket for it')
  const up = [...be.sockets][0]!
  // A retransmit or delayed-ACK timer shows instead while bytes are in flight: wait it out.
  const clientSide = await settledTimer(run.port('l'), c.localPort!)
  const backendSide = await settledTimer(up.remotePort!, be.port)
  if (clientSide === undefined || backendSide === undefined) {
    t.skip('/proc/net/tcp not readable here', () => {})
  } else {
    t.equal(clientSide, 2, "keep-alive timer armed on sluice's client socket")
    t.equal(backendSide, 2, "keep-alive timer armed on sluice's backend socket")
  }
  c.destroy()
})

/** tcpTimer once it reads 2 (keep-alive), or what it reads after a few seconds. */
async function settledTimer(localPort: number, remotePort: number): Promise<number | undefined> {
  let v = await tcpTimer(localPort, remotePort)
  for (const deadline = Date.now() + 3000; v !== undefined && v !== 2 && Date.now() < deadline; v = await tcpTimer(localPort, remotePort)) {
    await new Promise((resolve) => setImmediate(resolve))
  }
  return v
}

/** The `tr` (timer) field of the IPv4 socket local:remote in /proc/net/tcp, if listed. */
async function tcpTimer(localPort: number, remotePort: number): Promise<number | undefined> {
  const { readFile } = await import('node:fs/promises')
  let text: string
  try {
    text = await readFile('/proc/net/tcp', 'utf8')
  } catch {
    return undefined
  }
  const hex = (n: number): string => n.toString(16).toUpperCase().padStart(4, '0')
  for (const row of text.split('\n').slice(1)) {
    const f = row.trim().split(/\s+/)
    if (f[1]?.endsWith(`:${hex(localPort)}`) && f[2]?.endsWith(`:${hex(remotePort)}`)) {
      return Number.parseInt((f[5] ?? '').split(':')[0] ?? '', 16)
    }
  }
  return undefined
}

t.test('access log line has every contract field', async (t) => {
  const be = await backend(t, (s) => s.end('bye'))
  const run = await startDaemon(t, ONE_POOL(be.address))
  const c = await dial(run.port('l'))
  c.resume()
  await closed(c)
  const line = (await run.logs.waitForAccess(1))[0]!
  for (const k of ['listener', 'client', 'pool', 'backend', 'bytes_in', 'bytes_out', 'duration_ms', 'close_reason']) {
    t.ok(k in line, `has ${k}`)
  }
  t.equal(line.listener, 'l')
  t.equal(line.pool, 'p')
  t.equal(line.backend, be.address)
  t.equal(line.bytes_out, 3)
  t.match(line.client, /^127\.0\.0\.1:\d+$/)
})

t.test('metrics count connections and bytes', async (t) => {
  const be = await backend(t, (s) => s.pipe(s))
  const run = await startDaemon(t, ONE_POOL(be.address))
  const c = await dial(run.port('l'))
  c.write('12345')
  await readUntil(c, 5)
  const live = await run.metrics()
  t.match(live, /sluice_connections_active\{listener="l"\} 1/, 'one active connection')
  t.match(live, /sluice_bytes_total\{listener="l",direction="in"\} 5/, 'bytes in counted while open')
  c.destroy()
  await run.logs.waitForAccess(1)
  const after = await run.metrics()
  t.match(after, /sluice_connections_active\{listener="l"\} 0/, 'none active after close')
  t.match(after, /sluice_connections_total\{listener="l"\} 1/, 'one in total')
  t.match(after, /sluice_bytes_total\{listener="l",direction="out"\} 5/, 'bytes out counted')
  t.match(after, new RegExp(`sluice_backend_up\\{pool="p",backend="${be.address}"\\} 1`), 'backend up')
})
