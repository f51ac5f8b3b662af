import t from 'tap'
import { dial, greeting, namedBackend, readUntil } from '../helpers/net.js'
import { adminYaml, startWithAdmin } from './helpers.js'

interface Done {
  pool: string
  action: string
  previous_state: string
  backend: { address: string; state: string; active_connections: number }
}

async function greetings(port: number, n: number): Promise<string[]> {
  const out: string[] = []
  for (let i = 0; i < n; i++) out.push(await greeting(port))
  return out
}

t.test('drain: open connections keep working, new ones go elsewhere; enable brings it back', async (t) => {
  const a = await namedBackend(t, 'a')
  const b = await namedBackend(t, 'b')
  const s = await startWithAdmin(t, adminYaml([a.address, b.address]))
  const port = s.port('l')
  t.same(new Set(await greetings(port, 4)), new Set(['a', 'b']), 'both take connections at first')

  // An open connection to a, found by dialing until one lands there.
  let open = await dial(port)
  for (let i = 0; i < 4 && (await readUntil(open, 'line')).toString() !== 'a\n'; i++) {
    open.destroy()
    open = await dial(port)
  }
  t.teardown(() => open.destroy())

  const res = await s.fetch(`/api/pools/p/backends/${encodeURIComponent(a.address)}/drain`, { method: 'POST' })
  t.equal(res.status, 200)
  const done = (await res.json()) as Done
  t.same({ pool: done.pool, action: done.action, previous_state: done.previous_state, state: done.backend.state, active: done.backend.active_connections }, { pool: 'p', action: 'drain', previous_state: 'up', state: 'draining', active: 1 })
  t.same(await greetings(port, 6), ['b', 'b', 'b', 'b', 'b', 'b'], 'new connections skip the draining backend')
  open.write('still here\n')
  t.equal((await readUntil(open, 'line')).toString(), 'still here\n', 'the open connection to the draining backend still works')
  t.match(await s.metrics(), new RegExp(`sluice_backend_up\\{pool="p",backend="${a.address}"\\} 0`))
  t.ok(s.logs.lines.some((l) => l.pool === 'p' && l.backend === a.address && l.from === 'up' && l.to === 'draining'), 'the change is logged')

  const en = (await (await s.fetch(`/api/pools/p/backends/${encodeURIComponent(a.address)}/enable`, { method: 'POST' })).json()) as Done
  t.same([en.previous_state, en.backend.state], ['draining', 'up'])
  t.same(new Set(await greetings(port, 4)), new Set(['a', 'b']), 'enabled: it takes connections again')
})

t.test('disable, then disable again (idempotent), for an IPv6 backend by its bracketed address', async (t) => {
  const a = await namedBackend(t, 'a')
  const v6 = await namedBackend(t, 'six', '::1')
  const s = await startWithAdmin(t, adminYaml([a.address, v6.address]))
  for (const path of [`/api/pools/p/backends/${encodeURIComponent(v6.address)}/disable`, `/api/pools/p/backends/${v6.address}/disable`]) {
    const res = await s.fetch(path, { method: 'POST' })
    t.equal(res.status, 200, path)
  }
  const st = (await (await s.fetch('/api/status')).json()) as { pools: { backends: { address: string; state: string }[] }[] }
  t.same(st.pools[0]?.backends.map((b) => b.state), ['up', 'disabled'])
  t.same(await greetings(s.port('l'), 4), ['a', 'a', 'a', 'a'], 'a disabled backend takes nothing')
  const last = (await (await s.fetch(`/api/pools/p/backends/${encodeURIComponent(v6.address)}/disable`, { method: 'POST' })).json()) as Done
  t.equal(last.previous_state, 'disabled', 'disabling a disabled backend is a no-op that says so')
})

t.test('drain state survives a reload that keeps the backend', async (t) => {
  const a = await namedBackend(t, 'a')
  const b = await namedBackend(t, 'b')
  const s = await startWithAdmin(t, adminYaml([a.address, b.address]))
  await s.fetch(`/api/pools/p/backends/${encodeURIComponent(a.address)}/drain`, { method: 'POST' })
  s.write(adminYaml([a.address, b.address, '127.0.0.1:9']))
  t.equal((await s.fetch('/api/reload', { method: 'POST' })).status, 200)
  t.same(s.daemon.pools.get('p')?.backends.map((x) => x.state), ['draining', 'up', 'up'])
})

t.test('enable returns a backend to what its health says: down while its check fails', async (t) => {
  const a = await namedBackend(t, 'a')
  const { deadPort } = await import('../helpers/net.js')
  const dead = `127.0.0.1:${await deadPort()}`
  const s = await startWithAdmin(t, adminYaml([a.address, dead]).replace('algorithm: round-robin,', 'algorithm: round-robin, health_check: { type: tcp, interval: 1s, timeout: 500ms, rise: 1, fall: 1 },'))
  t.equal(s.daemon.pools.get('p')?.find(dead)?.state, 'down', 'the first check failed')
  await s.fetch(`/api/pools/p/backends/${encodeURIComponent(dead)}/disable`, { method: 'POST' })
  const en = (await (await s.fetch(`/api/pools/p/backends/${encodeURIComponent(dead)}/enable`, { method: 'POST' })).json()) as Done
  t.same([en.previous_state, en.backend.state], ['disabled', 'down'])
  const up = (await (await s.fetch(`/api/pools/p/backends/${encodeURIComponent(a.address)}/enable`, { method: 'POST' })).json()) as Done
  t.same([up.previous_state, up.backend.state], ['up', 'up'])
})
