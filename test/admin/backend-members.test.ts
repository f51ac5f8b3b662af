import t from 'tap'
import { dial, eventually, greeting, namedBackend, readUntil, deadPort } from '../helpers/net.js'
import { metricValue } from '../helpers/udp.js'
import { startWithAdmin } from './helpers.js'

interface Reply {
  address: string
  state: string
  weight: number
  backup: boolean
  max_connections: number
  active_connections: number
  pool: string
  added?: boolean
  error?: { code: string; message: string }
}

function yaml(backends: string[], extra = ''): string {
  return `
admin: { listen: "127.0.0.1:0" }
log: { level: info, access_log: false }
listeners: [{ name: l, listen: "127.0.0.1:0", pool: p }]
pools:
  p:
    algorithm: round-robin
    backends: [${backends.map((b) => JSON.stringify(b)).join(', ')}]
${extra}
`
}

async function spread(port: number, n: number): Promise<Set<string>> {
  const seen = new Set<string>()
  for (let i = 0; i < n; i++) seen.add(await greeting(port))
  return seen
}

t.test('PUT adds a backend that takes traffic after its check passes; DELETE drains with its connection still echoing', async (t) => {
  const a = await namedBackend(t, 'a')
  const b = await namedBackend(t, 'b')
  const s = await startWithAdmin(t, yaml([a.address], '    health_check: { type: tcp, interval: 200ms, timeout: 200ms, rise: 1, fall: 1 }'))
  const port = s.port('l')
  const put = (addr: string, body: unknown): Promise<Response> => fetch(`${s.url}/api/pools/p/backends/${encodeURIComponent(addr)}`, { method: 'PUT', body: JSON.stringify(body) })

  const r = await put(b.address, { weight: 2 })
  t.equal(r.status, 201, 'a new backend is 201')
  const added = (await r.json()) as Reply
  t.same([added.address, added.weight, added.added, added.pool], [b.address, 2, true, 'p'])
  t.equal(added.state, 'down', 'a backend added with health checks waits for its first check')
  await eventually(() => s.daemon.pools.get('p')!.find(b.address)?.state === 'up', 'its check passes')
  t.same(await spread(port, 6), new Set(['a', 'b']), 'then it takes traffic')

  // A PUT to an address that is there changes only the settings given.
  const upd = (await (await put(b.address, { max_connections: 7 })).json()) as Reply
  t.same([upd.weight, upd.max_connections, upd.added], [2, 7, false], 'settings changed, weight kept')

  // A connection open on a, then DELETE a.
  let open = await dial(port)
  while ((await readUntil(open, 'line')).toString() !== 'a\n') {
    open.destroy()
    open = await dial(port)
  }
  t.teardown(() => open.destroy())
  const del = await fetch(`${s.url}/api/pools/p/backends/${encodeURIComponent(a.address)}`, { method: 'DELETE' })
  t.equal(del.status, 200)
  const gone = (await del.json()) as Reply
  t.same([gone.address, gone.state, gone.active_connections], [a.address, 'draining', 1], 'DELETE answers with the backend draining its open connection')
  t.same(await spread(port, 6), new Set(['b']), 'no new connection goes to the removed backend')
  open.write('still echoing\n')
  t.equal((await readUntil(open, 'line')).toString(), 'still echoing\n', 'the open connection on the removed backend still echoes')
  const st = (await (await s.fetch('/api/status')).json()) as { pools: { backends: { address: string; state: string }[] }[] }
  t.same(st.pools[0]?.backends.map((x) => [x.address, x.state]), [[b.address, 'up'], [a.address, 'draining']], '/api/status lists it as draining')
  open.destroy()
  await eventually(async () => {
    const now = (await (await s.fetch('/api/status')).json()) as { pools: { backends: { address: string }[] }[] }
    return now.pools[0]?.backends.length === 1
  }, 'it leaves the status once its last connection ended')

  // A reload keeps run-time changes: a is still removed, b still there.
  const reload = await s.fetch('/api/reload', { method: 'POST' })
  t.equal(reload.status, 200)
  t.same(s.daemon.pools.get('p')!.backends.map((x) => x.id), [b.address], 'a reload keeps what PUT and DELETE did')
  t.same(await spread(port, 4), new Set(['b']))
  // PUT brings a back, at its configured settings.
  t.equal((await put(a.address, {})).status, 201)
  await eventually(() => s.daemon.pools.get('p')!.find(a.address)?.state === 'up', 'a is back and checked')

  const m = await s.metrics()
  t.ok(metricValue(m, 'sluice_membership_changes_total', { pool: 'p', source: 'admin' }) >= 4, 'each run-time change is counted')
  t.ok(s.logs.lines.some((l) => l.source === 'admin' && Array.isArray(l.removed) && (l.removed as string[]).includes(a.address)), 'and logged with what was removed')
})

t.test('bad input: 4xx with {error: {code, message}}, nothing changed', async (t) => {
  const a = await namedBackend(t, 'a')
  const s = await startWithAdmin(t, yaml([a.address]))
  const dead = `127.0.0.1:${await deadPort()}`
  const cases: [string, string, string | undefined, number, string][] = [
    ['PUT', `/api/pools/nope/backends/${dead}`, '{}', 404, 'SLUICE_ERR_ADMIN_NOT_FOUND'],
    ['PUT', `/api/pools/p/backends/not-an-address`, '{}', 400, 'SLUICE_ERR_ADMIN_REQUEST'],
    ['PUT', `/api/pools/p/backends/${dead}`, '{"weight": 0}', 400, 'SLUICE_ERR_ADMIN_REQUEST'],
    ['PUT', `/api/pools/p/backends/${dead}`, '{"wieght": 2}', 400, 'SLUICE_ERR_ADMIN_REQUEST'],
    ['PUT', `/api/pools/p/backends/${dead}`, '[1]', 400, 'SLUICE_ERR_ADMIN_REQUEST'],
    ['PUT', `/api/pools/p/backends/${dead}`, 'weight=2', 400, 'SLUICE_ERR_ADMIN_REQUEST'],
    ['DELETE', `/api/pools/p/backends/${dead}`, undefined, 404, 'SLUICE_ERR_ADMIN_NOT_FOUND'],
    ['PATCH', `/api/pools/p/backends/${dead}`, undefined, 405, 'SLUICE_ERR_ADMIN_REQUEST'],
  ]
  for (const [method, path, body, status, code] of cases) {
    const r = await fetch(s.url + path, { method, ...(body !== undefined ? { body } : {}) })
    const j = (await r.json()) as Reply
    t.same([r.status, j.error?.code], [status, code], `${method} ${path} ${body ?? ''}`)
    t.ok((j.error?.message ?? '').length > 10, 'with a message')
  }
  t.same(s.daemon.pools.get('p')!.backends.map((x) => x.id), [a.address], 'nothing changed')
})
