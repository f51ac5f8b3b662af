import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { connect, createServer, Socket, type AddressInfo, type Server } from 'node:net'
import { fileURLToPath } from 'node:url'
import { loadNativeRelay, type NativeRelay, type RelayAccept, type RelayAcceptError, type RelayConnectResult, type RelayEnd } from '../../src/proxy/native-relay.js'
import { blackHole } from '../helpers/black-hole.js'
import { deadPort, eventually } from '../helpers/net.js'

// The native relay's accept path over real loopback sockets: it accepts on a listening socket
// it was given, connects each connection where JS says, reports every step, and gives the
// socket (or a connection) back intact.

const HOST = '127.0.0.1'
const native = loadNativeRelay()
const skip = native.addon === undefined ? `the native relay is not built here: ${native.reason}` : false

/** Everything the relay reports, and ways to wait for it. */
class Events {
  readonly accepts: RelayAccept[] = []
  readonly results = new Map<number, RelayConnectResult[]>()
  readonly ends = new Map<number, RelayEnd>()
  readonly released = new Map<number, number>()
  readonly acceptErrors: RelayAcceptError[] = []
  readonly unlistened: number[] = []
  onAccept: ((a: RelayAccept) => void) | undefined
  readonly relay: NativeRelay

  constructor() {
    this.relay = native.addon!.create({
      onEnd: (ends) => ends.forEach((e) => this.ends.set(e.id, e)),
      onAccept: (a) => {
        this.accepts.push(a)
        this.onAccept?.(a)
      },
      onConnect: (r) => this.results.set(r.id, [...(this.results.get(r.id) ?? []), r]),
      onReleased: (id, fd) => this.released.set(id, fd),
      onAcceptError: (e) => this.acceptErrors.push(e),
      onUnlistened: (l) => this.unlistened.push(l),
    })
  }

  async accepted(n: number): Promise<RelayAccept> {
    await eventually(() => this.accepts.length >= n, `accept ${n}`)
    return this.accepts[n - 1]!
  }

  async result(id: number, n = 1): Promise<RelayConnectResult> {
    await eventually(() => (this.results.get(id)?.length ?? 0) >= n, `connect result ${n} of ${id}`, 15_000)
    return this.results.get(id)![n - 1]!
  }

  async end(id: number): Promise<RelayEnd> {
    await eventually(() => this.ends.has(id), `the end of ${id}`, 15_000)
    return this.ends.get(id)!
  }
}

async function listening(onConnection: (s: Socket) => void = () => {}): Promise<{ server: Server; port: number }> {
  const server = createServer({ allowHalfOpen: true }, onConnection)
  await new Promise<void>((resolve) => server.listen(0, HOST, resolve))
  return { server, port: (server.address() as AddressInfo).port }
}

function fdOf(server: Server): number {
  return (server as unknown as { _handle: { fd: number } })._handle.fd
}

/** A relay accepting on a fresh loopback port (Node's server closed once the relay has its own descriptor). */
async function relayOnPort(t: Test): Promise<{ ev: Events; port: number; lid: number }> {
  const ev = new Events()
  t.teardown(() => ev.relay.close())
  const { server, port } = await listening()
  const lid = ev.relay.listen(fdOf(server), 0)
  server.close()
  return { ev, port, lid }
}

function dialRaw(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const c = connect({ port, host: HOST, allowHalfOpen: true })
    c.once('connect', () => resolve(c))
    c.once('error', reject)
  })
}

function textUntilEnd(s: Socket): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = ''
    s.setEncoding('utf8')
    s.on('data', (d: string) => (text += d))
    s.once('end', () => resolve(text))
    s.once('error', reject)
  })
}

function errorOf(s: Socket): Promise<string | undefined> {
  return new Promise((resolve) => {
    s.once('error', (e: Error & { code?: string }) => resolve(e.code))
    s.once('close', () => resolve(undefined))
    s.resume()
  })
}

