import t from 'tap'
import { greeting, namedBackend } from '../helpers/net.js'
import { adminYaml, startWithAdmin } from './helpers.js'

interface Outcome {
  ok: boolean
  code?: string
  message: string
  problems: string[]
  summary?: { listeners: number; pools: number; backends: number }
}

t.test('POST /api/reload with a good file applies it', async (t) => {
  const a = await namedBackend(t, 'a')
  const b = await namedBackend(t, 'b')
  const s = await startWithAdmin(t, adminYaml([a.address]))
  const port = s.port('l')
  t.equal(await greeting(port), 'a')
  s.write(adminYaml([b.address]))
  const res = await s.fetch('/api/reload', { method: 'POST' })
  t.equal(res.status, 200)
  const out = (await res.json()) as Outcome
  t.equal(out.ok, true)
  t.same(out.summary, { listeners: 1, pools: 1, backends: 1 })
  t.match(out.message, /reloaded \(1 listener, 1 pool, 1 backend\)/)
  t.equal(s.port('l'), port, 'the listener kept its socket')
  t.equal(await greeting(port), 'b', 'the new pool serves')
  t.match(await s.metrics(), /sluice_config_reloads_total\{result="success"\} 1/)
})

t.test('POST /api/reload with a bad file: 422 with FILE:LINE:COL problems, nothing changes', async (t) => {
  const a = await namedBackend(t, 'a')
  const s = await startWithAdmin(t, adminYaml([a.address]))
  s.write(adminYaml([a.address]).replace('round-robin', 'round-robbin').replace('pool: p }', 'pool: p, max_connections: 0 }'))
  const res = await s.fetch('/api/reload', { method: 'POST' })
  t.equal(res.status, 422)
  const out = (await res.json()) as Outcome
  t.equal(out.ok, false)
  t.equal(out.code, 'SLUICE_ERR_CONFIG')
  t.equal(out.problems.length, 2)
  const file = s.file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
  t.match(out.problems[0], new RegExp(`^${file}:5:\\d+: listener "l" max_connections is 0`))
  t.match(out.problems[1], new RegExp(`^${file}:7:\\d+: pool "p" algorithm "round-robbin" is not one of .*did you mean "round-robin"\\?`))
  t.equal(s.daemon.config.pools.get('p')?.algorithm, 'round-robin', 'the running configuration stays')
  t.equal(await greeting(s.port('l')), 'a')
  t.match(await s.metrics(), /sluice_config_reloads_total\{result="failure"\} 1/)
  t.ok(s.logs.lines.some((l) => l.code === 'SLUICE_ERR_CONFIG' && typeof l.msg === 'string' && l.msg.startsWith('reload refused')), 'logged')
})

t.test('POST /api/reload when the file is gone: 422 SLUICE_ERR_CONFIG_READ', async (t) => {
  const a = await namedBackend(t, 'a')
  const s = await startWithAdmin(t, adminYaml([a.address]))
  const { rmSync } = await import('node:fs')
  rmSync(s.file)
  const res = await s.fetch('/api/reload', { method: 'POST' })
  t.equal(res.status, 422)
  t.equal(((await res.json()) as Outcome).code, 'SLUICE_ERR_CONFIG_READ')
})

t.test('a reload that moves the admin API rebinds it; removing admin closes it', async (t) => {
  const a = await namedBackend(t, 'a')
  const s = await startWithAdmin(t, adminYaml([a.address]))
  const { deadPort } = await import('../helpers/net.js')
  const next = await deadPort()
  s.write(adminYaml([a.address], `{ listen: "127.0.0.1:${next}", token: tok-123456 }`))
  const res = await s.fetch('/api/reload', { method: 'POST' })
  t.equal(res.status, 200, 'the old server answers the reload it carried')
  t.equal(s.daemon.adminAddress()?.port, next)
  const moved = await fetch(`http://127.0.0.1:${next}/api/status`, { headers: { authorization: 'Bearer tok-123456' } })
  t.equal(moved.status, 200, 'the new address answers, with the new token')
  await t.rejects(fetch(`${s.url}/healthz`), 'the old address is closed')
  // Same address, new token: applies in place.
  s.write(adminYaml([a.address], `{ listen: "127.0.0.1:${next}", token: tok-abcdef }`))
  t.equal((await fetch(`http://127.0.0.1:${next}/api/reload`, { method: 'POST', headers: { authorization: 'Bearer tok-123456' } })).status, 200)
  t.equal((await fetch(`http://127.0.0.1:${next}/api/status`, { headers: { authorization: 'Bearer tok-123456' } })).status, 401, 'the old token no longer works')
  t.equal((await fetch(`http://127.0.0.1:${next}/api/status`, { headers: { authorization: 'Bearer tok-abcdef' } })).status, 200)
  s.write(adminYaml([a.address]).replace(/^admin: .*$/m, ''))
  t.equal((await fetch(`http://127.0.0.1:${next}/api/reload`, { method: 'POST', headers: { authorization: 'Bearer tok-abcdef' } })).status, 200)
  t.equal(s.daemon.adminAddress(), undefined, 'admin removed: the API is off')
})

t.test('reloads run one at a time', async (t) => {
  const a = await namedBackend(t, 'a')
  const s = await startWithAdmin(t, adminYaml([a.address]))
  const all = await Promise.all(Array.from({ length: 5 }, () => s.fetch('/api/reload', { method: 'POST' })))
  t.same(all.map((r) => r.status), [200, 200, 200, 200, 200])
  t.match(await s.metrics(), /sluice_config_reloads_total\{result="success"\} 5/)
})
