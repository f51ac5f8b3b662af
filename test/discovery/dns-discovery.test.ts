import t from 'tap'
import { startDaemon } from '../helpers/daemon.js'
import { eventually, greeting, namedBackend } from '../helpers/net.js'
import { metricValue } from '../helpers/udp.js'
import { srvWeight } from '../../src/upstream/discovery/dns-source.js'
import { parseAnswer } from '../../src/upstream/discovery/dns-client.js'
import { TinyDns } from './dns-server.js'

async function spread(port: number, n: number): Promise<Map<string, number>> {
  const seen = new Map<string, number>()
  for (let i = 0; i < n; i++) {
    const g = await greeting(port)
    seen.set(g, (seen.get(g) ?? 0) + 1)
  }
  return seen
}

function yaml(dns: string): string {
  return `
log: { level: info, access_log: false }
listeners: [{ name: l, listen: "127.0.0.1:0", pool: p }]
pools:
  p:
    algorithm: round-robin
    discovery: { dns: ${dns} }
`
}

t.test('SRV: port and weight from the records, targets from the additional section; traffic follows a change', async (t) => {
  const a = await namedBackend(t, 'a')
  const b = await namedBackend(t, 'b')
  const c = await namedBackend(t, 'c')
  const dns = await TinyDns.start(t)
  dns.a.set('host1.test', ['127.0.0.1'])
  dns.srv.set('_echo._tcp.test', [
    { priority: 0, weight: 1, port: a.port, target: 'host1.test' },
    { priority: 0, weight: 3, port: b.port, target: 'host1.test' },
  ])
  const s = await startDaemon(t, yaml(`{ name: _echo._tcp.test, type: SRV, interval: 200ms, resolvers: ["127.0.0.1:${dns.port}"] }`))
  const port = s.port('l')
  const pool = s.daemon.pools.get('p')!
  t.same(pool.backends.map((x) => [x.id, x.weight]), [[a.address, 1], [b.address, 3]], 'SRV ports and weights')
  const first = await spread(port, 8)
  t.same([first.get('a'), first.get('b')], [2, 6], 'weights 1:3 over 8 connections (smooth round-robin)')

  // The record change: a goes, c comes. Time to the first connection on c.
  const changedAt = performance.now()
  dns.srv.set('_echo._tcp.test', [
    { priority: 0, weight: 3, port: b.port, target: 'host1.test' },
    { priority: 0, weight: 1, port: c.port, target: 'host1.test' },
  ])
  let firstOnC = 0
  await eventually(async () => {
    if ((await greeting(port)) !== 'c') return false
    firstOnC = performance.now() - changedAt
    return true
  }, 'a connection reaches c', 5_000)
  t.comment(`record change to first connection on the new backend: ${firstOnC.toFixed(0)}ms (interval 200ms)`)
  t.ok(firstOnC < 2_000, 'within a few intervals, without a reload')
  await eventually(() => pool.find(a.address) === undefined, 'a is removed')
  const after = await spread(port, 8)
  t.notOk(after.has('a'), 'the removed backend takes nothing new')

  // The server stops answering: the last set keeps serving; logged once, counted each time.
  dns.mute(true)
  await eventually(async () => metricValue(await s.metrics(), 'sluice_discovery_updates_total', { pool: 'p', source: 'dns', result: 'failure' }) >= 3, 'three failed attempts', 15_000)
  t.equal(s.logs.lines.filter((l) => l.code === 'SLUICE_ERR_DISCOVERY_DNS').length, 1, 'a failure is logged once, not once per attempt')
  t.same(new Set((await spread(port, 4)).keys()), new Set(['b', 'c']), 'the pool keeps its last good set')

  // SERVFAIL, then an empty answer: still the last set.
  dns.mute(false)
  dns.servfail = true
  await s.logs.waitFor((l) => l.code === 'SLUICE_ERR_DISCOVERY_DNS' && String(l.detail).includes('SERVFAIL'))
  dns.servfail = false
  dns.srv.set('_echo._tcp.test', [])
  await s.logs.waitFor((l) => l.code === 'SLUICE_ERR_DISCOVERY_DNS' && String(l.detail).includes('no SRV record'))
  t.same(pool.backends.map((x) => x.id), [b.address, c.address], 'SERVFAIL and an empty answer keep the set')

  // A target that does not resolve (no glue, no A record): a clear error naming it, set kept.
  dns.glue = false
  dns.srv.set('_echo._tcp.test', [{ priority: 0, weight: 1, port: a.port, target: 'nowhere.test' }])
  const bad = await s.logs.waitFor((l) => l.code === 'SLUICE_ERR_DISCOVERY_DNS' && String(l.detail).includes('nowhere.test'))
  t.match(String(bad.detail), /SRV target nowhere\.test of _echo\._tcp\.test does not resolve to an address/)
  t.same(pool.backends.map((x) => x.id), [b.address, c.address], 'an unresolvable target keeps the set')

  // Without glue a target is looked up; recovery is logged once.
  dns.srv.set('_echo._tcp.test', [{ priority: 0, weight: 1, port: a.port, target: 'host1.test' }, { priority: 10, weight: 1, port: c.port, target: 'host1.test' }])
  await s.logs.waitFor((l) => l.source === 'dns' && String(l.msg).includes('works again'))
  await eventually(() => pool.find(a.address) !== undefined, 'a is back')
  t.same(pool.backends.map((x) => [x.id, x.backup]), [[a.address, false], [c.address, true]], 'a higher SRV priority number is a backup')
  t.same(new Set((await spread(port, 4)).keys()), new Set(['a']), 'the backup takes nothing while the primary is up')
})

t.test('A records with port; re-resolved no later than the TTL even with a long interval', async (t) => {
  const a = await namedBackend(t, 'a', '127.0.0.2')
  const dns = await TinyDns.start(t)
  dns.ttl = 1
  dns.a.set('svc.test', ['127.0.0.2'])
  const s = await startDaemon(t, yaml(`{ name: svc.test, type: A, port: ${a.port}, interval: 1h, resolvers: ["127.0.0.1:${dns.port}"] }`))
  const pool = s.daemon.pools.get('p')!
  t.same(pool.backends.map((x) => x.id), [`127.0.0.2:${a.port}`])
  t.equal(await greeting(s.port('l')), 'a')
  const queries = dns.queries
  dns.a.set('svc.test', ['127.0.0.2', '127.0.0.4'])
  await eventually(() => pool.backends.length === 2, 'the new address is seen within the 1s TTL, not the 1h interval', 5_000)
  t.ok(dns.queries > queries, 'asked again')
  t.same(pool.backends.map((x) => x.id), [`127.0.0.2:${a.port}`, `127.0.0.4:${a.port}`])
})

t.test('srvWeight and the answer parser', async (t) => {
  t.equal(srvWeight(0, 10), 1, 'weight 0 counts as 1')
  t.equal(srvWeight(7, 10), 7, 'kept as they are when none exceeds 1000')
  t.equal(srvWeight(65535, 65535), 1000, 'scaled into 1..1000')
  t.equal(srvWeight(6553, 65535), 100, 'ratios kept when scaled')
  t.equal(srvWeight(1, 65535), 1, 'never below 1')
  t.throws(() => parseAnswer(Buffer.alloc(5)), /shorter than a DNS header/)
  const loop = Buffer.alloc(14)
  loop.writeUInt16BE(1, 4)
  loop[12] = 0xc0
  loop[13] = 12
  t.throws(() => parseAnswer(loop), /too many compression pointers/, 'a pointer loop is refused, not followed forever')
})
