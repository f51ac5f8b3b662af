/**
 * Does the control plane stall the data plane? An echo client measures round trips through
 * sluice while the admin API is flooded with /metrics and /api/status requests, with a pool
 * of 10,000 backends making each scrape large; with workers 1 and 2. Then, the flood still on,
 * round trips to the echo server directly: what the loaded machine costs without sluice.
 * Prints a table.
 *
 *   npx tsc -p tsconfig.bench.json && SLUICE_NODE=/path/to/node24 node dist-bench/bench/admin-stall.js
 *
 * The admin clients run in a worker thread of this process, so the echo client's event loop
 * is its own. STALL_FLOOD=shared runs them on the echo client's loop (as the first runs did):
 * the echo's round trips then also wait for the clients' 1.3 MB responses and their retries,
 * which can hold that loop for seconds, with or without sluice in between.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { connect, createServer, type AddressInfo, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const MAIN = new URL('../../dist/main.js', import.meta.url).pathname
const NODE = process.env.SLUICE_NODE ?? process.execPath
const BACKENDS = Number(process.env.STALL_BACKENDS ?? 10_000)
const SECONDS = Number(process.env.STALL_SECONDS ?? 5)
const ADMIN_CONCURRENCY = Number(process.env.STALL_ADMIN ?? 1000)
const FLOOD_THREAD = process.env.STALL_FLOOD !== 'shared'
/** `relay:` for sluice (unset: its default, auto: the native relay carries the echo once it is established). */
const RELAY = process.env.STALL_RELAY

/** The flood in a worker thread: runs until told to stop, then posts its counts. */
function floodInThread(admin: number, concurrency: number): { stop(): Promise<{ done: number; busy: number }> } {
  const w = new Worker(new URL(import.meta.url), { workerData: { admin, concurrency } })
  const result = new Promise<{ done: number; busy: number }>((resolve, reject) => {
    w.once('message', (m: { done: number; busy: number }) => resolve(m))
    w.once('error', reject)
  })
  return {
    stop: async () => {
      w.postMessage('stop')
      const r = await result
      await w.terminate()
      return r
    },
  }
}

async function freePort(): Promise<number> {
  const s = createServer()
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
  const { port } = s.address() as AddressInfo
  await new Promise<void>((r) => s.close(() => r()))
  return port
}

async function start(workers: number, echoPort: number, work: string): Promise<{ child: ChildProcess; port: number; admin: number }> {
  const port = await freePort()
  const admin = await freePort()
  const big = Array.from({ length: BACKENDS }, (_, i) => `"127.1.${(i >> 8) & 255}.${i & 255}:9"`).join(', ')
  const file = join(work, `stall-${workers}.yaml`)
  writeFileSync(file, `workers: ${workers}\n${RELAY !== undefined ? `relay: ${RELAY}\n` : ''}log: { level: warn, access_log: false }\nadmin: { listen: "127.0.0.1:${admin}" }\nlisteners: [{ name: echo, listen: "127.0.0.1:${port}", pool: echo }]\npools:\n  echo: { backends: ["127.0.0.1:${echoPort}"] }\n  big: { backends: [${big}] }\n`)
  const child = spawn(NODE, [MAIN, 'run', '-c', file], { stdio: ['ignore', 'ignore', 'inherit'] })
  const deadline = Date.now() + 30_000
  for (;;) {
    try {
      const r = await fetch(`http://127.0.0.1:${admin}/readyz`)
      if (r.status === 200) break
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) throw new Error('sluice did not start')
    await new Promise((r) => setTimeout(r, 100))
  }
  return { child, port, admin }
}

/** Round trips of 1 byte on 4 connections for `seconds`; their latencies in ms. */
async function echoLatencies(port: number, seconds: number): Promise<number[]> {
  const out: number[] = []
  const end = Date.now() + seconds * 1000
  const one = async (): Promise<void> => {
    const s: Socket = await new Promise((resolve, reject) => {
      const c = connect({ port, host: '127.0.0.1' }, () => resolve(c))
      c.once('error', reject)
    })
    s.setNoDelay(true)
    while (Date.now() < end) {
      const t0 = performance.now()
      await new Promise<void>((resolve) => {
        s.once('data', () => resolve())
        s.write('x')
      })
      out.push(performance.now() - t0)
    }
    s.destroy()
  }
  await Promise.all([one(), one(), one(), one()])
  return out
}

/** Keeps `concurrency` admin requests in flight (alternating /metrics and /api/status) until `stop`. */
async function flood(admin: number, concurrency: number, stop: () => boolean): Promise<{ done: number; busy: number }> {
  let done = 0
  let busy = 0
  const loop = async (i: number): Promise<void> => {
    while (!stop()) {
      try {
        const r = await fetch(`http://127.0.0.1:${admin}${i % 2 === 0 ? '/metrics' : '/api/status'}`)
        await r.arrayBuffer()
        if (r.status === 503) busy++
        else done++
      } catch {
        // connection refused under overload: try again
      }
    }
  }
  await Promise.all(Array.from({ length: concurrency }, (_, i) => loop(i)))
  return { done, busy }
}

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor(s.length * p))] ?? 0
}

async function main(): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), 'sluice-stall-'))
  const echo = createServer((s) => s.pipe(s))
  await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r))
  const echoPort = (echo.address() as AddressInfo).port
  const rows: string[] = []
  for (const workers of [1, 2]) {
    const s = await start(workers, echoPort, work)
    try {
      const quiet = await echoLatencies(s.port, SECONDS)
      let stopping = false
      const inThread = FLOOD_THREAD ? floodInThread(s.admin, ADMIN_CONCURRENCY) : undefined
      const admin = inThread === undefined ? flood(s.admin, ADMIN_CONCURRENCY, () => stopping) : undefined
      const loaded = await echoLatencies(s.port, SECONDS)
      // The same flood, the echo server reached directly: what the machine alone costs.
      const direct = await echoLatencies(echoPort, SECONDS)
      stopping = true
      const a = inThread !== undefined ? await inThread.stop() : await admin!
      rows.push(`| ${workers} | ${pct(quiet, 0.5).toFixed(2)} | ${pct(quiet, 0.99).toFixed(2)} | ${pct(loaded, 0.5).toFixed(2)} | ${pct(loaded, 0.99).toFixed(2)} | ${pct(loaded, 0.999).toFixed(2)} | ${pct(direct, 0.99).toFixed(2)} | ${a.done} | ${a.busy} |`)
    } finally {
      s.child.kill('SIGKILL')
    }
  }
  echo.close()
  console.log(`Echo round trips through sluice (4 connections, ${SECONDS} s each), quiet and while ${ADMIN_CONCURRENCY} clients loop on /metrics and /api/status (${FLOOD_THREAD ? 'in a worker thread of their own' : 'on the echo client\'s event loop'}); relay: ${RELAY ?? 'default'}; ${BACKENDS} backends in another pool; Node ${NODE === process.execPath ? process.version : NODE}.\n`)
  console.log('| workers | quiet p50 ms | quiet p99 ms | loaded p50 ms | loaded p99 ms | loaded p99.9 ms | loaded p99, no sluice, ms | admin answers | admin 503s |')
  console.log('|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
  for (const r of rows) console.log(r)
}

if (isMainThread) {
  main().catch((err: unknown) => {
    console.error(err)
    process.exit(1)
  })
} else {
  const { admin, concurrency } = workerData as { admin: number; concurrency: number }
  let stopping = false
  parentPort?.once('message', () => (stopping = true))
  void flood(admin, concurrency, () => stopping).then((r) => parentPort?.postMessage(r))
}
