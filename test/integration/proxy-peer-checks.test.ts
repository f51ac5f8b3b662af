import t, { type Test } from 'tap'
import { execFileSync } from 'node:child_process'
import type { Socket } from 'node:net'
import { backend, closed, dial, eventually, readUntil } from '../helpers/net.js'
import { startDaemon, type Running } from '../helpers/daemon.js'
import { parseProxyHeader } from '../../src/proxy/proxy-protocol.js'
import { encodeV1, encodeV2 } from '../../src/proxy/proxy-header-out.js'

/*
 * The load balancer in front of a proxy_protocol_accept listener checks it with connections
 * of its own: a connect and close with no byte (an L4 check), or a PROXY header saying LOCAL
 * (v2) or UNKNOWN (v1). They are not attacks: no warning, no refusal counted, close_reason
 * peer_check. A LOCAL connection is proxied with the connection's own addresses.
 */

const LOCAL_V2 = encodeV2(undefined)
const UNKNOWN_V1 = Buffer.from('PROXY UNKNOWN\r\n', 'latin1')
const CLIENT_V1 = encodeV1({ sourceAddress: '203.0.113.5', sourcePort: 4242, destAddress: '198.51.100.9', destPort: 143 })

/** A backend that answers `source:port>dest:port` from the PROXY header it gets, then echoes; counts its open connections. */
async function headerBackend(t: Test): Promise<{ address: string; open: Set<Socket> }> {
  const b = await backend(t, (s) => {
    let buf = Buffer.alloc(0)
    const onData = (c: Buffer): void => {
      buf = Buffer.concat([buf, c])
      const r = parseProxyHeader(buf)
      if (r.kind === 'need-more') return
      s.off('data', onData)
      const a = r.kind === 'ok' ? r.header.addresses : undefined
      s.write(r.kind === 'error' ? `bad ${r.message}\n` : `${a === undefined ? 'none' : `${a.sourceAddress}:${a.sourcePort}>${a.destAddress}:${a.destPort}`}\n`)
      const rest = buf.subarray(r.kind === 'ok' ? r.length : buf.length)
      if (rest.length > 0) s.write(rest)
      s.pipe(s)
    }
    s.on('data', onData)
  })
  return { address: b.address, open: b.sockets }
}

async function daemonWithChecks(t: Test): Promise<{ d: Running; be: { address: string; open: Set<Socket> } }> {
  const be = await headerBackend(t)
  const d = await startDaemon(t, `
log: { level: debug, access_log: true }
listeners:
  - { name: in, listen: 127.0.0.1:0, pool: p, proxy_protocol_accept: true, proxy_protocol_trusted: [127.0.0.1/32] }
  - { name: any, listen: 127.0.0.1:0, pool: p, proxy_protocol_accept: true }
  - { name: strict, listen: 127.0.0.1:0, pool: p, proxy_protocol_accept: true, proxy_protocol_trusted: [10.0.0.0/8] }
  - { name: plain, listen: 127.0.0.1:0, pool: p }
pools:
  p: { backends: ["${be.address}"], proxy_protocol: v2 }
`)
  return { d, be }
}

/** Waits until listener `name` holds a session (the connection was accepted while its peer was there). */
async function accepted(d: Running, name: string, n = 1): Promise<void> {
  await eventually(() => (d.daemon.listeners.get(name)?.sessions.size ?? 0) >= n, `${name} to accept`)
}

/** Resolves with the access line of the connection from local port `port`. */
function accessOf(d: Running, port: number): Promise<Record<string, unknown>> {
  return d.logs.waitFor((l) => l.access === true && l.peer === `127.0.0.1:${port}`)
}

/** A connection's local port, read while it is open (a destroyed socket no longer says). */
function portOf(s: Socket): number {
  const p = s.localPort
  if (p === undefined) throw new Error('the socket has no local port')
  return p
}

/** Reads `s` line by line, keeping what arrives after a line for the next call. */
const held = new WeakMap<Socket, string>()
async function line(s: Socket): Promise<string> {
  let text = held.get(s) ?? ''
  while (!text.includes('\n')) text += (await readUntil(s, 1)).toString()
  const nl = text.indexOf('\n')
  held.set(s, text.slice(nl + 1))
  return text.slice(0, nl)
}

