import t from 'tap'
import { namedBackend } from '../helpers/net.js'
import { adminYaml, startWithAdmin } from './helpers.js'

interface Status {
  ready: boolean
  admin: { listen: string; token_required: boolean }
  listeners: { name: string; protocol: string; listen: string; pool: string; active_connections: number }[]
  pools: { name: string; algorithm: string; listeners: string[]; backends: { address: string; state: string; active_connections: number; total_connections: number }[] }[]
  totals: { backends: number; backends_up: number }
}

t.test('GET /api/status: listeners, pools, backends with state and counters', async (t) => {
  const a = await namedBackend(t, 'a')
  const s = await startWithAdmin(t, adminYaml([a.address, '[::1]:5432']))
  const res = await s.fetch('/api/status')
  t.equal(res.status, 200)
  t.match(res.headers.get('content-type'), /^application\/json/)
  const body = (await res.json()) as Status
  t.equal(body.ready, true)
  t.equal(body.admin.token_required, false)
  t.same(body.listeners.map((l) => [l.name, l.protocol, l.listen, l.pool]), [['l', 'tcp', `127.0.0.1:${s.port('l')}`, 'p']])
  const pool = body.pools[0]
  t.equal(pool?.name, 'p')
  t.equal(pool?.algorithm, 'round-robin')
  t.same(pool?.listeners, ['l'])
  t.same(pool?.backends.map((b) => [b.address, b.state, b.active_connections, b.total_connections]), [[a.address, 'up', 0, 0], ['[::1]:5432', 'up', 0, 0]])
  t.same(body.totals, { listeners: 1, pools: 1, backends: 2, backends_up: 2, active_connections: 0 })
})

