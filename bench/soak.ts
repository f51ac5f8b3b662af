/**
 * Soak: many concurrent connections with churn through sluice for a bounded time. Every
 * connection sends random bytes in a few rounds and checks each echo byte for byte; at the
 * end sluice's descriptors and RSS must be back at their starting level. Prints a table and
 * exits 1 when a byte was lost or changed, a connection failed, or descriptors did not come
 * back (RSS is reported: V8 keeps some of the heap it grew).
 *
 *   npm run soak                                   # 10,000 connections, 3 minutes
 *   SOAK_CONNECTIONS=2000 SOAK_SECONDS=45 npm run soak   # the short run of .ci/run
 *
 * SOAK_RAMP_SECONDS (20) spreads the first connections out. SOAK_RELAY=js|native|auto (default auto); SOAK_ACCESS_LOG=1 and SOAK_LOG=info let sluice's
 * access log and info lines through (to stdout), to find out why a connection failed. Clients run in this process, the echo backends
 * in a child process, sluice in another: each side holds one descriptor per connection,
 * sluice two. The open-files limit is raised with prlimit(1) where allowed (CAP_SYS_RESOURCE, or a hard
 * limit high enough); when it cannot be, the run says so and lowers SOAK_CONNECTIONS to fit.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs'
import { connect, createServer, type AddressInfo, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { openFilesLimit } from '../src/fd-budget.js'

const MAIN = new URL('../../dist/main.js', import.meta.url).pathname
const SELF = fileURLToPath(import.meta.url)
const WANT = Number(process.env.SOAK_CONNECTIONS ?? 10_000)
const SECONDS = Number(process.env.SOAK_SECONDS ?? 180)
const RELAY = process.env.SOAK_RELAY ?? 'auto'
/** Connections open gradually over this long, so the ramp does not overflow the listen backlog. */
const RAMP_SECONDS = Number(process.env.SOAK_RAMP_SECONDS ?? 20)
const BACKENDS = 4
/** Per round, a client sends this many bytes at most (random size from 1). */
const MAX_ROUND = 8 * 1024
const POOL = randomBytes(1024 * 1024)

// ---------------------------------------------------------------------------------------
// The backend process: BACKENDS echo servers; prints their ports as one JSON line.
if (process.argv[2] === '--backends') {
  const ports: number[] = []
  for (let i = 0; i < BACKENDS; i++) {
    const s = createServer((c) => {
      c.on('error', () => {})
      c.pipe(c)
    })
    s.maxConnections = 1_000_000
    await new Promise<void>((r) => s.listen({ port: 0, host: '127.0.0.1', backlog: 4096 }, r))
    ports.push((s.address() as AddressInfo).port)
  }
  console.log(JSON.stringify(ports))
  process.on('disconnect', () => process.exit(0))
  await new Promise(() => {})
}

// ---------------------------------------------------------------------------------------

