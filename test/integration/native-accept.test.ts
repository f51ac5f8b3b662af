import t from 'tap'
import { connect, type Socket } from 'node:net'
import { lookup } from 'node:dns/promises'
import { startDaemon } from '../helpers/daemon.js'
import { backend, deadPort, dial, eventually, readUntil } from '../helpers/net.js'
import { loadNativeRelay } from '../../src/proxy/native-relay.js'
import { parseConfig } from '../../src/config/load.js'
import type { TcpListener } from '../../src/listener/tcp-listener.js'
import { TcpSession } from '../../src/proxy/tcp-session.js'

// A plain listener with a plain pool gives its listening socket to the native relay, which
// accepts, connects and relays with no Node socket per connection. These tests hold that path
// to what Node's does, and check that a reload moves the socket between the two without a
// refused connection.

const native = loadNativeRelay()
const skip = native.addon === undefined ? `the native relay is not built here: ${native.reason}` : false

/** An echo backend that drops a PROXY v1 line first, if one comes (pools with and without proxy_protocol). */
function echoServer(s: Socket): void {
  let head = true
  let pending = Buffer.alloc(0)
  s.on('data', (d: Buffer) => {
    if (!head) {
      s.write(d)
      return
    }
    pending = Buffer.concat([pending, d])
    const start = pending.subarray(0, 6).toString()
    if (pending.length < 6 && 'PROXY '.startsWith(start)) return
    head = false
    if (start === 'PROXY ') {
      const nl = pending.indexOf('\r\n')
      if (nl < 0) {
        head = true
        return
      }
      pending = pending.subarray(nl + 2)
    }
    if (pending.length > 0) s.write(pending)
  })
  s.on('end', () => s.end())
}

async function exchange(port: number, text: string): Promise<string> {
  const c = await dial(port)
  c.write(text)
  const got = await readUntil(c, text.length)
  c.end()
  return got.toString()
}

function kinds(l: TcpListener): string[] {
  return [...l.sessions].map((s) => (s instanceof TcpSession ? 'node' : 'relay'))
}

t.test('a reload moves the listening socket between the relay and Node, both ways, and no connection is refused', { skip }, async (t) => {
  const be = await backend(t, echoServer)
  const cfg = (port: number, proxy: string): string => `
relay: native
log: { level: info }
listeners: [{ name: l, listen: "127.0.0.1:${port}", pool: p }]
pools:
  p: { backends: ["${be.address}"], proxy_protocol: ${proxy} }
`
  const run = await startDaemon(t, cfg(0, 'off'))
  const port = run.port('l')
  const l = run.daemon.listeners.get('l') as TcpListener

  // One connection held open through both reloads.
  const held = await dial(port)
  held.write('held-1')
  t.equal((await readUntil(held, 6)).toString(), 'held-1')
  t.same(kinds(l), ['relay'], 'accepted by the relay')

  // Clients dial without pause while the reloads run (bounded in count and time).
  let stop = false
  let served = 0
  const failures: string[] = []
  const load = (async () => {
    const deadline = Date.now() + 60_000
    for (let i = 0; !stop && i < 5000 && Date.now() < deadline; i++) {
      try {
        const text = `ping-${i}`
        const got = await exchange(port, text)
        if (got !== text) failures.push(`${text} came back as ${got}`)
        else served++
      } catch (err) {
        failures.push(String(err))
      }
    }
  })()
  await eventually(() => served >= 50, 'clients to be served before the first reload', 20_000)

  // A pool that sends a PROXY header needs Node's sessions: the socket goes back to Node.
  await run.daemon.reload(parseConfig(cfg(port, 'v1'), 'test.yaml', {}))
  t.equal(l.address().port, port, 'same port')
  const before = served
  await eventually(() => served >= before + 50, 'clients served after the reload to Node', 20_000)
  const viaNode = await dial(port)
  viaNode.write('node')
  await readUntil(viaNode, 4)
  t.ok(kinds(l).includes('node'), 'new connections are Node sessions')

  // And back: the relay accepts again.
  await run.daemon.reload(parseConfig(cfg(port, 'off'), 'test.yaml', {}))
  const again = served
  await eventually(() => served >= again + 50, 'clients served after the reload back to the relay', 20_000)
  const viaRelay = await dial(port)
  viaRelay.write('relay')
  await readUntil(viaRelay, 5)
  t.ok(kinds(l).filter((k) => k === 'relay').length >= 2, 'new connections are relay sessions again')

  stop = true
  await load
  t.same(failures, [], `every one of ${served} connections during the reloads was served`)
  held.write('held-2')
  t.equal((await readUntil(held, 6)).toString(), 'held-2', 'the connection held through both reloads still echoes')
  for (const c of [held, viaNode, viaRelay]) c.end()
  await eventually(() => l.sessions.size === 0, 'every session to end')
  const metrics = await run.metrics()
  const total = Number(/sluice_connections_total\{listener="l"\} (\d+)/.exec(metrics)?.[1] ?? -1)
  t.equal(total, served + 3, 'sluice_connections_total counts every connection, whoever accepted it')
  t.notMatch(metrics, /sluice_rejected_connections_total\{[^}]*listener="l"/, 'none was rejected')
})