t.test('GET /metrics: sluice metrics and process metrics in Prometheus text', async (t) => {
  const a = await namedBackend(t, 'a')
  const s = await startWithAdmin(t, adminYaml([a.address]))
  const res = await s.fetch('/metrics')
  t.equal(res.status, 200)
  t.match(res.headers.get('content-type'), /^text\/plain/)
  const text = await res.text()
  t.match(text, new RegExp(`sluice_backend_up\\{pool="p",backend="${a.address}"\\} 1`))
  t.match(text, /# TYPE sluice_config_reloads_total counter/)
  t.match(text, /process_cpu_seconds_total \d/, 'default process metrics')
  t.match(text, /nodejs_eventloop_lag_seconds /)
})

t.test('/healthz, /readyz, the dashboard, 404 and 405', async (t) => {
  const a = await namedBackend(t, 'a')
  const s = await startWithAdmin(t, adminYaml([a.address]))
  const h = await s.fetch('/healthz')
  t.equal(h.status, 200)
  t.equal(await h.text(), 'ok\n')
  const r = await s.fetch('/readyz')
  t.equal(r.status, 200)
  t.equal(await r.text(), 'ready\n')
  const page = await s.fetch('/')
  t.equal(page.status, 200)
  t.match(page.headers.get('content-type'), /^text\/html/)
  const html = await page.text()
  t.match(html, /<title>sluice dashboard<\/title>/)
  t.notMatch(html, /<script[^>]+src=|<link[^>]+href=/, 'self-contained: no external scripts or styles')
  const nf = await s.fetch('/api/nope')
  t.equal(nf.status, 404)
  t.same(((await nf.json()) as { error: { code: string } }).error.code, 'SLUICE_ERR_ADMIN_NOT_FOUND')
  const wrong = await s.fetch('/api/status', { method: 'POST' })
  t.equal(wrong.status, 405)
  t.equal(wrong.headers.get('allow'), 'GET, HEAD')
  const wrong2 = await s.fetch('/api/reload')
  t.equal(wrong2.status, 405)
  t.equal(wrong2.headers.get('allow'), 'POST')
  const badAction = await s.fetch(`/api/pools/p/backends/${encodeURIComponent(a.address)}/explode`, { method: 'POST' })
  t.equal(badAction.status, 404)
  const badPool = await s.fetch(`/api/pools/nope/backends/${encodeURIComponent(a.address)}/drain`, { method: 'POST' })
  t.equal(badPool.status, 404)
  t.match(((await badPool.json()) as { error: { message: string } }).error.message, /no pool "nope"; pools: p/)
  const badBackend = await s.fetch('/api/pools/p/backends/127.0.0.1%3A1/drain', { method: 'POST' })
  t.equal(badBackend.status, 404)
  t.match(((await badBackend.json()) as { error: { message: string } }).error.message, /has no backend 127\.0\.0\.1:1/)
  const badEncoding = await s.fetch('/api/pools/p/backends/%E0%A4%A/drain', { method: 'POST' })
  t.equal(badEncoding.status, 400)
})

t.test('bearer token: required everywhere but /healthz, wrong one refused, right one accepted', async (t) => {
  const a = await namedBackend(t, 'a')
  const s = await startWithAdmin(t, adminYaml([a.address], '{ listen: "127.0.0.1:0", token: "s3cret-token" }'))
  for (const path of ['/api/status', '/metrics', '/readyz']) {
    const none = await s.fetch(path)
    t.equal(none.status, 401, `${path} without a token`)
    t.equal(none.headers.get('www-authenticate'), 'Bearer realm="sluice"')
    t.same(((await none.json()) as { error: { code: string } }).error.code, 'SLUICE_ERR_ADMIN_AUTH')
    t.equal((await s.fetch(path, { token: 'wrong' })).status, 401, `${path} with a wrong token`)
    t.equal((await s.fetch(path, { token: 's3cret-token-and-more' })).status, 401, `${path} with a longer token`)
    t.equal((await s.fetch(path, { headers: { authorization: 'Basic czNjcmV0LXRva2Vu' } })).status, 401, `${path} with Basic auth`)
    t.equal((await s.fetch(path, { token: 's3cret-token' })).status, 200, `${path} with the token`)
  }
  const drain = `/api/pools/p/backends/${encodeURIComponent(a.address)}/drain`
  t.equal((await s.fetch(drain, { method: 'POST' })).status, 401, 'drain without a token')
  t.equal(s.daemon.pools.get('p')?.backends[0]?.state, 'up', 'a refused drain changes nothing')
  t.equal((await s.fetch('/api/reload', { method: 'POST' })).status, 401, 'reload without a token')
  t.equal((await s.fetch('/healthz')).status, 200, '/healthz needs no token')
  const page = await s.fetch('/')
  t.equal(page.status, 401, 'the dashboard without a token: 401 ...')
  t.match(await page.text(), /id="token"/, '... with the page, to type the token in')
  t.equal((await s.fetch('/', { token: 's3cret-token' })).status, 200)
  const st = (await (await s.fetch('/api/status', { token: 's3cret-token' })).json()) as Status
  t.equal(st.admin.token_required, true)
  t.ok(s.logs.lines.some((l) => l.code === 'SLUICE_ERR_ADMIN_AUTH'), 'refusals are logged with their code')
})

t.test('the start-up log line shows the bound admin address', async (t) => {
  const a = await namedBackend(t, 'a')
  const s = await startWithAdmin(t, adminYaml([a.address]))
  const line = await s.logs.waitFor((l) => l.msg === 'sluice started')
  t.equal(line.admin, s.url.replace('http://', ''))
})

t.test('an admin port in use fails the start with SLUICE_ERR_ADMIN_LISTEN', async (t) => {
  const a = await namedBackend(t, 'a')
  const first = await startWithAdmin(t, adminYaml([a.address]))
  const port = first.daemon.adminAddress()?.port ?? 0
  await t.rejects(startWithAdmin(t, adminYaml([a.address], `{ listen: "127.0.0.1:${port}" }`)), { code: 'SLUICE_ERR_ADMIN_LISTEN', message: /the admin API cannot listen on 127\.0\.0\.1:\d+: address already in use/ })
})

t.test('stop: not ready any more, the admin API closes after the listeners, a stuck admin client does not hold the stop', async (t) => {
  const a = await namedBackend(t, 'a')
  const s = await startWithAdmin(t, adminYaml([a.address], '{ listen: "127.0.0.1:0" }', 'shutdown_timeout: 5s'))
  const { dial } = await import('../helpers/net.js')
  // A client that sends half a request and waits.
  const stuck = await dial(s.daemon.adminAddress()?.port ?? 0)
  t.teardown(() => stuck.destroy())
  stuck.write('GET /api/status HTTP/1.1\r\nHost: x\r\n')
  t.equal(s.daemon.ready, true)
  const started = Date.now()
  const stopping = s.daemon.stop()
  t.equal(s.daemon.ready, false, 'not ready once stopping')
  await stopping
  t.ok(Date.now() - started < 4000, `stopped in ${Date.now() - started}ms, not held by the admin client`)
  await t.rejects(fetch(`${s.url}/healthz`), 'the admin API is closed')
})