t.test('accept, connect where JS says, relay both ways: the accept names the client, the end counts the bytes', { skip }, async (t) => {
  const { ev, port } = await relayOnPort(t)
  const echo = await listening((s) => {
    s.on('data', (d: Buffer) => s.write(d))
    s.on('end', () => s.end())
  })
  t.teardown(() => echo.server.close())
  const c = await dialRaw(port)
  const a = await ev.accepted(1)
  t.equal(a.address, HOST)
  t.equal(a.port, c.localPort, "the accept carries the client's port")
  t.equal(a.family, 4)
  c.write('early bytes wait in the kernel; ')
  ev.relay.connect(a.id, HOST, echo.port, 2000, 0)
  const r = await ev.result(a.id)
  t.ok(r.ok, 'connected')
  if (r.ok) t.ok(r.micros >= 0 && r.micros < 2_000_000, `the connect took ${r.micros} µs`)
  const text = textUntilEnd(c)
  c.end('and the rest')
  t.equal(await text, 'early bytes wait in the kernel; and the rest', 'echoed both ways, FIN passed on')
  const end = await ev.end(a.id)
  t.equal(end.reason, 'client_closed')
  t.equal(end.bytesIn, 44)
  t.equal(end.bytesOut, 44)
  t.equal(ev.relay.size, 0, 'nothing left')
})

t.test('a refused connect comes back as connect_failed and the same connection can try another backend', { skip }, async (t) => {
  const { ev, port } = await relayOnPort(t)
  const dead = await deadPort()
  const greeter = await listening((s) => s.end('hello'))
  t.teardown(() => greeter.server.close())
  const c = await dialRaw(port)
  const text = textUntilEnd(c)
  const a = await ev.accepted(1)
  ev.relay.connect(a.id, HOST, dead, 2000, 0)
  const first = await ev.result(a.id)
  t.same(first.ok ? 'ok' : first.code, 'ECONNREFUSED', 'refused, with the errno name')
  ev.relay.connect(a.id, HOST, greeter.port, 2000, 0, Buffer.from('ignored by the greeter'))
  const second = await ev.result(a.id, 2)
  t.ok(second.ok, 'the second backend took it')
  t.equal(await text, 'hello')
  c.end()
  const end = await ev.end(a.id)
  t.equal(end.reason, 'backend_closed')
})

t.test('a connect that never completes times out (ETIMEDOUT), and a client reset while connecting ends it as client_aborted', { skip }, async (t) => {
  const { ev, port } = await relayOnPort(t)
  const hole = await blackHole(t)
  const c1 = await dialRaw(port)
  const a1 = await ev.accepted(1)
  const started = Date.now()
  ev.relay.connect(a1.id, HOST, hole.port, 300, 0)
  const r = await ev.result(a1.id)
  t.same(r.ok ? 'ok' : r.code, 'ETIMEDOUT')
  t.ok(Date.now() - started >= 250, `not before the timeout (${Date.now() - started} ms)`)
  ev.relay.destroy(a1.id, true)
  t.equal(await errorOf(c1), 'ECONNRESET', 'destroy with reset: the client sees a reset')
  t.equal((await ev.end(a1.id)).reason, 'destroyed')

  const c2 = await dialRaw(port)
  const a2 = await ev.accepted(2)
  ev.relay.connect(a2.id, HOST, hole.port, 10_000, 0)
  c2.resetAndDestroy()
  t.equal((await ev.end(a2.id)).reason, 'client_aborted', 'the reset is seen while the connect is in flight')
  t.equal(ev.results.get(a2.id), undefined, 'and no connect result follows')

  const c3 = await dialRaw(port)
  const a3 = await ev.accepted(3)
  c3.resetAndDestroy()
  t.equal((await ev.end(a3.id)).reason, 'client_aborted', 'a reset while waiting for JS ends it too')
  t.equal(ev.relay.size, 0)
})

