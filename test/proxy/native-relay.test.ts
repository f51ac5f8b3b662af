import { createHash, randomBytes } from 'node:crypto'
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads'
import { loadNativeRelay, type NativeRelay, type NativeRelayAddon, type RelayAddOptions, type RelayEnd, type RelayMode } from '../../src/proxy/native-relay.js'

// The native relay held to the data path's contract over real loopback sockets, in both of
// its modes, in the main thread and in workers. This file also runs as the workers' code.

const MiB = 1024 * 1024
const HOST = '127.0.0.1'
const MODES: readonly RelayMode[] = ['splice', 'copy']

/** Rejects when `p` has not settled within `ms` (a deadline, never a synchronisation). */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms}ms`)), ms)
  })
  return Promise.race([p, deadline]).finally(() => clearTimeout(timer))
}

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex')

/** Everything a socket receives until its FIN: SHA-256 and length. */
function digestOf(s: Socket): Promise<{ hash: string; length: number }> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256')
    let length = 0
    s.on('data', (d: Buffer) => {
      h.update(d)
      length += d.length
    })
    s.once('end', () => resolve({ hash: h.digest('hex'), length }))
    s.once('error', reject)
  })
}

/** Everything a socket receives until its FIN, as text. */
function textOf(s: Socket): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = ''
    s.setEncoding('utf8')
    s.on('data', (d: string) => (text += d))
    s.once('end', () => resolve(text))
    s.once('error', reject)
  })
}

const closed = (s: Socket): Promise<void> => (s.closed ? Promise.resolve() : new Promise((resolve) => s.once('close', () => resolve())))

/**
 * The relay closed its end of `s`: a FIN or a reset reaches it (reading it, so the FIN is
 * seen). With allowHalfOpen a FIN alone does not close a socket, hence not just 'close'.
 */
function hungUp(s: Socket): Promise<void> {
  if (s.closed || s.readableEnded) return Promise.resolve()
  return new Promise((resolve) => {
    const done = (): void => resolve()
    s.once('end', done)
    s.once('close', done)
    s.once('error', done)
    s.resume()
  })
}

/** The ends a relay reported, and a way to wait for one. */
class EndLog {
  readonly ends = new Map<number, RelayEnd>()
  batches = 0
  private readonly waiters = new Map<number, (e: RelayEnd) => void>()

  readonly onEnd = (ends: readonly RelayEnd[]): void => {
    this.batches++
    for (const e of ends) {
      this.ends.set(e.id, e)
      this.waiters.get(e.id)?.(e)
      this.waiters.delete(e.id)
    }
  }

  wait(id: number, ms = 10_000): Promise<RelayEnd> {
    const known = this.ends.get(id)
    if (known !== undefined) return Promise.resolve(known)
    return within(new Promise<RelayEnd>((resolve) => this.waiters.set(id, resolve)), ms, `the end of connection ${id}`)
  }
}

interface Pair {
  /** The client's socket, connected to the front. */
  client: Socket
  /** The backend's socket, accepted from the relay. */
  backend: Socket
  id: number
}

interface Adoption {
  options: RelayAddOptions
  beforeAdopt: ((front: Socket) => Promise<void>) | undefined
  done(id: number): void
  fail(err: unknown): void
}

/**
 * A front listener that connects each client to a backend listener and hands both sockets
 * to the relay, as the TCP session will. connect() calls are meant to be awaited one by one.
 */
class Rig {
  private readonly adoptions: Adoption[] = []
  private readonly backendWaiters: ((s: Socket) => void)[] = []
  private readonly sockets = new Set<Socket>()
  private readonly front: Server
  private readonly back: Server

  constructor(readonly relay: NativeRelay) {
    this.back = createServer({ allowHalfOpen: true }, (s) => {
      this.track(s)
      this.backendWaiters.shift()?.(s)
    })
    this.front = createServer({ allowHalfOpen: true }, (c) => {
      c.on('error', () => {})
      const a = this.adoptions.shift()
      if (a === undefined) {
        c.destroy()
        return
      }
      const up = connect({ host: HOST, port: (this.back.address() as AddressInfo).port, allowHalfOpen: true })
      up.on('error', (err) => a.fail(err))
      up.once('connect', () => {
        const adopt = async (): Promise<void> => {
          if (a.beforeAdopt !== undefined) await a.beforeAdopt(c)
          a.done(this.relay.adopt(c, up, a.options))
        }
        adopt().catch((err: unknown) => a.fail(err))
      })
    })
  }

  private track(s: Socket): void {
    s.on('error', () => {})
    this.sockets.add(s)
    s.once('close', () => this.sockets.delete(s))
  }

  async listen(): Promise<void> {
    await new Promise<void>((resolve) => this.back.listen(0, HOST, resolve))
    await new Promise<void>((resolve) => this.front.listen(0, HOST, resolve))
  }

  get port(): number {
    return (this.front.address() as AddressInfo).port
  }

  close(): void {
    this.front.close()
    this.back.close()
    for (const s of this.sockets) s.destroy()
  }

  /** A client connection relayed to a backend connection; resolves once the relay holds it. */
  async connect(options: RelayAddOptions = {}, beforeAdopt?: (front: Socket) => Promise<void>, clientFirst?: Buffer): Promise<Pair> {
    const backend = new Promise<Socket>((resolve) => this.backendWaiters.push(resolve))
    const id = new Promise<number>((done, fail) => this.adoptions.push({ options, beforeAdopt, done, fail }))
    const client = connect({ host: HOST, port: this.port, allowHalfOpen: true })
    this.track(client)
    if (clientFirst !== undefined) client.write(clientFirst)
    const [b, i] = await within(Promise.all([backend, id]), 10_000, 'a relayed connection')
    return { client, backend: b, id: i }
  }
}

interface Setup {
  relay: NativeRelay
  log: EndLog
  rig: Rig
}

/** The skeleton every test uses: a relay, its end log and a rig, all torn down after. */
interface Teardown {
  teardown(fn: () => void | Promise<void>): void
}

async function setUp(t: Teardown, addon: NativeRelayAddon, mode: RelayMode, groups = 1): Promise<Setup> {
  const log = new EndLog()
  const relay = addon.create({ onEnd: log.onEnd, mode, groups })
  const rig = new Rig(relay)
  await rig.listen()
  t.teardown(() => {
    relay.close()
    rig.close()
  })
  return { relay, log, rig }
}

// ---- The workers' side of this file ------------------------------------------------------

interface WorkerTask {
  task: 'transfer' | 'hold' | 'throw'
  mode: RelayMode
}

function isWorkerTask(v: unknown): v is WorkerTask {
  if (typeof v !== 'object' || v === null) return false
  const w = v as { task?: unknown; mode?: unknown }
  return (w.task === 'transfer' || w.task === 'hold' || w.task === 'throw') && (w.mode === 'splice' || w.mode === 'copy')
}

/**
 * transfer: relays 8 MiB each way through its own relay and reports the hashes, then leaves
 * its relay open: the worker must still exit by itself (the relay holds no connection).
 * hold: serves one relayed connection for a client in the main thread and keeps it open
 * until the worker is terminated.
 * throw: an onEnd that throws, which must end the worker as an uncaught exception.
 */
async function workerMain(task: WorkerTask): Promise<void> {
  const port = parentPort
  const { addon, reason } = loadNativeRelay()
  if (port === null || addon === undefined) throw new Error(`no native relay in the worker: ${reason ?? 'no parent port'}`)
  const log = new EndLog()
  const onEnd =
    task.task === 'throw'
      ? (): void => {
          throw new Error('thrown by onEnd')
        }
      : log.onEnd
  const relay = addon.create({ onEnd, mode: task.mode })
  const rig = new Rig(relay)
  await rig.listen()
  if (task.task === 'throw') {
    const { id } = await rig.connect()
    relay.destroy(id)
    return
  }
  if (task.task === 'hold') {
    const pair = rig.connect()
    port.postMessage({ port: rig.port })
    const { id } = await pair
    port.postMessage({ adopted: id, size: relay.size })
    return
  }
  const { client, backend, id } = await rig.connect()
  const up = randomBytes(8 * MiB)
  const down = randomBytes(8 * MiB)
  const atBackend = digestOf(backend)
  const atClient = digestOf(client)
  client.end(up)
  backend.end(down)
  const [b, c] = await Promise.all([atBackend, atClient])
  const end = await log.wait(id)
  rig.close()
  port.postMessage({ ok: b.hash === sha(up) && c.hash === sha(down), reason: end.reason, bytesIn: end.bytesIn, bytesOut: end.bytesOut })
}

if (!isMainThread) {
  if (!isWorkerTask(workerData)) throw new TypeError('unexpected workerData')
  await workerMain(workerData)
} else {
  await mainTests()
}

// ---- The tests ---------------------------------------------------------------------------

async function mainTests(): Promise<void> {
  const t = (await import('tap')).default
  const load = loadNativeRelay()
  const addon = load.addon
  const skip = addon === undefined ? `native relay unavailable: ${load.reason} (npm run build:native)` : false

  t.test('loadNativeRelay says why when there is nothing to load', async (t) => {
    const missing = loadNativeRelay('/nonexistent/sluice_relay.node')
    t.equal(missing.addon, undefined)
    t.match(missing.reason, /failed to load/)
  })

  if (addon === undefined) {
    t.test('native relay', { skip }, async () => {})
    return
  }

  t.test('add and adopt refuse what they cannot take', async (t) => {
    const { relay } = await setUp(t, addon, 'copy')
    t.throws(() => relay.add(1_000_000, 1_000_001), { code: 'EBADF' })
    t.throws(() => relay.add(-1, 3), { code: 'ERR_INVALID_ARG_TYPE' })
    t.throws(() => relay.add(5, 5), { code: 'ERR_OUT_OF_RANGE' })
    t.throws(() => relay.add(5, 6, { group: 1 }), { code: 'ERR_OUT_OF_RANGE' })
    const s = connect({ host: HOST, port: 1 })
    s.on('error', () => {})
    s.destroy()
    t.throws(() => relay.adopt(s, s), TypeError)
    t.equal(relay.size, 0)
    relay.close()
    t.throws(() => relay.add(5, 6), { code: 'ERR_RELAY_CLOSED' })
    t.doesNotThrow(() => relay.destroy(1), 'destroy after close does nothing')
  })

  for (const mode of MODES) {
    t.test(`${mode} mode`, async (t) => {
      t.test('20 MiB each way arrive intact (SHA-256), then both sides close', async (t) => {
        const { relay, log, rig } = await setUp(t, addon, mode)
        const { client, backend, id } = await rig.connect()
        t.equal(relay.size, 1)
        const up = randomBytes(20 * MiB)
        const down = randomBytes(20 * MiB)
        const atBackend = digestOf(backend)
        const atClient = digestOf(client)
        client.end(up)
        backend.end(down)
        const [b, c] = await within(Promise.all([atBackend, atClient]), 60_000, '20 MiB each way')
        t.same(b, { hash: sha(up), length: up.length }, 'client -> backend')
        t.same(c, { hash: sha(down), length: down.length }, 'backend -> client')
        const end = await log.wait(id)
        t.match(end.reason, /^(client|backend)_closed$/)
        t.equal(end.bytesIn, up.length)
        t.equal(end.bytesOut, down.length)
        await within(Promise.all([closed(client), closed(backend)]), 5000, 'both sockets closed')
        t.equal(relay.size, 0)
      })

      t.test('half-close: the client sends its FIN, the backend answers after it', async (t) => {
        const { log, rig } = await setUp(t, addon, mode)
        const { client, backend, id } = await rig.connect()
        const request = textOf(backend)
        const response = textOf(client)
        client.end('request')
        t.equal(await within(request, 5000, 'the request and its FIN'), 'request')
        backend.end('response, after the FIN')
        t.equal(await within(response, 5000, 'the response'), 'response, after the FIN')
        t.match(await log.wait(id), { reason: 'client_closed', bytesIn: 7, bytesOut: 23 })
      })

      t.test('half-close: the backend sends its FIN first, the client keeps sending', async (t) => {
        const { log, rig } = await setUp(t, addon, mode)
        const { client, backend, id } = await rig.connect()
        const greeting = textOf(client)
        const rest = textOf(backend)
        backend.end('hello')
        t.equal(await within(greeting, 5000, 'the greeting and its FIN'), 'hello')
        client.write('still ')
        client.end('talking')
        t.equal(await within(rest, 5000, 'what the client sent after the FIN'), 'still talking')
        t.match(await log.wait(id), { reason: 'backend_closed', bytesIn: 13, bytesOut: 5 })
      })

      t.test('initial bytes, and bytes Node read before the handover, go first', async (t) => {
        const { log, rig } = await setUp(t, addon, mode)
        const { client, backend, id } = await rig.connect(
          { toBackend: Buffer.from('HEADER '), toClient: Buffer.from('banner ') },
          (front) => new Promise((resolve) => front.once('readable', resolve)),
          Buffer.from('early '),
        )
        const atBackend = textOf(backend)
        const atClient = textOf(client)
        client.end('late')
        backend.end('reply')
        t.equal(await within(atBackend, 5000, 'the backend side'), 'HEADER early late')
        t.equal(await within(atClient, 5000, 'the client side'), 'banner reply')
        // Only what the relay read and wrote on counts; the caller knows the initial bytes.
        t.match(await log.wait(id), { bytesIn: 4, bytesOut: 5 })
      })

      t.test('a client that never reads: 1 GiB pushed, the backend is blocked and memory stays bounded', async (t) => {
        const { relay, log, rig } = await setUp(t, addon, mode)
        const { client, backend, id } = await rig.connect()
        client.pause()
        const chunk = randomBytes(MiB)
        const rssBefore = process.memoryUsage.rss()
        let rssMax = rssBefore
        let pushed = 0
        let blocked = false
        while (pushed < 1024 * MiB) {
          if (backend.write(chunk)) {
            pushed += chunk.length
            continue
          }
          pushed += chunk.length
          rssMax = Math.max(rssMax, process.memoryUsage.rss())
          // Blocked: no room within a second (the deadline that asserts the stall).
          const drained = await within(
            new Promise<boolean>((resolve) => backend.once('drain', () => resolve(true))),
            1000,
            'drain',
          ).catch(() => false)
          if (!drained) {
            blocked = true
            break
          }
        }
        rssMax = Math.max(rssMax, process.memoryUsage.rss())
        t.ok(blocked, `the backend is blocked (pushed ${pushed / MiB} MiB)`)
        t.ok(pushed < 256 * MiB, `only kernel buffers' worth got through (${pushed / MiB} MiB)`)
        t.ok(rssMax - rssBefore < 64 * MiB, `RSS grew ${((rssMax - rssBefore) / MiB).toFixed(1)} MiB`)
        t.equal(relay.size, 1, 'the connection is still held')
        t.equal(log.ends.size, 0)
        // A client that leaves with bytes unread resets: the backend is closed too.
        client.destroy()
        t.match(await log.wait(id), { reason: 'client_error' })
        await within(hungUp(backend), 5000, 'the backend hung up on')
      })

      t.test('a backend reset mid-stream closes the client', async (t) => {
        const { log, rig } = await setUp(t, addon, mode)
        const { client, backend, id } = await rig.connect()
        const firstBytes = new Promise<void>((resolve) => client.once('data', () => resolve()))
        backend.write(randomBytes(MiB))
        await within(firstBytes, 5000, 'the first bytes at the client')
        backend.resetAndDestroy()
        t.match(await log.wait(id), { reason: 'backend_error' })
        await within(hungUp(client), 5000, 'the client hung up on')
      })

      t.test('a client reset closes the backend', async (t) => {
        const { log, rig } = await setUp(t, addon, mode)
        const { client, backend, id } = await rig.connect()
        const firstBytes = new Promise<void>((resolve) => backend.once('data', () => resolve()))
        client.write('some bytes')
        await within(firstBytes, 5000, 'the first bytes at the backend')
        client.resetAndDestroy()
        t.match(await log.wait(id), { reason: 'client_error', bytesIn: 10 })
        await within(hungUp(backend), 5000, 'the backend hung up on')
      })

      t.test('an idle connection times out, never early; destroy() closes one now', async (t) => {
        const { relay, log, rig } = await setUp(t, addon, mode)
        const started = Date.now()
        const idle = await rig.connect({ idleMs: 300 })
        const other = await rig.connect()
        const end = await log.wait(idle.id, 5000)
        t.equal(end.reason, 'idle_timeout')
        t.ok(Date.now() - started >= 299, `not before the timeout (${Date.now() - started}ms)`)
        await within(Promise.all([hungUp(idle.client), hungUp(idle.backend)]), 5000, 'both sides hung up on')
        t.equal(relay.size, 1, 'the connection without a timeout stays')
        relay.destroy(other.id)
        t.match(await log.wait(other.id), { reason: 'destroyed' })
        await within(Promise.all([hungUp(other.client), hungUp(other.backend)]), 5000, 'both sides hung up on')
        relay.destroy(other.id) // already ended: ignored
        t.equal(relay.size, 0)
      })

      t.test('traffic postpones the idle timeout', async (t) => {
        const { log, rig } = await setUp(t, addon, mode)
        const { client, backend, id } = await rig.connect({ idleMs: 1000 })
        backend.on('data', (d: Buffer) => backend.write(d)) // an echo
        for (let i = 0; i < 30; i++) {
          const echoed = new Promise<void>((resolve) => client.once('data', () => resolve()))
          client.write('ping')
          await within(echoed, 5000, 'an echo')
          await new Promise((resolve) => setTimeout(resolve, 50)) // traffic every 50 ms, 1.5 s in all
        }
        t.equal(log.ends.size, 0, 'still open after 1.5 s of traffic')
        t.match(await log.wait(id, 5000), { reason: 'idle_timeout', bytesIn: 120, bytesOut: 120 })
      })

      t.test('byte counters per group, read as deltas', async (t) => {
        const { relay, log, rig } = await setUp(t, addon, mode, 2)
        const { client, backend, id } = await rig.connect({ group: 1 })
        const atBackend = digestOf(backend)
        const atClient = digestOf(client)
        client.end(randomBytes(3 * MiB))
        backend.end(randomBytes(MiB))
        await within(Promise.all([atBackend, atClient]), 10_000, 'the transfer')
        await log.wait(id)
        t.same(Array.from(relay.takeBytes()), [0, 0, 3 * MiB, MiB])
        t.same(Array.from(relay.takeBytes()), [0, 0, 0, 0], 'taken')
      })
    })
  }

  t.test('many idle connections; close() ends them all at once and reports each', async (t) => {
    const { relay, log, rig } = await setUp(t, addon, 'splice')
    const pairs: Pair[] = []
    for (let i = 0; i < 500; i++) pairs.push(await rig.connect())
    t.equal(relay.size, 500)
    const batches = log.batches
    relay.close()
    t.equal(log.ends.size, 500, 'every end reported before close() returns')
    t.equal(log.batches, batches + 1, 'in one batch')
    t.ok([...log.ends.values()].every((e) => e.reason === 'destroyed'))
    t.equal(relay.size, 0)
    await within(Promise.all(pairs.map((p) => Promise.all([hungUp(p.client), hungUp(p.backend)]))), 10_000, 'every socket hung up on')
  })

  // A worker that goes away with its relay still open: the relay's handles are closed and their
  // close callbacks run before Node unloads the addon from that worker (inline, they are uv
  // handles on the worker's own loop; a close callback run after the unload crashed the process).
  // And one closed just before the worker exits, its handles still closing.
  for (const thread of ['own', 'inline'] as const) {
    for (const how of ['left open, the process exits', 'left open, the worker is terminated', 'left open, the worker exits', 'left open, the worker ends', 'closed, and the worker exits at once']) {
      t.test(`relay on ${thread === 'own' ? 'a thread of its own' : 'the event loop'}: ${how}, and the process exits cleanly`, async (t) => {
        const file = join(mkdtempSync(join(tmpdir(), 'sluice-relay-')), 'left-open.mjs')
        t.teardown(() => rmSync(dirname(file), { recursive: true, force: true }))
        writeFileSync(
          file,
          `import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads'
import { createRequire } from 'node:module'
const how = ${JSON.stringify(how)}
if (isMainThread) {
  const w = new Worker(new URL(import.meta.url))
  w.on('message', () => { if (how === 'left open, the process exits') process.exit(0); if (how === 'left open, the worker is terminated') w.terminate() })
} else {
  globalThis.relay = new (createRequire(import.meta.url)(${JSON.stringify(addon.path)}).Relay)(() => {}, true, 1, ${thread === 'inline'})
  if (how === 'left open, the worker exits') process.exit(0)
  if (how === 'closed, and the worker exits at once') { globalThis.relay.close(); process.exit(0) }
  parentPort.postMessage('up')
  if (how === 'left open, the worker ends') parentPort.close()
}
`,
        )
        const child = spawn(process.execPath, [file], { stdio: ['ignore', 'ignore', 'pipe'] })
        let stderr = ''
        child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
        const [exit, signal] = await within(new Promise<[number | null, string | null]>((resolve) => child.once('exit', (c, s) => resolve([c, s]))), 20_000, 'the process exits')
        t.same({ exit, signal }, { exit: 0, signal: null }, stderr)
      })
    }
  }

  t.test('a relay without connections does not keep the process alive', async (t) => {
    const code = `const m = require(${JSON.stringify(addon.path)}); globalThis.r = new m.Relay(() => {}, true, 1)`
    const child = spawn(process.execPath, ['-e', code], { stdio: 'ignore' })
    const exit = await within(new Promise<number | null>((resolve) => child.once('exit', resolve)), 10_000, 'the process exits')
    t.equal(exit, 0)
  })

  t.test('two workers and the main thread relay at once, each with its own relay', async (t) => {
    const runs = MODES.map(
      (mode) =>
        new Promise<unknown>((resolve, reject) => {
          const w = new Worker(new URL(import.meta.url), { workerData: { task: 'transfer', mode } satisfies WorkerTask })
          let result: unknown
          w.on('message', (m: unknown) => (result = m))
          w.once('error', reject)
          // The worker leaves its relay open: it must exit by itself all the same.
          w.once('exit', (code) => (code === 0 ? resolve(result) : reject(new Error(`worker exited with ${code}`))))
        }),
    )
    const { log, rig } = await setUp(t, addon, 'copy')
    const { client, backend, id } = await rig.connect()
    const up = randomBytes(8 * MiB)
    const atBackend = digestOf(backend)
    const atClient = digestOf(client)
    client.end(up)
    backend.end(up)
    const [b, c] = await within(Promise.all([atBackend, atClient]), 30_000, 'the main thread transfer')
    t.equal(b.hash, sha(up))
    t.equal(c.hash, sha(up))
    await log.wait(id)
    const results = await within(Promise.all(runs), 60_000, 'the workers')
    for (const r of results) t.match(r, { ok: true, reason: /^(client|backend)_closed$/, bytesIn: 8 * MiB, bytesOut: 8 * MiB })
  })

  t.test('an exception thrown by onEnd is an uncaught exception, not swallowed', async (t) => {
    const w = new Worker(new URL(import.meta.url), { workerData: { task: 'throw', mode: 'copy' } satisfies WorkerTask })
    const err = await within(new Promise<unknown>((resolve) => w.once('error', resolve)), 30_000, 'the worker error')
    t.match(err, { message: 'thrown by onEnd' })
  })

  t.test('a worker that is terminated closes the connections its relay held', async (t) => {
    const w = new Worker(new URL(import.meta.url), { workerData: { task: 'hold', mode: 'splice' } satisfies WorkerTask })
    t.teardown(() => w.terminate())
    const messages: unknown[] = []
    const waiters: (() => void)[] = []
    w.on('message', (m: unknown) => {
      messages.push(m)
      waiters.shift()?.()
    })
    const next = async (): Promise<unknown> => {
      if (messages.length === 0) await within(new Promise<void>((resolve) => waiters.push(resolve)), 30_000, 'a message from the worker')
      return messages.shift()
    }
    const { port } = (await next()) as { port: number }
    const client = connect({ host: HOST, port, allowHalfOpen: true })
    client.on('error', () => {})
    t.match(await next(), { adopted: 1, size: 1 })
    const gone = hungUp(client)
    await w.terminate()
    await within(gone, 5000, 'the client hung up on by the worker teardown')
    t.pass('closed')
  })
}
