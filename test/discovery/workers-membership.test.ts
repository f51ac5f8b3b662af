import { mkdtempSync, renameSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { startDaemon } from '../helpers/daemon.js'
import { eventually, greeting, namedBackend } from '../helpers/net.js'
import { reusePortAvailable } from '../../src/config/validate.js'

const skip = reusePortAvailable() ? false : `workers above 1 need Node.js 22.12+ (reusePort); this is ${process.version}`

async function greetings(port: number, n: number): Promise<string[]> {
  const out: string[] = []
  for (let i = 0; i < n; i += 20) out.push(...(await Promise.all(Array.from({ length: Math.min(20, n - i) }, () => greeting(port)))))
  return out
}

t.test('workers: 2 — a membership change (file discovery, then admin DELETE) reaches every worker', { skip }, async (t) => {
  const a = await namedBackend(t, 'a')
  const b = await namedBackend(t, 'b')
  const dir = mkdtempSync(join(tmpdir(), 'sluice-workers-'))
  const path = join(dir, 'p.json')
  writeFileSync(path, JSON.stringify([a.address]))
  const run = await startDaemon(t, `
workers: 2
admin: { listen: "127.0.0.1:0" }
log: { level: info }
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p: { algorithm: round-robin, discovery: { file: { path: ${JSON.stringify(path)} } } }
`)
  const port = run.port('l')
  t.same(new Set(await greetings(port, 40)), new Set(['a']))
  writeFileSync(`${path}.tmp`, JSON.stringify([b.address]))
  renameSync(`${path}.tmp`, path)
  await eventually(async () => (await greetings(port, 20)).every((g) => g === 'b'), 'every connection goes to b')
  const before = run.logs.access.length
  t.same(new Set(await greetings(port, 200)), new Set(['b']), '200 connections, all on the new member')
  await run.logs.waitForAccess(before + 200)
  const onB = run.logs.access.slice(before).filter((l) => l.backend === b.address)
  t.ok(onB.length >= 200, 'each of them logged on b')
  t.same([...new Set(onB.map((l) => l.worker))].sort(), [1, 2], 'both workers send to the new member, none to the removed one')

  // A run-time PUT then DELETE, seen by both workers as well.
  const admin = run.daemon.adminAddress()!
  const url = `http://127.0.0.1:${admin.port}/api/pools/p/backends/`
  t.equal((await fetch(url + encodeURIComponent(a.address), { method: 'PUT', body: '{}' })).status, 201)
  t.equal((await fetch(url + encodeURIComponent(b.address), { method: 'DELETE' })).status, 200)
  const mark = run.logs.access.length
  t.same(new Set(await greetings(port, 200)), new Set(['a']), 'after PUT a and DELETE b every connection goes to a')
  await run.logs.waitForAccess(mark + 200)
  t.same([...new Set(run.logs.access.slice(mark).map((l) => l.worker))].sort(), [1, 2], 'in both workers')
})