t.test('relay: js in a reload hands the socket back to Node', { skip }, async (t) => {
  const be = await backend(t, echoServer)
  const cfg = (port: number, relay: string): string => `
relay: ${relay}
log: { level: info }
listeners: [{ name: l, listen: "127.0.0.1:${port}", pool: p }]
pools:
  p: { backends: ["${be.address}"] }
`
  const run = await startDaemon(t, cfg(0, 'native'))
  const port = run.port('l')
  const l = run.daemon.listeners.get('l') as TcpListener
  const a = await dial(port)
  a.write('a')
  await readUntil(a, 1)
  t.same(kinds(l), ['relay'])
  await run.daemon.reload(parseConfig(cfg(port, 'js'), 'test.yaml', {}))
  const b = await dial(port)
  b.write('b')
  await readUntil(b, 1)
  t.same(kinds(l).sort(), ['node', 'relay'], 'the open connection stays with the relay; the new one is Node’s')
  a.write('still')
  t.equal((await readUntil(a, 5)).toString(), 'still')
  a.end()
  b.end()
  await eventually(() => l.sessions.size === 0, 'both sessions to end')
})

t.test('a backend named by a host name is resolved, and refusals and retries behave as with Node', { skip }, async (t) => {
  // The backend listens on the last address `localhost` has here: where that is 127.0.0.1 after
  // ::1 (glibc with both in /etc/hosts), ::1 refuses and the relay must go on to the next
  // address, as Node's connect does, before it counts the backend as failed.
  const addresses = await lookup('localhost', { all: true })
  const be = await backend(t, echoServer, addresses[addresses.length - 1]!.address)
  t.comment(`localhost is ${addresses.map((a) => a.address).join(', ')} here`)
  // Below the ephemeral range: no listener of a test running beside this one can be given it.
  const dead = await deadPort()
  const run = await startDaemon(
    t,
    `
relay: native
log: { level: info, access_log: true }
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }, { name: none, listen: 127.0.0.1:0, pool: empty }]
pools:
  p: { algorithm: first, retries: 1, backends: ["127.0.0.1:${dead}", "localhost:${be.port}"] }
  empty: { backends: ["127.0.0.1:${dead}"], retries: 0 }
`,
  )
  const echoed = await exchange(run.port('l'), 'by name').catch((err: Error) => {
    // What the daemon said about it, for a failure seen only beside other tests.
    t.comment(run.logs.lines.map((l) => JSON.stringify(l)).join('\n'))
    throw err
  })
  t.equal(echoed, 'by name', 'served by the backend named localhost, after the dead one failed')
  const lines = await run.logs.waitForAccess(1)
  t.equal(lines[0]!.backend, `localhost:${be.port}`)
  t.equal(lines[0]!.attempts, 2, 'two attempts: the dead backend, then the next')
  t.equal(lines[0]!.close_reason, 'client_closed')

  // Every attempt fails: the client gets a reset, and the log and metrics say why.
  // The reset may come before Node has seen the connect complete: watch from the start.
  const c = connect(run.port('none'), '127.0.0.1')
  const err = await new Promise<Error | undefined>((resolve) => {
    c.on('error', (e) => resolve(e))
    c.on('close', () => resolve(undefined))
    c.resume()
  })
  t.equal((err as { code?: string } | undefined)?.code, 'ECONNRESET', 'the client sees a reset')
  const refused = (await run.logs.waitForAccess(2))[1]!
  t.equal(refused.close_reason, 'connect_failed')
  t.equal(refused.backend, null)
  const metrics = await run.metrics()
  t.match(metrics, /sluice_rejected_connections_total\{listener="none",reason="connect_failed"\} 1/)
  t.match(metrics, new RegExp(`sluice_connect_errors_total\\{pool="empty",backend="127.0.0.1:${dead}",reason="refused"\\} 1`))
})
