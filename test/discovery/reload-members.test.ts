import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { greeting, namedBackend } from '../helpers/net.js'
import { startWithAdmin } from '../admin/helpers.js'

async function spread(port: number, n: number): Promise<Set<string>> {
  const seen = new Set<string>()
  for (let i = 0; i < n; i++) seen.add(await greeting(port))
  return seen
}

t.test('a reload keeps discovered backends (same object, same counters); a source taken out of the file takes its backends', async (t) => {
  const a = await namedBackend(t, 'a')
  const b = await namedBackend(t, 'b')
  const c = await namedBackend(t, 'c')
  const dir = mkdtempSync(join(tmpdir(), 'sluice-reload-'))
  const list = join(dir, 'p.yaml')
  writeFileSync(list, `- ${b.address}\n`)
  const yaml = (backends: string[], discovery: boolean): string => `
admin: { listen: "127.0.0.1:0" }
log: { level: info, access_log: false }
listeners: [{ name: l, listen: "127.0.0.1:0", pool: p }]
pools:
  p:
    algorithm: round-robin
    backends: [${backends.map((x) => JSON.stringify(x)).join(', ')}]
${discovery ? `    discovery: { file: { path: ${JSON.stringify(list)} } }` : ''}
`
  const s = await startWithAdmin(t, yaml([a.address], true))
  const port = s.port('l')
  t.same(await spread(port, 4), new Set(['a', 'b']), 'backends and the file, merged')
  const discovered = s.daemon.dataPools.get('p')!.find(b.address)!
  const total = discovered.total

  s.write(yaml([a.address, c.address], true))
  t.equal((await s.fetch('/api/reload', { method: 'POST' })).status, 200)
  t.same(await spread(port, 6), new Set(['a', 'b', 'c']), 'the reload adds c and keeps b from the file')
  t.equal(s.daemon.dataPools.get('p')!.find(b.address), discovered, 'the discovered backend is the same object in the worker')
  t.ok(discovered.total > total, 'and keeps counting')
  t.same(s.daemon.pools.get('p')!.backends.map((x) => x.id), [a.address, c.address, b.address], 'backends first, then the file')

  s.write(yaml([a.address], false))
  t.equal((await s.fetch('/api/reload', { method: 'POST' })).status, 200)
  t.same(await spread(port, 4), new Set(['a']), 'discovery taken out of the file: its backends leave')
  t.same(s.daemon.pools.get('p')!.backends.map((x) => x.id), [a.address])
})
