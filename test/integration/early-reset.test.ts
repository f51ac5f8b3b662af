import t, { type Test } from 'tap'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { connect, createServer as createNetServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { connect as tlsConnect, createServer as createTlsServer } from 'node:tls'
import { startDaemon, type Running } from '../helpers/daemon.js'
import { blackHole } from '../helpers/black-hole.js'
import { eventually, readUntil } from '../helpers/net.js'
import { encodeV1 } from '../../src/proxy/proxy-header-out.js'

/*
 * A client that resets at any point of its session must end that session and its backend
 * connection: during the opening, while sluice connects, just after it connected, and
 * mid-stream; on plain, PROXY, SNI-passthrough and TLS listeners. Afterwards the listener
 * holds no session, the backend slot is free and the backend holds no connection.
 */

const FIX = join(import.meta.dirname ?? new URL('.', import.meta.url).pathname, '../fixtures/tls')
const CA = readFileSync(join(FIX, 'ca.pem'))
const CERT = readFileSync(join(FIX, 'default.pem'))
const KEY = readFileSync(join(FIX, 'default.key'))

type Kind = 'plain' | 'proxy' | 'sni' | 'tls'
const KINDS: Kind[] = ['plain', 'proxy', 'sni', 'tls']
/** How many clients each case sends, and how many at a time. */
const ROUNDS = 40
const PARALLEL = 10

/** An echo backend (TLS for SNI passthrough, where TLS ends at the backend) that counts its open TCP connections. */
async function echoBackend(t: Test, tls: boolean): Promise<{ address: string; open: Set<Socket> }> {
  const open = new Set<Socket>()
  const server: Server = tls
    ? createTlsServer({ cert: CERT, key: KEY }, (s) => {
        s.on('error', () => {})
        s.pipe(s)
      })
    : createNetServer((s) => {
        s.on('error', () => {})
        s.pipe(s)
      })
  server.on('connection', (raw: Socket) => {
    open.add(raw)
    raw.on('error', () => {})
    raw.on('close', () => open.delete(raw))
  })
  if (tls) server.on('tlsClientError', () => {})
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    server.close()
    for (const s of open) s.destroy()
  })
  return { address: `127.0.0.1:${(server.address() as AddressInfo).port}`, open }
}

function listenerYaml(kind: Kind, backendAddress: string, connectTimeout = '3s'): string {
  const extra =
    kind === 'proxy' ? 'proxy_protocol_accept: true' : kind === 'sni' ? 'sni_passthrough: true' : kind === 'tls' ? `tls: { cert: ${join(FIX, 'default.pem')}, key: ${join(FIX, 'default.key')} }` : ''
  return `
log: { level: info, access_log: true }
listeners:
  - { name: l, listen: 127.0.0.1:0, pool: p, ${extra} }
pools:
  p: { connect_timeout: ${connectTimeout}, backends: ["${backendAddress}"] }
`
}

const HEADER = encodeV1({ sourceAddress: '203.0.113.7', sourcePort: 40000, destAddress: '198.51.100.1', destPort: 6379 })

/**
 * The source addresses of this file's clients. Access lines are checked only for them: a
 * listener on an ephemeral port can also be reached by a stray connection of a test running
 * beside this one (a health check still probing a port its backend gave up).
 */
const mine = new Set<string>()

/** This file's access lines (by the `peer` they came from; "unknown" for a client reset before it was accepted). */
function access(run: Running): Record<string, unknown>[] {
  return run.logs.access.filter((l) => l.peer === 'unknown' || mine.has(String(l.peer)))
}

/** A raw TCP connection to sluice. */
function dialRaw(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host: '127.0.0.1' }, () => {
      s.off('error', reject)
      mine.add(`127.0.0.1:${s.localPort}`)
      resolve(s)
    })
    s.once('error', reject)
    s.on('close', () => {})
  })
}

/**
 * Opens a client of `kind` as far as it goes without a backend answering: the PROXY header
 * sent, or the TLS handshake done with sluice (TLS) or started through it (SNI). Resolves
 * with the raw socket, to reset, and the socket that carries the application's bytes.
 */
async function openClient(kind: Kind, port: number, waitHandshake: boolean): Promise<{ raw: Socket; app: Socket }> {
  const raw = await dialRaw(port)
  raw.on('error', () => {})
  if (kind === 'plain') return { raw, app: raw }
  if (kind === 'proxy') {
    raw.write(HEADER)
    return { raw, app: raw }
  }
  const ts = tlsConnect({ socket: raw, ca: CA, servername: 'default.sluice.test' })
  ts.on('error', () => {})
  if (waitHandshake) await new Promise<void>((resolve, reject) => {
    ts.once('secureConnect', () => resolve())
    ts.once('close', () => reject(new Error('TLS connection closed before its handshake')))
  })
  return { raw, app: ts }
}

/** Runs `client` ROUNDS times, PARALLEL at a time. */
async function rounds(client: () => Promise<void>): Promise<void> {
  for (let i = 0; i < ROUNDS; i += PARALLEL) await Promise.all(Array.from({ length: PARALLEL }, () => client()))
}