/** Raises this process's open-files limit (children inherit it); the limit in force after. */
function raiseLimit(want: number): { limit: number; note: string } {
  const before = openFilesLimit() ?? 1024
  if (before >= want) return { limit: before, note: `open-files limit ${before}` }
  try {
    execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${want}:${want}`], { stdio: 'ignore' })
  } catch {
    // No CAP_SYS_RESOURCE and the hard limit is lower: run with what there is.
  }
  const after = openFilesLimit() ?? before
  return { limit: after, note: after >= want ? `open-files limit raised from ${before} to ${after} (prlimit)` : `open-files limit ${after}: could not raise it to ${want} (raising the hard limit needs CAP_SYS_RESOURCE, which this process lacks)` }
}

function fdCount(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length
}

function rssMiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  return m === null ? NaN : Number(m[1]) / 1024
}

async function waitFor(what: string, pred: () => boolean | Promise<boolean>, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    if (await pred()) return true
    await new Promise((r) => setTimeout(r, 100))
  }
  console.error(`soak: ${what}: not within ${ms} ms`)
  return false
}

async function freePort(): Promise<number> {
  const s = createServer()
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
  const { port } = s.address() as AddressInfo
  await new Promise<void>((r) => s.close(() => r()))
  return port
}

const need = 2 * WANT + 200
const { limit, note } = raiseLimit(need)
// sluice holds two descriptors per connection, plus its own (about 40) and its reserve.
const connections = Math.min(WANT, Math.floor((limit - 200) / 2))
console.log(`soak: ${note}; ${connections} concurrent connections${connections < WANT ? ` (not ${WANT}: the limit is too low)` : ''}, ${SECONDS}s, relay ${RELAY}`)

const backendProc = spawn(process.execPath, [SELF, '--backends'], { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] })
const ports = await new Promise<number[]>((resolve, reject) => {
  backendProc.stdout?.once('data', (d: Buffer) => resolve(JSON.parse(d.toString()) as number[]))
  backendProc.once('exit', () => reject(new Error('the backend process exited')))
})

const port = await freePort()
const admin = await freePort()
const work = mkdtempSync(join(tmpdir(), 'sluice-soak-'))
const file = join(work, 'soak.yaml')
writeFileSync(
  file,
  `relay: ${RELAY}
log: { level: ${process.env.SOAK_LOG ?? 'warn'}, access_log: ${process.env.SOAK_ACCESS_LOG === '1'} }
admin: { listen: "127.0.0.1:${admin}" }
listeners:
  - { name: soak, listen: "127.0.0.1:${port}", pool: echo, max_connections: ${connections + 100} }
pools:
  echo:
    algorithm: least-connections
    backends: [${ports.map((p) => `"127.0.0.1:${p}"`).join(', ')}]
`,
)
const sluice: ChildProcess = spawn(process.execPath, [MAIN, 'run', '-c', file], { stdio: ['ignore', 'inherit', 'inherit'] })
const stopAll = (): void => {
  sluice.kill('SIGKILL')
  backendProc.kill('SIGKILL')
}
process.on('exit', stopAll)
if (!(await waitFor('sluice ready', async () => (await fetch(`http://127.0.0.1:${admin}/readyz`).catch(() => undefined))?.status === 200, 30_000))) process.exit(1)
const pid = sluice.pid as number
const start = { fds: fdCount(pid), rss: rssMiB(pid) }

const stats = { opened: 0, closed: 0, bytesSent: 0, bytesEchoed: 0, mismatches: 0, errors: new Map<string, number>(), live: 0, peakLive: 0 }
let peak = { fds: start.fds, rss: start.rss }
const endAt = Date.now() + SECONDS * 1000

function failed(kind: string): void {
  stats.errors.set(kind, (stats.errors.get(kind) ?? 0) + 1)
}

/** One connection: 1-5 rounds of send-and-check-echo with a pause between, then a clean close. */
function oneConnection(): Promise<void> {
  return new Promise((resolve) => {
    const s: Socket = connect({ port, host: '127.0.0.1' })
    stats.opened++
    stats.live++
    stats.peakLive = Math.max(stats.peakLive, stats.live)
    let rounds = 1 + Math.floor(Math.random() * 5)
    let expect: Buffer | undefined
    let got = 0
    let done = false
    let echoed = false
    // No progress for this long: a stalled connection, counted as failed (the run never hangs).
    s.setTimeout(30_000)
    s.on('timeout', () => finish('stalled (30 s without progress)'))
    const finish = (kind?: string): void => {
      if (done) return
      done = true
      stats.live--
      if (kind !== undefined) {
        // Before any echo the bytes never reached a backend (the connect or the accept failed).
        failed(`${kind} ${echoed ? 'mid-stream' : 'before the first echo'}`)
        s.destroy()
      }
      resolve()
    }
    const round = (): void => {
      if (rounds-- === 0 || Date.now() > endAt) {
        s.end()
        return
      }
      const size = 1 + Math.floor(Math.random() * MAX_ROUND)
      const at = Math.floor(Math.random() * (POOL.length - size))
      expect = POOL.subarray(at, at + size)
      got = 0
      stats.bytesSent += size
      s.write(expect)
    }
    s.on('connect', round)
    s.on('data', (d: Buffer) => {
      if (expect === undefined || got + d.length > expect.length) {
        stats.mismatches++
        finish('unexpected bytes')
        return
      }
      if (!d.equals(expect.subarray(got, got + d.length))) {
        stats.mismatches++
        finish('changed bytes')
        return
      }
      got += d.length
      echoed = true
      stats.bytesEchoed += d.length
      if (got === expect.length) {
        expect = undefined
        // The workload's think time between requests, not a synchronisation.
        setTimeout(round, Math.random() * 1000)
      }
    })
    s.on('error', (err: NodeJS.ErrnoException) => finish(err.code ?? 'error'))
    s.on('close', () => {
      stats.closed++
      if (expect !== undefined) finish('closed with bytes outstanding')
      else finish()
    })
  })
}

async function slot(): Promise<void> {
  while (Date.now() < endAt) await oneConnection()
}

// Ramp up to `connections` over RAMP_SECONDS, then keep them all busy with churn.
const ticker = setInterval(() => {
  peak = { fds: Math.max(peak.fds, fdCount(pid)), rss: Math.max(peak.rss, rssMiB(pid)) }
}, 500)
const slots: Promise<void>[] = []
const step = Math.max(1, Math.ceil(connections / 100))
for (let i = 0; i < connections; i += step) {
  for (let j = i; j < Math.min(connections, i + step); j++) slots.push(slot())
  await new Promise((r) => setTimeout(r, (RAMP_SECONDS * 1000) / 100))
}
await Promise.all(slots)
clearInterval(ticker)

const fdsBack = await waitFor('descriptors back to their starting level', () => fdCount(pid) <= start.fds, 30_000)
const end = { fds: fdCount(pid), rss: rssMiB(pid) }
const metrics = await (await fetch(`http://127.0.0.1:${admin}/metrics`)).text()
const active = Number(/^sluice_connections_active\{listener="soak"\} (\d+)/m.exec(metrics)?.[1] ?? NaN)

const row = (k: string, v: string | number): string => `| ${k.padEnd(40)} | ${String(v).padStart(16)} |`
console.log(`\n| ${'soak'.padEnd(40)} | ${'value'.padStart(16)} |\n|${'-'.repeat(42)}|${'-'.repeat(18)}|`)
console.log(row('concurrent connections (peak)', stats.peakLive))
console.log(row('connections opened', stats.opened))
console.log(row('bytes sent', stats.bytesSent))
console.log(row('bytes echoed and checked', stats.bytesEchoed))
console.log(row('bytes lost', stats.bytesSent - stats.bytesEchoed))
console.log(row('connections failed', [...stats.errors.values()].reduce((a, b) => a + b, 0)))
console.log(row('sluice descriptors start / peak / end', `${start.fds} / ${peak.fds} / ${end.fds}`))
console.log(row('sluice RSS MiB start / peak / end', `${start.rss.toFixed(0)} / ${peak.rss.toFixed(0)} / ${end.rss.toFixed(0)}`))
console.log(row('sluice_connections_active at the end', active))
for (const [k, v] of stats.errors) console.log(row(`  failed: ${k}`, v))

const lost = stats.bytesSent - stats.bytesEchoed
const ok = lost === 0 && stats.errors.size === 0 && stats.mismatches === 0 && fdsBack && active === 0
console.log(ok ? '\nsoak: ok' : '\nsoak: FAILED (bytes lost, a connection failed, or descriptors did not come back)')
stopAll()
process.exit(ok ? 0 : 1)
