import { spawn } from 'node:child_process'
import type { Socket } from 'node:net'
import t, { type Test } from 'tap'
import { withRelay } from '../helpers/daemon.js'
import { dial, eventually, namedBackend, readUntil } from '../helpers/net.js'
import { MAIN, SluiceProcess, tempFile } from '../helpers/spawn.js'
import { UdpClient, metricValue, udpBackend } from '../helpers/udp.js'
import { which } from '../helpers/tools.js'

/**
 * Out of file descriptors, for real: the daemon runs as a child process under
 * `prlimit --nofile=LIMIT` and clients connect until its descriptors are gone. It must keep
 * serving what it holds, pause accepting (the waiting client is served, not dropped, once
 * descriptors free up), never blame a backend, answer on the admin API, count it and warn
 * once per interval. SLUICE_TEST_RELAY picks the relay, as for the in-process tests.
 */

const LIMIT = 80
const prlimit = which('prlimit')

function startLimited(t: Test, yaml: string): SluiceProcess {
  const file = tempFile('fd.yaml', withRelay(yaml))
  const child = spawn(prlimit as string, [`--nofile=${LIMIT}:${LIMIT}`, process.execPath, MAIN, 'run', '--config', file], { stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  return new SluiceProcess(child)
}

async function started(sp: SluiceProcess): Promise<{ port: number; admin: string }> {
  const line = await sp.waitFor((l) => l.msg === 'sluice started', 'start')
  const listen = (line.listeners as { listen: string }[])[0]?.listen ?? ''
  return { port: Number(listen.slice(listen.lastIndexOf(':') + 1)), admin: String(line.admin) }
}

async function metrics(admin: string): Promise<string> {
  const res = await fetch(`http://${admin}/metrics`)
  return res.text()
}

const isExhaustion = (l: Record<string, unknown>): boolean => l.code === 'SLUICE_ERR_RESOURCE_EXHAUSTED' && l.at !== undefined

t.test('tcp: out of descriptors, sluice serves what it holds, pauses, blames no backend and recovers', { skip: prlimit === undefined ? 'prlimit (util-linux) is not installed' : false }, async (t) => {
  const b1 = await namedBackend(t, 'b1')
  const b2 = await namedBackend(t, 'b2')
  const sp = startLimited(t, `
admin: { listen: 127.0.0.1:0 }
listeners:
  - { name: front, protocol: tcp, listen: 127.0.0.1:0, pool: p, max_connections: 1000 }
pools:
  p:
    backends: [ ${b1.address}, ${b2.address} ]
    passive: { max_failures: 2, ejection_time: 30s }
    connect_timeout: 20s
    retries: 1
`)
  const { port, admin } = await started(sp)
  const warning = await sp.waitFor((l) => l.code === 'SLUICE_ERR_RESOURCE_EXHAUSTED' && l.open_files_limit === LIMIT, 'the start-up warning about the open-files limit')
  t.ok(Number(warning.descriptors_needed) > LIMIT, 'the warning says how many descriptors max_connections needs')

  // Connect until a client gets no greeting because sluice ran out (bounded: the limit caps it).
  const held: Socket[] = []
  let waiting: Socket | undefined
  // What the waiting client receives, from its first byte (its greeting may come at any time).
  let waitingGot = ''
  for (let i = 0; i < LIMIT && waiting === undefined; i++) {
    const s = await dial(port)
    s.on('error', () => {})
    let got = ''
    const onData = (d: Buffer): void => {
      got += d.toString()
    }
    s.on('data', onData)
    const outcome = await Promise.race([
      eventually(() => got.includes('\n'), 'a greeting', 20_000).then(() => 'greeted', () => 'no greeting'),
      sp.waitFor(isExhaustion, 'exhaustion', 20_000).then(() => 'exhausted'),
    ])
    s.off('data', onData)
    if (outcome === 'exhausted') {
      waiting = s
      waitingGot = got
      s.on('data', (d: Buffer) => (waitingGot += d.toString()))
    } else {
      held.push(s)
    }
  }
  t.ok(waiting !== undefined, 'descriptors ran out')
  t.ok(held.length >= 5, `${held.length} connections were served before that`)
  const exhaustedAt = Date.now()

  // What sluice holds is still served, byte for byte.
  for (const [i, s] of held.entries()) {
    s.write(`still-${i}\n`)
    t.equal((await readUntil(s, 'line')).toString(), `still-${i}\n`, `held connection ${i} still echoes`)
  }

  // The admin API answers (the reserve), and no backend was blamed.
  const text = await metrics(admin)
  t.ok(metricValue(text, 'sluice_resource_exhausted_total', { resource: 'fd', listener: 'front' }) >= 1, 'counted as fd exhaustion')
  t.equal(metricValue(text, 'sluice_backend_ejections_total'), 0, 'no backend ejected')
  t.equal(metricValue(text, 'sluice_connect_errors_total'), 0, 'no connect error counted against a backend')
  t.equal(metricValue(text, 'sluice_backend_up', { backend: b1.address }), 1, 'b1 is up')
  t.equal(metricValue(text, 'sluice_backend_up', { backend: b2.address }), 1, 'b2 is up')
  const status = (await (await fetch(`http://${admin}/api/status`)).json()) as { pools: { backends: { state: string }[] }[] }
  t.same(status.pools[0]?.backends.map((b) => b.state), ['up', 'up'], '/api/status: both backends up')

  // Free descriptors: the waiting client is served (it was paused, not dropped), then new ones.
  for (const s of held.splice(0, held.length - 2)) s.destroy()
  await eventually(() => waitingGot.includes('\n'), 'the waiting client to be greeted', 20_000)
  t.match(waitingGot, /^b[12]\n$/, 'the client that waited is served once descriptors are free')
  ;(waiting as Socket).removeAllListeners('data')
  ;(waiting as Socket).write('late\n')
  t.equal((await readUntil(waiting as Socket, 'line')).toString(), 'late\n', 'and relays both ways')
  await sp.waitFor((l) => typeof l.msg === 'string' && l.msg.startsWith('file descriptors are free again'), 'the recovery line')
  const fresh = await dial(port)
  t.match((await readUntil(fresh, 'line', 20_000)).toString(), /^b[12]\n$/, 'a new client is served')
  fresh.destroy()

  const warnings = sp.lines.filter(isExhaustion).length
  const seconds = Math.ceil((Date.now() - exhaustedAt) / 1000)
  t.ok(warnings <= seconds + 2, `${warnings} exhaustion warnings in about ${seconds}s: once per interval`)
  t.notOk(sp.lines.some((l) => l.code === 'SLUICE_ERR_BACKEND_EJECTED'), 'no ejection was logged')
  const others = sp.lines.filter((l) => (l.level === 'warn' || l.level === 'error') && l.code !== 'SLUICE_ERR_RESOURCE_EXHAUSTED')
  t.same(others.map((l) => l.msg), [], 'no other warning or error')
  t.notOk(sp.lines.some((l) => l.level === 'warn' && typeof l.msg === 'string' && l.msg.startsWith('connect to backend')), 'no connect failure was logged against a backend')
  for (const s of [...held, waiting as Socket]) s.destroy()
})

t.test('udp: out of descriptors for sessions, datagrams are dropped and counted, warned once per interval', { skip: prlimit === undefined ? 'prlimit (util-linux) is not installed' : false }, async (t) => {
  const ub = await udpBackend(t, 'u', { mode: 'echo' })
  const sp = startLimited(t, `
admin: { listen: 127.0.0.1:0 }
listeners:
  - { name: dgram, protocol: udp, listen: 127.0.0.1:0, pool: u, udp: { session_timeout: 1s, responses: 0 } }
pools:
  u:
    backends: [ ${ub.address} ]
    passive: { max_failures: 2, ejection_time: 30s }
`)
  const { port, admin } = await started(sp)
  await sp.waitFor((l) => l.code === 'SLUICE_ERR_RESOURCE_EXHAUSTED' && l.open_files_limit === LIMIT, 'the start-up warning: udp.max_sessions (100000) above the limit')

  // Twice as many clients as sluice has descriptors, each sending a few datagrams.
  const clients: UdpClient[] = []
  for (let i = 0; i < 2 * LIMIT; i++) clients.push(await UdpClient.open(t))
  for (let round = 0; round < 3; round++) for (const [i, c] of clients.entries()) c.send(port, `c${i}`)
  await eventually(() => sp.lines.some(isExhaustion), 'the exhaustion warning')
  await eventually(async () => metricValue(await metrics(admin), 'sluice_rejected_connections_total', { reason: 'fd_exhausted' }) > 0, 'fd_exhausted drops counted')
  const answered = clients.filter((c) => c.inbox.length > 0).length
  t.ok(answered >= 5 && answered < clients.length, `${answered} of ${clients.length} clients got their session`)

  const text = await metrics(admin)
  t.ok(metricValue(text, 'sluice_resource_exhausted_total', { resource: 'fd', listener: 'dgram' }) >= 1, 'counted as fd exhaustion')
  t.equal(metricValue(text, 'sluice_backend_ejections_total'), 0, 'the backend was not ejected')
  t.equal(metricValue(text, 'sluice_backend_up', { backend: ub.address }), 1, 'the backend is up')
  const warns = sp.lines.filter((l) => (l.level === 'warn' || l.level === 'error') && l.code !== 'SLUICE_ERR_RESOURCE_EXHAUSTED')
  t.same(warns.map((l) => l.msg), [], 'no other warning (no per-datagram line, no backend blamed)')
  t.ok(sp.lines.filter(isExhaustion).length <= 3, 'the exhaustion warning is written once per interval, not per datagram')

  // Sessions expire (1s), descriptors come back, and a new client gets its session.
  const late = await UdpClient.open(t)
  let reply = ''
  for (let i = 0; i < 100 && reply === ''; i++) {
    late.send(port, 'late')
    reply = await late.next(200).then((d) => d.msg.toString(), () => '')
  }
  t.equal(reply, 'late', 'a new client is served once sessions have expired')
})
