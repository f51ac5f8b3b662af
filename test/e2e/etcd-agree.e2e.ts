import { connect } from 'node:net'
import t from 'tap'
import { namedBackend, eventually } from '../helpers/net.js'
import { startSluice, tempFile, type SluiceProcess } from '../helpers/spawn.js'
import { skipWithout } from '../helpers/tools.js'
import { etcdBin, startEtcd } from '../helpers/etcd.js'

const PREFIX = '/sluice/pools/shared/'
const CLIENTS = 1000

/** The i-th client address: 1,000 distinct sources spread over 127.0.0.0/8. */
function clientAddress(i: number): string {
  return `127.${10 + (i % 7)}.${1 + Math.floor(i / 250)}.${1 + (i % 250)}`
}

/** Connects from `from`, reads the backend's greeting line. */
function greetFrom(port: number, from: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port, localAddress: from })
    let buf = ''
    const timer = setTimeout(() => (s.destroy(), reject(new Error(`no greeting for ${from}`))), 10_000)
    s.on('data', (d: Buffer) => {
      buf += d.toString()
      const nl = buf.indexOf('\n')
      if (nl < 0) return
      clearTimeout(timer)
      s.destroy()
      resolve(buf.slice(0, nl))
    })
    s.on('error', (err) => (clearTimeout(timer), reject(err)))
  })
}

/** Where each of the clients lands on one listener, 50 connections at a time. */
async function mapping(port: number): Promise<string[]> {
  const out: string[] = new Array<string>(CLIENTS)
  for (let i = 0; i < CLIENTS; i += 50) {
    await Promise.all(Array.from({ length: Math.min(50, CLIENTS - i) }, async (_, k) => (out[i + k] = await greetFrom(port, clientAddress(i + k)))))
  }
  return out
}

async function adminUrl(p: SluiceProcess): Promise<string> {
  const line = await p.waitFor((l) => l.msg === 'sluice started', 'start', 60_000)
  return `http://${String(line.admin)}`
}

async function members(url: string, pool: string): Promise<string[]> {
  const s = (await (await fetch(`${url}/api/status`)).json()) as { pools: { name: string; backends: { address: string; state: string }[] }[] }
  return (s.pools.find((p) => p.name === pool)?.backends ?? []).filter((b) => b.state === 'up').map((b) => b.address).sort()
}

t.test('three sluice processes on one etcd prefix send the same clients to the same backends, also after a change', async (t) => {
  if (skipWithout(t, { etcd: etcdBin })) return
  const etcd = await startEtcd(t)
  const bs = await Promise.all(['b1', 'b2', 'b3', 'b4', 'b5'].map((n) => namedBackend(t, n)))
  for (const b of bs.slice(0, 4)) await etcd.put(PREFIX + b.address, JSON.stringify({ address: b.address }))
  const config = tempFile('agree.yaml', `
admin: { listen: "127.0.0.1:0" }
log: { level: info, access_log: false }
listeners:
  - { name: mg, listen: "127.0.0.1:0", pool: mg }
  - { name: ch, listen: "127.0.0.1:0", pool: ch }
pools:
  mg: { algorithm: maglev, discovery: { etcd: { endpoints: ["${etcd.url}"], prefix: "${PREFIX}" } } }
  ch: { algorithm: consistent-hash, discovery: { etcd: { endpoints: ["${etcd.url}"], prefix: "${PREFIX}" } } }
`)
  const procs = [startSluice(t, config), startSluice(t, config), startSluice(t, config)]
  const admins = await Promise.all(procs.map(adminUrl))
  const ports = await Promise.all(procs.map(async (p) => ({ mg: await p.port('mg'), ch: await p.port('ch') })))
  const first = bs.slice(0, 4).map((b) => b.address).sort()
  for (const a of admins) for (const pool of ['mg', 'ch']) t.same(await members(a, pool), first, `${a} ${pool}: the four backends from etcd`)

  const before: Record<string, string[]> = {}
  for (const alg of ['mg', 'ch'] as const) {
    const maps = await Promise.all(ports.map((p) => mapping(p[alg])))
    const differ = maps[0]!.filter((b, i) => maps[1]![i] !== b || maps[2]![i] !== b).length
    t.equal(differ, 0, `${alg}: all three instances send each of ${CLIENTS} clients to the same backend`)
    t.equal(new Set(maps[0]).size, 4, `${alg}: every backend has clients`)
    before[alg] = maps[0]!
  }

  // One backend added, another removed, through etcd only.
  await etcd.put(PREFIX + bs[4]!.address, JSON.stringify({ address: bs[4]!.address, weight: 1 }))
  await etcd.del(PREFIX + bs[0]!.address)
  const next = bs.slice(1).map((b) => b.address).sort()
  await eventually(async () => {
    for (const a of admins) for (const pool of ['mg', 'ch']) if ((await members(a, pool)).join() !== next.join()) return false
    return true
  }, 'every instance follows etcd', 15_000)

  for (const alg of ['mg', 'ch'] as const) {
    const maps = await Promise.all(ports.map((p) => mapping(p[alg])))
    const differ = maps[0]!.filter((b, i) => maps[1]![i] !== b || maps[2]![i] !== b).length
    t.equal(differ, 0, `${alg}: after the change the three still agree on all ${CLIENTS} clients`)
    t.notOk(maps[0]!.includes('b1'), `${alg}: nothing goes to the removed backend`)
    const moved = maps[0]!.filter((b, i) => b !== before[alg]![i]).length
    const fromRemoved = before[alg]!.filter((b) => b === 'b1').length
    const toNew = maps[0]!.filter((b) => b === 'b5').length
    t.comment(`${alg}: ${moved} of ${CLIENTS} clients moved (${((100 * moved) / CLIENTS).toFixed(1)}%): ${fromRemoved} were on the removed backend, ${toNew} are now on the new one`)
    // Only what the change forces moves: clients of the removed backend, and those the new one takes.
    t.ok(moved <= fromRemoved + toNew + CLIENTS * 0.02, `${alg}: no more than the change forces (+2%)`)
  }

  // etcd restarts: the watches resume and the next change still reaches every instance.
  await etcd.stop()
  await etcd.start()
  await etcd.put(PREFIX + bs[0]!.address, JSON.stringify({ address: bs[0]!.address }))
  await eventually(async () => {
    for (const a of admins) if ((await members(a, 'mg')).length !== 5) return false
    return true
  }, 'a change after an etcd restart reaches every instance', 30_000)
  // A value that is not a backend: a clear error, the set kept.
  await etcd.put(`${PREFIX}garbage:1`, 'not json')
  await procs[0]!.waitFor((l) => l.code === 'SLUICE_ERR_DISCOVERY_ETCD' && String(l.detail).includes('garbage:1') && String(l.detail).includes('not JSON'), 'the bad value is reported')
  t.equal((await members(admins[0]!, 'mg')).length, 5, 'the bad key changes nothing')
  for (const p of procs) p.signal('SIGTERM')
  for (const p of procs) t.equal((await p.exited).code, 0, 'each instance stops cleanly')
})