/** Sessions of every listener ended, backend slots freed, no backend connection left. */
async function noneLeft(t: Test, d: Running, open: Set<Socket>): Promise<void> {
  const b = d.daemon.pools.get('p')!.backends[0]!
  const sessions = (): number => [...d.daemon.listeners.values()].reduce((n, l) => n + (l.sessions?.size ?? 0), 0)
  await eventually(() => sessions() === 0 && b.active === 0 && open.size === 0, 'sessions and backend connections back to zero').catch(() => {})
  t.equal(sessions(), 0, 'no session left open')
  t.equal(b.active, 0, 'no backend slot held')
  t.equal(open.size, 0, 'the backend holds no connection')
}

function warnings(d: Running): Record<string, unknown>[] {
  // Not the start-up line about the open-files limit (the test machine's, not the checks').
  return d.logs.lines.filter((l) => (l.level === 'warn' || l.level === 'error') && l.open_files_limit === undefined)
}

t.test('a trusted peer\'s connection that closes before any byte is a check', async (t) => {
  const { d, be } = await daemonWithChecks(t)
  const fin = await dial(d.port('in'))
  const finPort = portOf(fin)
  await accepted(d, 'in')
  fin.end()
  const a = await accessOf(d, finPort)
  t.equal(a.close_reason, 'peer_check', 'FIN with no byte')
  t.equal(a.client, `127.0.0.1:${finPort}`, 'the connection\'s own address, never empty')
  t.equal(a.bytes_in, 0)
  t.equal(a.backend, null, 'no backend was involved')

  const rst = await dial(d.port('in'))
  rst.on('error', () => {})
  const rstPort = portOf(rst)
  await accepted(d, 'in')
  rst.resetAndDestroy()
  t.equal((await accessOf(d, rstPort)).close_reason, 'peer_check', 'reset with no byte')

  const anyone = await dial(d.port('any'))
  const anyPort = portOf(anyone)
  await accepted(d, 'any')
  anyone.end()
  t.equal((await accessOf(d, anyPort)).close_reason, 'peer_check', 'without proxy_protocol_trusted every peer is trusted')

  await noneLeft(t, d, be.open)
  t.same(warnings(d), [], 'no warning')
  t.notMatch(await d.metrics(), /sluice_rejected_connections_total\{/, 'nothing counted as a refusal')
  t.ok(d.logs.lines.some((l) => l.level === 'debug' && /health check/.test(String(l.msg)) && l.peer === `127.0.0.1:${finPort}`), 'a debug line tells the check apart')
})

/** A v1 header naming the connection it is sent on, as HAProxy's v1 checks send. */
function itself(s: Socket, port: number): Buffer {
  return encodeV1({ sourceAddress: '127.0.0.1', sourcePort: portOf(s), destAddress: '127.0.0.1', destPort: port })
}

t.test('LOCAL (v2), UNKNOWN (v1) and self-naming headers: proxied with the real addresses, logged as checks', async (t) => {
  const { d, be } = await daemonWithChecks(t)
  const port = d.port('in')
  for (const [what, header] of [
    ['v2 LOCAL', (): Buffer => LOCAL_V2],
    ['v1 UNKNOWN', (): Buffer => UNKNOWN_V1],
    ['v1 naming this connection', (s: Socket): Buffer => itself(s, port)],
  ] as const) {
    const s = await dial(port)
    const local = portOf(s)
    s.write(Buffer.concat([header(s), Buffer.from('ping\n')]))
    t.equal(await line(s), `127.0.0.1:${local}>127.0.0.1:${port}`, `${what}: the backend gets the connection's own addresses`)
    t.equal(await line(s), 'ping', `${what}: bytes after the header are relayed`)
    s.end()
    await closed(s)
    const a = await accessOf(d, local)
    t.equal(a.close_reason, 'peer_check', `${what}: close_reason peer_check`)
    t.equal(a.client, `127.0.0.1:${local}`)
    t.equal(a.bytes_in, 5, `${what}: bytes_in leaves the header out`)
  }
  // As HAProxy's checks do: the header, then a reset at once, whatever sluice is doing.
  for (let i = 0; i < 12; i++) {
    const s = await dial(port)
    s.on('error', () => {})
    s.write([LOCAL_V2, UNKNOWN_V1, itself(s, port)][i % 3]!)
    if (i >= 6) await eventually(() => be.open.size > 0, 'the backend connection')
    s.resetAndDestroy()
  }
  await noneLeft(t, d, be.open)
  await eventually(() => d.logs.access.length === 15, 'an access line for each')
  t.same([...new Set(d.logs.access.map((l) => l.close_reason))], ['peer_check'], 'each is a peer check')
  t.same(warnings(d), [], 'no warning')
  t.notMatch(await d.metrics(), /sluice_rejected_connections_total\{/, 'nothing counted as a refusal')
})

t.test('a relayed client is never taken for a check', async (t) => {
  const { d, be } = await daemonWithChecks(t)
  const s = await dial(d.port('in'))
  const local = portOf(s)
  s.write(CLIENT_V1)
  t.equal(await line(s), '203.0.113.5:4242>198.51.100.9:143')
  s.end()
  await closed(s)
  const a = await accessOf(d, local)
  t.equal(a.close_reason, 'client_closed', 'a PROXY header naming a client: its own close reason')
  t.equal(a.client, '203.0.113.5:4242')

  const half = await dial(d.port('in'))
  half.on('error', () => {})
  const halfPort = portOf(half)
  half.write(CLIENT_V1.subarray(0, 8))
  await accepted(d, 'in')
  half.resetAndDestroy()
  t.equal((await accessOf(d, halfPort)).close_reason, 'client_aborted', 'part of a header, then gone: not a check')

  const plain = await dial(d.port('plain'))
  const plainPort = portOf(plain)
  await accepted(d, 'plain')
  plain.end()
  t.not((await accessOf(d, plainPort)).close_reason, 'peer_check', 'no byte on a listener without PROXY protocol: not a check')
  await noneLeft(t, d, be.open)
})

t.test('an untrusted peer is refused with its address in the warning', async (t) => {
  const { d } = await daemonWithChecks(t)
  const s = await dial(d.port('strict'))
  const local = portOf(s)
  s.on('error', () => {})
  await closed(s)
  const w = await d.logs.waitFor((l) => l.code === 'SLUICE_ERR_PROXY_UNTRUSTED')
  t.equal(w.client, `127.0.0.1:${local}`)
  t.match(String(w.msg), /not accepted from 127\.0\.0\.1\b/)
  t.equal((await accessOf(d, local)).close_reason, 'proxy_untrusted')
  t.match(await d.metrics(), /listener="strict",reason="proxy_untrusted"\} 1/)
})

/**
 * Connects `count` times to `port` from a child process, sends `bytes`, and resets, while
 * this process (the daemon's) is blocked in execFileSync: every connection is reset before
 * sluice can accept it, as balancers' L4 checks often are.
 */
function resetBeforeAccept(port: number, count: number, bytes: Buffer): void {
  const script = `
const net = require('node:net')
for (let i = 0; i < ${count}; i++) {
  const s = net.connect(${port}, '127.0.0.1', () => {
    if (${bytes.length} > 0) s.write(Buffer.from('${bytes.toString('hex')}', 'hex'))
    s.resetAndDestroy()
  })
  s.on('error', () => {})
}`
  execFileSync(process.execPath, ['-e', script], { timeout: 10_000, stdio: 'ignore' })
}

t.test('connections reset before they were accepted: address "unknown", never ":0", no warning', async (t) => {
  const { d, be } = await daemonWithChecks(t)
  resetBeforeAccept(d.port('in'), 5, LOCAL_V2)
  resetBeforeAccept(d.port('in'), 5, Buffer.alloc(0))
  resetBeforeAccept(d.port('strict'), 5, CLIENT_V1)
  resetBeforeAccept(d.port('any'), 5, LOCAL_V2)
  resetBeforeAccept(d.port('plain'), 5, Buffer.alloc(0))
  await eventually(() => d.logs.access.length === 25, 'an access line for each of the 25')
  await noneLeft(t, d, be.open)
  const lines = d.logs.access
  t.same([...new Set(lines.map((l) => `${String(l.client)} ${String(l.peer)}`))], ['unknown unknown'], 'client and peer are "unknown"')
  t.notOk(d.logs.lines.some((l) => typeof l.client === 'string' && l.client.startsWith(':')), 'no line names a client ":0"')
  const reasons = (listener: string): string[] => lines.filter((l) => l.listener === listener).map((l) => String(l.close_reason)).sort()
  t.same(reasons('in'), [...Array<string>(5).fill('client_aborted'), ...Array<string>(5).fill('peer_check')], 'trusted list: a LOCAL header is a check, nothing at all a client that left; neither refused')
  t.same(reasons('strict'), Array<string>(5).fill('client_aborted'), 'a header naming a client, from an address that cannot be checked: gone, not refused')
  t.same(reasons('any'), Array<string>(5).fill('peer_check'), 'no trusted list: the LOCAL header is read, a check')
  t.same(warnings(d), [], 'no warning')
  t.notMatch(await d.metrics(), /reason="(proxy_untrusted|bad_proxy_header)"/, 'no refusal counted')
})