t.test('release gives an accepted connection back as a descriptor Node can use', { skip }, async (t) => {
  const { ev, port } = await relayOnPort(t)
  const c = await dialRaw(port)
  const a = await ev.accepted(1)
  c.write('to node')
  ev.relay.release(a.id)
  await eventually(() => ev.released.has(a.id), 'the released event')
  const s = new Socket({ fd: ev.released.get(a.id)!, readable: true, writable: true, allowHalfOpen: true })
  t.equal(s.remotePort, c.localPort, 'the same connection')
  const got = await new Promise<string>((resolve) => s.once('data', (d: Buffer) => resolve(d.toString())))
  t.equal(got, 'to node', 'what the client sent waited in the kernel')
  const text = textUntilEnd(c)
  s.end('from node')
  t.equal(await text, 'from node')
  c.end()
  s.destroy()
  t.equal(ev.relay.size, 0, 'no longer the relay’s')
  t.equal(ev.ends.size, 0, 'and no end for it')
})

t.test('unlisten returns the socket still listening, with what waits in its backlog', { skip }, async (t) => {
  const { ev, port, lid } = await relayOnPort(t)
  const fd = ev.relay.unlisten(lid)
  t.ok(fd >= 0, 'a descriptor')
  await eventually(() => ev.unlistened.includes(lid), 'the unlistened event')
  // Nobody accepts now: the kernel completes the handshake and queues the connection.
  const waiting = await dialRaw(port)
  const server = createServer((s) => s.end('node accepted'))
  t.teardown(() => server.close())
  const text = textUntilEnd(waiting)
  server.listen({ fd })
  t.equal(await text, 'node accepted', 'the connection from the backlog reached Node')
  waiting.end()
  t.equal(ev.accepts.length, 0, 'and never the relay')
})

t.test('unlisten with stop: the socket refuses new connections at once', { skip }, async (t) => {
  const { ev, port, lid } = await relayOnPort(t)
  t.equal(ev.relay.unlisten(lid, true), -1, 'no descriptor back')
  const code = await new Promise<string | undefined>((resolve) => {
    const c = connect(port, HOST)
    c.once('connect', () => {
      c.destroy()
      resolve('connected')
    })
    c.once('error', (e: Error & { code?: string }) => resolve(e.code))
  })
  t.equal(code, 'ECONNREFUSED', 'refused from the moment unlisten returned')
  await eventually(() => ev.unlistened.includes(lid), 'the unlistened event')
  t.same(ev.acceptErrors, [], 'and no accept error was reported for it')
})

t.test('out of descriptors, the relay pauses accepting, says so, and recovers by itself', { skip }, async (t) => {
  // A child with a low descriptor limit: the relay accepts until EMFILE, then pauses; when
  // the child closes what it holds, accepting resumes without help.
  const child = spawn('bash', ['-c', `ulimit -n 64 && exec "${process.execPath}" "${fileURLToPath(new URL('./native-accept-child.mjs', import.meta.url))}"`], {
    stdio: ['pipe', 'pipe', 'inherit'],
  })
  t.teardown(() => child.kill('SIGKILL'))
  const lines: string[] = []
  let buf = ''
  child.stdout.setEncoding('utf8')
  child.stdout.on('data', (d: string) => {
    buf += d
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      lines.push(buf.slice(0, nl))
      buf = buf.slice(nl + 1)
    }
  })
  await eventually(() => lines.some((l) => l.startsWith('port ')), 'the child to listen', 20_000)
  const port = Number(lines.find((l) => l.startsWith('port '))!.slice(5))
  const clients: Socket[] = []
  t.teardown(() => clients.forEach((c) => c.destroy()))
  // More clients than the child has descriptors; the kernel's backlog holds the rest.
  for (let i = 0; i < 100; i++) clients.push(await dialRaw(port))
  await eventually(() => lines.some((l) => l.startsWith('accept-error EMFILE')), 'EMFILE reported', 20_000)
  const held = Number(/^held (\d+)/.exec(lines.findLast((l) => l.startsWith('held ')) ?? 'held 0')?.[1] ?? 0)
  t.ok(held > 10 && held < 64, `accepted ${held} before the descriptors ran out`)
  child.stdin.write('free\n')
  await eventually(() => lines.some((l) => l === 'held 100'), 'every client accepted once descriptors were freed', 30_000)
  t.pass('all 100 accepted after the pause, with no help')
})
