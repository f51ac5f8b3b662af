import t from 'tap'
import { backend, eventually, namedBackend } from '../helpers/net.js'
import { MAX_IN_FLIGHT } from '../../src/admin/admin-server.js'
import { startWithAdmin } from './helpers.js'

t.test(`the admin API answers ${MAX_IN_FLIGHT} requests at a time; more get 503 with Retry-After, /healthz always answers`, async (t) => {
  const a = await namedBackend(t, 'a')
  // Accepts and never answers: a reload that adds it waits for its first redis check.
  const silent = await backend(t, () => {})
  const yaml = (backends: string, check = ''): string => `
admin: { listen: "127.0.0.1:0" }
log: { level: info, access_log: false }
listeners: [{ name: l, listen: "127.0.0.1:0", pool: p }]
pools:
  p: { backends: [${backends}]${check} }
`
  const s = await startWithAdmin(t, yaml(`"${a.address}"`))
  s.write(yaml(`"${a.address}", "${silent.address}"`, ', health_check: { type: redis, interval: 10s, timeout: 3s }'))
  // Reloads run one at a time and each waits for the silent backend's first probe: they stay in flight.
  const reloads = Array.from({ length: MAX_IN_FLIGHT }, () => s.fetch('/api/reload', { method: 'POST' }))
  let busy: Response | undefined
  await eventually(async () => {
    const r = await s.fetch('/api/status')
    if (r.status === 503) busy = r
    else await r.arrayBuffer()
    return busy !== undefined
  }, 'a request beyond the bound to be refused', 10_000)
  t.equal(busy?.status, 503)
  t.equal(busy?.headers.get('retry-after'), '1')
  t.equal(((await busy!.json()) as { error: { code: string } }).error.code, 'SLUICE_ERR_ADMIN_BUSY')
  const h = await s.fetch('/healthz')
  t.equal(h.status, 200, '/healthz is never refused')
  await s.logs.waitFor((l) => l.code === 'SLUICE_ERR_ADMIN_BUSY')
  const done = await Promise.all(reloads)
  t.ok(done.every((r) => r.status === 200), 'the requests in flight all completed')
  const after = await s.fetch('/api/status')
  t.equal(after.status, 200, 'below the bound again, requests are answered')
})
