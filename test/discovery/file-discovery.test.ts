import { mkdtempSync, renameSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { startDaemon } from '../helpers/daemon.js'
import { dial, eventually, greeting, namedBackend, readUntil } from '../helpers/net.js'
import { metricValue } from '../helpers/udp.js'
import { parseBackendsFile } from '../../src/upstream/discovery/file-source.js'
import { parseConfig } from '../../src/config/load.js'
import { ConfigError } from '../../src/errors.js'

/** Writes `text` beside `path` and renames it into place, as an operator's tool should. */
function replace(path: string, text: string): void {
  const tmp = `${path}.tmp`
  writeFileSync(tmp, text)
  renameSync(tmp, path)
}

async function spread(port: number, n: number): Promise<Set<string>> {
  const seen = new Set<string>()
  for (let i = 0; i < n; i++) seen.add(await greeting(port))
  return seen
}

function yaml(path: string): string {
  return `
log: { level: info, access_log: false }
listeners: [{ name: l, listen: "127.0.0.1:0", pool: p }]
pools:
  p:
    algorithm: round-robin
    discovery: { file: { path: ${JSON.stringify(path)} } }
`
}

t.test('a discovery file replaced by rename changes the members; a broken one keeps the last good set', async (t) => {
  const a = await namedBackend(t, 'a')
  const b = await namedBackend(t, 'b')
  const c = await namedBackend(t, 'c')
  const dir = mkdtempSync(join(tmpdir(), 'sluice-file-'))
  const path = join(dir, 'p.yaml')
  writeFileSync(path, `- ${a.address}\n- { address: ${b.address}, weight: 1 }\n`)
  const s = await startDaemon(t, yaml(path))
  const port = s.port('l')
  t.same(await spread(port, 4), new Set(['a', 'b']), 'the file\'s backends take traffic from the start (no backends key)')

  // An open connection to a, which the next file drops: it keeps working while a drains.
  let open = await dial(port)
  while ((await readUntil(open, 'line')).toString() !== 'a\n') {
    open.destroy()
    open = await dial(port)
  }
  t.teardown(() => open.destroy())

  replace(path, JSON.stringify([b.address, { address: c.address, weight: 2 }]))
  await eventually(async () => {
    const got = await spread(port, 6)
    return got.has('c') && !got.has('a')
  }, 'traffic follows the renamed file')
  const change = await s.logs.waitFor((l) => l.pool === 'p' && l.source === 'file' && Array.isArray(l.added) && (l.added as string[]).includes(c.address))
  t.same(change.removed, [a.address], 'the change is logged with what was added and removed')
  open.write('still there\n')
  t.equal((await readUntil(open, 'line')).toString(), 'still there\n', 'the removed backend\'s open connection still echoes')
  const status = s.daemon.pools.get('p')!
  t.same(status.leaving.map((x) => [x.id, x.state]), [[a.address, 'draining']], 'the removed backend shows as draining while its connection is open')
  open.destroy()
  await eventually(() => status.leaving.length === 0, 'it leaves once its last connection ends')

  // b's state and counters are kept across the change.
  const bBackend = s.daemon.dataPools.get('p')!.find(b.address)!
  const before = bBackend.total

  replace(path, 'backends:\n  - not a list\n')
  const bad = await s.logs.waitFor((l) => l.code === 'SLUICE_ERR_DISCOVERY_FILE')
  t.match(String(bad.msg), new RegExp(`${path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:1:1: the backends file must be a list`), 'the log names FILE:LINE:COL')
  replace(path, `- ${b.address}\n- 10.0.0.1:notaport\n`)
  const bad2 = await s.logs.waitFor((l) => l.code === 'SLUICE_ERR_DISCOVERY_FILE' && String(l.msg).includes(':2:3:'))
  t.ok(bad2, 'a bad item is reported at its own line and column')
  t.same(await spread(port, 6), new Set(['b', 'c']), 'the last good set keeps serving')
  t.ok(s.daemon.dataPools.get('p')!.find(b.address) === bBackend && bBackend.total > before, 'a backend that stays is the same object, counters kept')

  const m = await s.metrics()
  t.ok(metricValue(m, 'sluice_discovery_updates_total', { pool: 'p', source: 'file', result: 'failure' }) >= 2, 'failures are counted')
  t.ok(metricValue(m, 'sluice_discovery_updates_total', { pool: 'p', source: 'file', result: 'success' }) >= 2, 'good reads are counted')
  t.equal(metricValue(m, 'sluice_membership_changes_total', { pool: 'p', source: 'file' }), 1, 'one applied change')
})

t.test('parseBackendsFile: YAML or JSON lists; every problem located', async (t) => {
  t.same((parseBackendsFile('["127.0.0.1:1", {"address": "[::1]:2", "backup": true}]', 'f.json') as { address: string }[]).map((b) => b.address), ['127.0.0.1:1', '[::1]:2'])
  t.match(parseBackendsFile('{a: 1}', 'f.yaml'), /^f\.yaml:1:1: the backends file must be a list/)
  t.match(parseBackendsFile('- 127.0.0.1:1\n- {address: 127.0.0.1:2, wieght: 3}\n', 'f.yaml'), /f\.yaml:2:\d+: unknown key "wieght".*did you mean "weight"/)
  t.match(parseBackendsFile('[', 'f.yaml'), /^f\.yaml:1:\d+: YAML syntax/)
  t.match(parseBackendsFile('', 'f.yaml'), /^f\.yaml:1:1: the backends file is empty/)
})

t.test('discovery config: each source\'s keys are checked at their line', async (t) => {
  const bad = `
listeners: [{ name: l, listen: "127.0.0.1:0", pool: p }]
pools:
  p:
    discovery:
      dns: { name: "_pg._tcp.example", type: SRV, port: 5432, resolvers: [ "resolver.example:53" ] }
      etcd: { endpoints: [ "127.0.0.1:2379" ] }
      file: {}
`
  try {
    parseConfig(bad, 'c.yaml', {})
    t.fail('should not validate')
  } catch (err) {
    t.ok(err instanceof ConfigError)
    const lines = (err as ConfigError).issues.map((i) => `${i.line}: ${i.message}`)
    t.ok(lines.some((l) => /^6: .*type SRV takes each backend's port from its record/.test(l)), 'SRV with port')
    t.ok(lines.some((l) => /^6: .*must be an IP address, not a name/.test(l)), 'a resolver by name')
    t.ok(lines.some((l) => /^7: .*must be an http:\/\/ or https:\/\/ URL/.test(l)), 'an endpoint without a scheme')
    t.ok(lines.some((l) => /^7: .*missing the required key "prefix"/.test(l)), 'etcd without prefix')
    t.ok(lines.some((l) => /^8: .*missing the required key "path"/.test(l)), 'file without path')
  }
  const ok = parseConfig(`
listeners: [{ name: l, listen: "127.0.0.1:0", pool: p }]
pools:
  p:
    backends: [127.0.0.1:1]
    discovery: { dns: { name: pg.service.consul, type: A, port: 5432, interval: 10s, resolvers: [127.0.0.1:8600] } }
`, 'c.yaml', {})
  t.same(ok.pools.get('p')?.discovery?.dns, { name: 'pg.service.consul', type: 'A', port: 5432, intervalMs: 10_000, timeoutMs: 2_000, resolvers: [{ host: '127.0.0.1', port: 8600 }] })
})
