import t from 'tap'
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseConfig } from '../../src/config/load.js'
import { dial, namedBackend, readUntil } from '../helpers/net.js'
import { startSluice, tempFile } from '../helpers/spawn.js'
import { skipWithout } from '../helpers/tools.js'
import { reusePortAvailable } from '../../src/config/validate.js'

const CHROMIUM = '/usr/bin/chromium'
const TOKEN = 'dashboard-e2e-token'
const SCREENSHOT = join(tmpdir(), 'sluice-dashboard.png')

/** Whether this build has active health checks (another part of sluice); else the test drives the state through the API. */
function healthChecksAvailable(): boolean {
  try {
    parseConfig('listeners: [{ name: l, listen: "127.0.0.1:0", pool: p }]\npools:\n  p: { backends: [127.0.0.1:9], health_check: { type: tcp, interval: 1s } }\n', 'probe.yaml', {})
    return true
  } catch {
    return false
  }
}

t.test('the dashboard in a real browser: loads, shows a backend going down, drains one', async (t) => {
  if (skipWithout(t, { chromium: existsSync(CHROMIUM) ? CHROMIUM : undefined })) return
  const { chromium } = await import('playwright-core')
  const a = await namedBackend(t, 'a')
  const b = await namedBackend(t, 'b')
  const health = healthChecksAvailable()
  if (!health) t.comment('health checks are not in this build: the backend is taken down with POST .../disable instead of by a probe')
  const file = tempFile('dash.yaml', `
admin: { listen: "127.0.0.1:0", token: ${TOKEN} }
log: { level: info, access_log: false }
listeners: [{ name: web, listen: "127.0.0.1:0", pool: web }]
pools:
  web:
    algorithm: round-robin
    backends: [${a.address}, ${b.address}]
${health ? '    health_check: { type: tcp, interval: 100ms, timeout: 100ms, rise: 1, fall: 1 }' : ''}
`)
  const sluice = startSluice(t, file)
  const port = await sluice.port('web')
  const started = await sluice.waitFor((l) => l.msg === 'sluice started', 'start')
  const admin = `http://${String(started.admin)}`

  // Some traffic, and two connections that stay open (one per backend).
  const open = [await dial(port), await dial(port)]
  t.teardown(() => open.forEach((s) => s.destroy()))
  for (const s of open) await readUntil(s, 'line')
  for (const s of open) {
    s.write('x'.repeat(64 * 1024) + '\n')
    await readUntil(s, 64 * 1024)
  }

  const profile = mkdtempSync(join(tmpdir(), 'sluice-chromium-'))
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 800 },
  })
  t.teardown(async () => {
    await context.close()
    rmSync(profile, { recursive: true, force: true })
  })
  const page = context.pages()[0] ?? (await context.newPage())
  const errors: string[] = []
  page.on('pageerror', (e) => errors.push(e.message))
  page.on('console', (m) => {
    if (m.type() === 'error' && !/401/.test(m.text())) errors.push(m.text())
  })

  const res = await page.goto(admin + '/')
  t.equal(res?.status(), 401, 'without the token the page comes with 401 ...')
  await page.locator('#notice.error').waitFor()
  t.match(await page.locator('#notice').textContent(), /needs its admin token/, '... and asks for the token')
  await page.fill('#token', TOKEN)
  await page.click('#token-form button')
  const row = (addr: string, state: string): string => `tr[data-backend="${addr}"][data-state="${state}"]`
  await page.locator(row(a.address, 'up')).waitFor({ timeout: 10_000 })
  await page.locator(row(b.address, 'up')).waitFor({ timeout: 10_000 })
  t.equal(await page.locator('tr[data-listener="web"] td').nth(2).textContent(), `127.0.0.1:${port}`, 'the listener and its bound address')
  t.equal(await page.locator('#sum-up').textContent(), '2 / 2')
  t.equal(await page.locator('#sum-active').textContent(), '2', 'two active connections')
  t.match(await page.locator('#meta').textContent(), / · 1 worker: #1 2 open \/ \d+$/, 'the header names the one worker and its open connections')
  t.equal(await page.evaluate("sessionStorage.getItem('sluice-admin-token')"), TOKEN, 'the token is kept in sessionStorage')

  // Traffic while the page watches: the throughput figure and chart move.
  let pumping = true
  const pump = (async (): Promise<void> => {
    const s = open[0]!
    for (let i = 0; pumping && i < 20_000; i++) {
      s.write(Buffer.alloc(64 * 1024, 'y'))
      await readUntil(s, 64 * 1024)
    }
  })()
  await page.locator('#sum-bytes').filter({ hasNotText: /^0 B\/s$/ }).waitFor({ timeout: 15_000 })
  pumping = false
  await pump
  t.match(await page.locator('#sum-bytes').textContent(), /^[\d.]+ (B|KiB|MiB|GiB)\/s$/, 'throughput shown')
  t.notMatch(await page.locator('#sum-bytes').textContent(), /^0 B\/s$/, 'throughput is not zero under traffic')

  // A backend goes down.
  if (health) {
    b.server.close()
    for (const s of b.sockets) s.destroy()
  } else {
    const r = await fetch(`${admin}/api/pools/web/backends/${encodeURIComponent(b.address)}/disable`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` } })
    t.equal(r.status, 200)
  }
  const downState = health ? 'down' : 'disabled'
  await page.locator(row(b.address, downState)).waitFor({ timeout: 10_000 })
  t.equal(await page.locator(`${row(b.address, downState)} .state`).textContent(), downState, `the page shows ${b.address} ${downState}`)
  await page.locator('#sum-up').filter({ hasText: '1 / 2' }).waitFor()

  // The drain button drains a.
  await page.click(`${row(a.address, 'up')} button[data-action="drain"]`)
  await page.locator(row(a.address, 'draining')).waitFor({ timeout: 10_000 })
  const status = (await (await fetch(`${admin}/api/status`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()) as { pools: { backends: { address: string; state: string; active_connections: number }[] }[] }
  const drained = status.pools[0]?.backends.find((x) => x.address === a.address)
  t.equal(drained?.state, 'draining', 'the API agrees: draining')
  t.equal(drained?.active_connections, 1, 'its open connection is untouched')
  t.match(await page.locator('#notice').textContent(), new RegExp(`${a.address.replace(/\./g, '\\.')} in pool web: up → draining`))
  t.equal(await page.locator(`${row(a.address, 'draining')} button[data-action="drain"]`).isDisabled(), true, 'drain is greyed out once draining')

  // The charts have drawn (at least two polls: a polyline per series).
  await page.locator('#chart-active polyline').waitFor({ timeout: 10_000 })
  t.ok(await page.locator('svg.spark polyline').count() >= 3, 'per-listener and per-backend sparklines are drawn')
  await page.screenshot({ path: SCREENSHOT, fullPage: true })
  t.comment(`screenshot: ${SCREENSHOT}`)
  t.same(errors, [], 'no script errors on the page')
  sluice.signal('SIGTERM')
  open.forEach((s) => s.destroy())
  t.equal((await sluice.exited).code, 0)
})

t.test('the dashboard with workers: 2 lists each worker in its header', { skip: reusePortAvailable() ? false : `workers above 1 need Node.js 22.12+ (reusePort); this is ${process.version}` }, async (t) => {
  if (skipWithout(t, { chromium: existsSync(CHROMIUM) ? CHROMIUM : undefined })) return
  const { chromium } = await import('playwright-core')
  const a = await namedBackend(t, 'a')
  const file = tempFile('dash2.yaml', `
workers: 2
admin: { listen: "127.0.0.1:0" }
log: { level: info, access_log: false }
listeners: [{ name: web, listen: "127.0.0.1:0", pool: web }]
pools:
  web: { backends: [${a.address}] }
`)
  const sluice = startSluice(t, file)
  const port = await sluice.port('web')
  const started = await sluice.waitFor((l) => l.msg === 'sluice started', 'start')
  const admin = `http://${String(started.admin)}`
  // Held connections until both workers have some (the kernel spreads them; 40 at most).
  const open: Awaited<ReturnType<typeof dial>>[] = []
  t.teardown(() => open.forEach((s) => s.destroy()))
  type Workers = { workers: { id: number; active_connections: number }[] }
  const perWorker = async (): Promise<number[]> => ((await (await fetch(`${admin}/api/status`)).json()) as Workers).workers.map((w) => w.active_connections)
  while (open.length < 40 && !(await perWorker()).every((n) => n > 0)) {
    const s = await dial(port)
    await readUntil(s, 'line')
    open.push(s)
  }
  const shares = await perWorker()
  t.ok(shares.length === 2 && shares.every((n) => n > 0), `both workers hold connections (${shares.join(' + ')})`)

  const profile = mkdtempSync(join(tmpdir(), 'sluice-chromium-'))
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  })
  t.teardown(async () => {
    await context.close()
    rmSync(profile, { recursive: true, force: true })
  })
  const page = context.pages()[0] ?? (await context.newPage())
  await page.goto(admin + '/')
  await page.locator('#meta').filter({ hasText: / · 2 workers: #1 / }).waitFor({ timeout: 10_000 })
  const meta = (await page.locator('#meta').textContent()) ?? ''
  const listed = [...meta.matchAll(/#(\d+) (\d+) open \/ (\d+)/g)].map((m) => ({ id: Number(m[1]), open: Number(m[2]), total: Number(m[3]) }))
  t.same(listed.map((w) => w.id), [1, 2], `the header lists workers 1 and 2: ${meta}`)
  t.same(listed.map((w) => w.open), shares, 'with the open connections of each')
  t.equal(listed.reduce((n, w) => n + w.total, 0), open.length, 'and connection totals that add up to those made')
  sluice.signal('SIGTERM')
  open.forEach((s) => s.destroy())
  t.equal((await sluice.exited).code, 0)
})