async function settled(t: Test, run: Running, open: Set<Socket> | undefined, what: string, sessions = ROUNDS): Promise<void> {
  const listener = run.daemon.listeners.get('l')
  const b = run.daemon.pools.get('p')!.backends[0]!
  // Every session logged too: the relay may report its accepts after the clients are gone.
  const clean = (): boolean => listener!.sessions.size === 0 && b.active === 0 && (open === undefined || open.size === 0) && access(run).length >= sessions
  await eventually(clean, `${what}: sessions, backend slots and backend connections back to zero`, 5000).catch(() => {})
  t.equal(listener!.sessions.size, 0, `${what}: no session left open in sluice`)
  t.equal(b.active, 0, `${what}: the backend's active count is back to zero`)
  if (open !== undefined) t.equal(open.size, 0, `${what}: the backend holds no connection`)
  const lines = access(run).length
  t.ok(lines >= sessions, `${what}: every session wrote its access line (${lines})`)
}

for (const kind of KINDS) {
  t.test(`${kind} listener: a client reset during the opening`, async (t) => {
    const be = await echoBackend(t, kind === 'sni')
    const run = await startDaemon(t, listenerYaml(kind, be.address))
    const port = run.port('l')
    await rounds(async () => {
      const raw = await dialRaw(port)
      raw.on('error', () => {})
      // Part of the opening: half a PROXY header, the first bytes of a ClientHello, or nothing.
      if (kind === 'proxy') raw.write(HEADER.subarray(0, 10))
      if (kind === 'sni' || kind === 'tls') raw.write(Buffer.from([0x16, 0x03, 0x01, 0x00, 0xc8, 0x01]))
      raw.resetAndDestroy()
    })
    await settled(t, run, be.open, kind)
    if (kind === 'plain') {
      // No opening to interrupt: a reset that comes once the backend connection is made (the
      // relay accepts and connects at once) is the client's error on an open connection.
      for (const l of access(run)) {
        if (l.close_reason === 'client_error') t.not(l.backend, null, 'client_error only after the backend connection was made')
        else t.equal(l.close_reason, 'client_aborted', 'else client_aborted')
      }
    } else {
      t.same([...new Set(access(run).map((l) => l.close_reason))], ['client_aborted'], 'each is logged as client_aborted')
    }
    t.notMatch(await run.metrics(), /sluice_rejected_connections_total\{[^}]*reason="(tls_handshake|bad_proxy_header|bad_client_hello)"/, 'a client that hangs up is not counted as a refusal')
  })

  t.test(`${kind} listener: a client reset while sluice connects to the backend`, async (t) => {
    const hole = await blackHole(t)
    const run = await startDaemon(t, listenerYaml(kind, `127.0.0.1:${hole.port}`, '20s'))
    const port = run.port('l')
    const b = run.daemon.pools.get('p')!.backends[0]!
    for (let i = 0; i < 10; i++) {
      const { raw } = await openClient(kind, port, kind === 'tls')
      await eventually(() => b.active === 1, 'the connect attempt to start')
      raw.resetAndDestroy()
      await eventually(() => b.active === 0, 'the attempt to be dropped', 5000).catch(() => {})
      t.equal(b.active, 0, `client ${i}: the backend slot is released at the reset`)
    }
    await settled(t, run, undefined, kind, 10)
    t.ok(access(run).every((l) => l.close_reason === 'client_aborted'), 'each is logged as client_aborted')
    hole.stop()
  })

  t.test(`${kind} listener: a client reset just after sluice connected`, async (t) => {
    const be = await echoBackend(t, kind === 'sni')
    const run = await startDaemon(t, listenerYaml(kind, be.address))
    const port = run.port('l')
    await rounds(async () => {
      const { raw, app } = await openClient(kind, port, kind !== 'plain' && kind !== 'proxy')
      app.write('hello')
      raw.resetAndDestroy()
    })
    await settled(t, run, be.open, kind)
  })

  t.test(`${kind} listener: a client reset mid-stream`, async (t) => {
    const be = await echoBackend(t, kind === 'sni')
    const run = await startDaemon(t, listenerYaml(kind, be.address))
    const port = run.port('l')
    await rounds(async () => {
      const { raw, app } = await openClient(kind, port, kind !== 'plain' && kind !== 'proxy')
      app.write('ping\n')
      await readUntil(app, 'line')
      raw.resetAndDestroy()
    })
    await settled(t, run, be.open, kind)
    const odd = access(run).filter((l) => l.backend !== be.address || (l.bytes_in as number) < 5)
    t.same(odd, [], 'each reached the backend and relayed its bytes')
  })
}

t.test('a TLS client that resets 2 ms after its first bytes, 50 at a time, does not use up max_connections', async (t) => {
  const be = await echoBackend(t, false)
  const run = await startDaemon(t, listenerYaml('tls', be.address).replace('pool: p,', 'pool: p, max_connections: 100,'))
  const port = run.port('l')
  for (let batch = 0; batch < 5; batch++) {
    await Promise.all(
      Array.from({ length: 50 }, async () => {
        const { raw, app } = await openClient('tls', port, true)
        app.write('12345')
        await new Promise((r) => setTimeout(r, 2))
        raw.resetAndDestroy()
      }),
    )
  }
  await settled(t, run, be.open, 'tls x250', 250)
  const { app } = await openClient('tls', port, true)
  app.write('still served\n')
  t.equal((await readUntil(app, 'line')).toString(), 'still served\n', 'a legitimate client is served afterwards')
  app.destroy()
})
