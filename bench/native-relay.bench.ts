/**
 * The native relay by itself, against the plain Node pipe and HAProxy in the same run (the
 * method of BENCH.md): bulk throughput with iperf3 (Gbit/s, and Gbit per proxy CPU-second)
 * and resident memory per idle relayed connection. Each proxy is a process of its own, so
 * its CPU time and RSS are its alone; the load generator (this process, iperf3) is not
 * counted. Prints markdown tables of medians.
 *
 *   npx tsc -p tsconfig.bench.json && node dist-bench/bench/native-relay.bench.js
 *   BENCH_RUNS=3 BENCH_SECONDS=4 BENCH_IDLE=2000 BENCH_ONLY=rss node dist-bench/bench/native-relay.bench.js
 *   BENCH_ADDON=/path/to/sluice_relay.node ...   # another build of the addon
 *   BENCH_CANDIDATES=direct,haproxy,js,copy,splice ...   # some of them only
 *
 * Memory (as bench/compare.ts measures it): after a warm-up of 50 connections, each proxy holds
 * BENCH_IDLE idle connections (each proven by an echo), its RSS read (after a GC in Node) at
 * every quarter: the growth per connection, and the least-squares slope over those points,
 * which V8's heap resizing in steps of megabytes disturbs less. BENCH_IDLE up to 7900
 * (HAProxy's maxconn 8000; two descriptors per connection on each side of a 20,000 limit).
 *
 * The native figures are the relay's own: a proxy that accepts, connects and hands both
 * sockets over, holding nothing per connection in JS. A real session adds its own state.
 */
import { execFileSync, fork, spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { loadNativeRelay, type NativeRelay, type RelayMode } from '../src/proxy/native-relay.js'

const RUNS = Number(process.env.BENCH_RUNS ?? 3)
const SECONDS = Number(process.env.BENCH_SECONDS ?? 4)
const IDLE = Number(process.env.BENCH_IDLE ?? 4000)
const WARM = 50
const ONLY = process.env.BENCH_ONLY
const ADDON = process.env.BENCH_ADDON
const VERBOSE = process.env.BENCH_VERBOSE === '1'
const CHOSEN = process.env.BENCH_CANDIDATES?.split(',').map((c) => c.trim())
const chosen = <T extends string>(all: readonly T[]): T[] => all.filter((c) => CHOSEN === undefined || CHOSEN.includes(c))
const HOST = '127.0.0.1'
const SELF = fileURLToPath(import.meta.url)

type Kind = 'js' | RelayMode
const KINDS: readonly Kind[] = ['js', 'copy', 'splice']
const LABEL: Record<Kind | 'haproxy' | 'direct', string> = {
  direct: 'direct',
  haproxy: 'HAProxy (1 thread)',
  js: 'Node pipe()',
  copy: 'native, recv/send',
  splice: 'native, splice',
}

// ---- The proxy process -------------------------------------------------------------------

/** The messages between this process and a proxy process. */
type ToProxy = { op: 'measure' }
type FromProxy = { op: 'ready'; port: number } | { op: 'measured'; rss: number; held: number; heapKiB: number; usedKiB: number }

function isToProxy(m: unknown): m is ToProxy {
  return typeof m === 'object' && m !== null && (m as { op?: unknown }).op === 'measure'
}

/** A TCP proxy to host:port: Node streams piped both ways (js), or the native relay. */
function proxyMain(kind: Kind, target: number): void {
  const send = (m: FromProxy): void => {
    process.send?.(m)
  }
  let relay: NativeRelay | undefined
  let held = 0
  if (kind !== 'js') {
    const { addon, reason } = loadNativeRelay(ADDON)
    if (addon === undefined) throw new Error(`native relay unavailable: ${reason}`)
    relay = addon.create({ mode: kind, onEnd: () => {} })
  }
  const server: Server = createServer({ allowHalfOpen: true, pauseOnConnect: relay !== undefined, noDelay: true }, (c) => {
    c.on('error', () => c.destroy())
    const up = connect({ host: HOST, port: target, allowHalfOpen: true, noDelay: true })
    up.on('error', () => {
      up.destroy()
      c.destroy()
    })
    if (relay !== undefined) {
      const r = relay
      up.once('connect', () => r.adopt(c, up))
      return
    }
    held++
    c.once('close', () => {
      held--
      up.destroy()
    })
    up.once('close', () => c.destroy())
    c.pipe(up)
    up.pipe(c)
  })
  process.on('message', (m: unknown) => {
    if (!isToProxy(m)) return
    const gc = (globalThis as { gc?: () => void }).gc
    gc?.()
    gc?.()
    send({ op: 'measured', rss: rssKiB(process.pid), held: relay?.size ?? held, heapKiB: Math.round(process.memoryUsage().heapTotal / 1024), usedKiB: Math.round(process.memoryUsage().heapUsed / 1024) })
  })
  process.on('disconnect', () => process.exit(0))
  server.listen(0, HOST, () => send({ op: 'ready', port: (server.address() as AddressInfo).port }))
}

// ---- Measuring ---------------------------------------------------------------------------

function rssKiB(pid: number): number {
  return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0)
}

/** The anonymous part of a process's RSS (heaps; not the program's own pages), in KiB. */
function anonKiB(pid: number): number {
  return Number(/^Anonymous:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))?.[1] ?? 0)
}

const TICKS = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim() || 100)

/** CPU seconds (user + system, all threads) a process used so far. */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(f[11]) + Number(f[12])) / TICKS
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b)
  const m = Math.floor(s.length / 2)
  return s.length % 2 === 1 ? (s[m] ?? 0) : ((s[m - 1] ?? 0) + (s[m] ?? 0)) / 2
}

const children = new Set<ChildProcess>()
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL')
})

interface Proxy {
  port: number
  pid: number
  measure(): Promise<{ rss: number; held: number; heapKiB?: number; usedKiB?: number }>
  stop(): void
}

/** Starts a proxy process of this script; resolves once it listens. */
function startNodeProxy(kind: Kind, target: number): Promise<Proxy> {
  const child = fork(SELF, ['proxy', kind, String(target)], { execArgv: ['--expose-gc'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  children.add(child)
  const waiting: ((m: FromProxy) => void)[] = []
  child.on('message', (m: FromProxy) => waiting.shift()?.(m))
  const next = (): Promise<FromProxy> =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`proxy ${kind}: no answer within 30 s`)), 30_000)
      waiting.push((m) => {
        clearTimeout(timer)
        resolve(m)
      })
    })
  return next().then((ready) => {
    if (ready.op !== 'ready') throw new Error('proxy: unexpected message')
    return {
      port: ready.port,
      pid: child.pid ?? 0,
      measure: async () => {
        child.send({ op: 'measure' } satisfies ToProxy)
        const m = await next()
        if (m.op !== 'measured') throw new Error('proxy: unexpected message')
        return { rss: m.rss, held: m.held, heapKiB: m.heapKiB, usedKiB: m.usedKiB }
      },
      stop: () => {
        child.kill('SIGKILL')
        children.delete(child)
      },
    }
  })
}

async function freePort(): Promise<number> {
  const s = createServer()
  await new Promise<void>((r) => s.listen(0, HOST, r))
  const { port } = s.address() as AddressInfo
  await new Promise<void>((r) => s.close(() => r()))
  return port
}

/** Connects to port until it answers (bounded). */
async function waitPort(port: number, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect({ port, host: HOST }, () => {
        s.destroy()
        resolve(true)
      })
      s.on('error', () => resolve(false))
    })
    if (ok) return
    if (Date.now() > deadline) throw new Error(`nothing listening on ${port} after ${timeoutMs}ms`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

async function startHaproxy(target: number, dir: string): Promise<Proxy | undefined> {
  try {
    execFileSync('sh', ['-c', 'command -v haproxy'], { stdio: 'ignore' })
  } catch {
    return undefined
  }
  const port = await freePort()
  const cfg = join(dir, `haproxy-${port}.cfg`)
  writeFileSync(cfg, `global\n  nbthread 1\n  maxconn 8000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\nlisten l\n  bind ${HOST}:${port}\n  server s1 ${HOST}:${target}\n`)
  const child = spawn('haproxy', ['-f', cfg, '-db'], { stdio: ['ignore', 'ignore', 'inherit'] })
  children.add(child)
  await waitPort(port)
  const pid = child.pid ?? 0
  return {
    port,
    pid,
    measure: async () => ({ rss: rssKiB(pid), held: -1 }),
    stop: () => {
      child.kill('SIGKILL')
      children.delete(child)
    },
  }
}

/** One iperf3 run through port: Gbit/s received. A failed run (iperf3 busy, say) is retried once. */
function iperf(port: number, streams: number): number {
  try {
    return iperfOnce(port, streams)
  } catch {
    return iperfOnce(port, streams)
  }
}

function iperfOnce(port: number, streams: number): number {
  const out = execFileSync('iperf3', ['-c', HOST, '-p', String(port), '-t', String(SECONDS), '-P', String(streams), '-J'], { encoding: 'utf8', timeout: (SECONDS + 30) * 1000 })
  const j = JSON.parse(out) as { error?: string; end?: { sum_received?: { bits_per_second?: number } } }
  const bps = j.end?.sum_received?.bits_per_second
  if (j.error !== undefined || bps === undefined) throw new Error(`iperf3 through ${port}: ${j.error ?? 'no result'}`)
  return bps / 1e9
}

interface ThroughputRow {
  name: string
  streams: number
  gbps: number
  perCpu: number | undefined
}

async function throughput(dir: string): Promise<ThroughputRow[]> {
  const iperfPort = await freePort()
  const server = spawn('iperf3', ['-s', '-p', String(iperfPort)], { stdio: 'ignore' })
  children.add(server)
  await waitPort(iperfPort)
  const rows: ThroughputRow[] = []
  const candidates = chosen<Kind | 'haproxy' | 'direct'>(['direct', 'haproxy', ...KINDS])
  for (const streams of [1, 4]) {
    const results = new Map<string, { gbps: number[]; perCpu: number[] }>()
    // Candidates interleaved within each run, so a noisy moment hits all of them alike.
    for (let run = 0; run < RUNS; run++) {
      for (const c of candidates) {
        const proxy = c === 'direct' ? undefined : c === 'haproxy' ? await startHaproxy(iperfPort, dir) : await startNodeProxy(c, iperfPort)
        if (c === 'haproxy' && proxy === undefined) continue
        const cpu0 = proxy !== undefined ? cpuSeconds(proxy.pid) : 0
        const gbps = iperf(proxy?.port ?? iperfPort, streams)
        const cpu = proxy !== undefined ? cpuSeconds(proxy.pid) - cpu0 : 0
        proxy?.stop()
        const r = results.get(c) ?? { gbps: [], perCpu: [] }
        r.gbps.push(gbps)
        if (cpu > 0) r.perCpu.push((gbps * SECONDS) / cpu)
        results.set(c, r)
      }
    }
    for (const [c, r] of results) {
      rows.push({ name: LABEL[c as Kind | 'haproxy' | 'direct'], streams, gbps: median(r.gbps), perCpu: r.perCpu.length > 0 ? median(r.perCpu) : undefined })
    }
  }
  server.kill('SIGKILL')
  return rows
}

interface RssRow {
  name: string
  baseKiB: number
  /** (RSS holding them all - RSS after the warm-up) / BENCH_IDLE */
  perConn: number
  /** The least-squares slope of RSS over the connections held, at each quarter. */
  slope: number
  /** The anonymous part of perConn (heaps, without the program's code paged in). */
  anon: number
}

/** An echo backend: every relayed connection answers its one byte. */
async function echoBackend(): Promise<{ port: number; sockets: Set<Socket>; close(): void }> {
  const sockets = new Set<Socket>()
  const server = createServer({ allowHalfOpen: true }, (s) => {
    sockets.add(s)
    s.on('error', () => {})
    s.on('data', (d: Buffer) => s.write(d))
    s.once('end', () => s.end())
    s.once('close', () => sockets.delete(s))
  })
  await new Promise<void>((r) => server.listen(0, HOST, r))
  return {
    port: (server.address() as AddressInfo).port,
    sockets,
    close: () => {
      server.close()
      for (const s of sockets) s.destroy()
    },
  }
}

/** Opens n connections through port, each echoing one byte before it goes idle. */
async function openIdle(port: number, n: number, into: Socket[]): Promise<void> {
  const batch = 100
  for (let i = 0; i < n; i += batch) {
    await Promise.all(
      Array.from({ length: Math.min(batch, n - i) }, () =>
        new Promise<void>((resolve, reject) => {
          const s = connect({ host: HOST, port, allowHalfOpen: true })
          const timer = setTimeout(() => reject(new Error('no echo within 10 s')), 10_000)
          s.on('error', reject)
          s.once('connect', () => s.write('x'))
          s.once('data', () => {
            clearTimeout(timer)
            into.push(s)
            resolve()
          })
        }),
      ),
    )
  }
}

/** Waits until the proxy holds n connections (at most n with `atMost`; bounded), then measures it. */
async function settle(proxy: Proxy, n: number, atMost = false): Promise<number> {
  const deadline = Date.now() + 10_000
  for (;;) {
    const m = await proxy.measure()
    if (VERBOSE) console.log(`  pid ${proxy.pid}: ${m.held} held, RSS ${m.rss} KiB, V8 heap ${m.heapKiB ?? '-'} KiB (used ${m.usedKiB ?? '-'})`)
    if (m.held < 0 || (atMost ? m.held <= n : m.held >= n) || Date.now() > deadline) return m.rss
    await new Promise((r) => setTimeout(r, 20))
  }
}

/** Least-squares slope of y over x. */
function slope(xs: number[], ys: number[]): number {
  const n = xs.length
  const mx = xs.reduce((a, b) => a + b, 0) / n
  const my = ys.reduce((a, b) => a + b, 0) / n
  let num = 0
  let den = 0
  for (let i = 0; i < n; i++) {
    num += ((xs[i] ?? 0) - mx) * ((ys[i] ?? 0) - my)
    den += ((xs[i] ?? 0) - mx) ** 2
  }
  return den === 0 ? 0 : num / den
}

const STEPS = 4

/** One proxy process measured: RSS after a light warm-up, then at every quarter of BENCH_IDLE. */
async function memoryOnce(c: Kind | 'haproxy', dir: string): Promise<{ base: number; perConn: number; slope: number; anon: number } | undefined> {
  const backend = await echoBackend()
  const proxy = c === 'haproxy' ? await startHaproxy(backend.port, dir) : await startNodeProxy(c, backend.port)
  if (proxy === undefined) {
    backend.close()
    return undefined
  }
  const clients: Socket[] = []
  try {
    await openIdle(proxy.port, WARM, clients) // first connections, JIT, the relay thread
    const xs = [WARM]
    const ys = [await settle(proxy, WARM)]
    const anon0 = anonKiB(proxy.pid)
    for (let step = 1; step <= STEPS; step++) {
      const n = WARM + Math.round((IDLE * step) / STEPS)
      await openIdle(proxy.port, n - clients.length, clients)
      xs.push(n)
      ys.push(await settle(proxy, n))
    }
    const base = ys[0] ?? 0
    return { base, perConn: ((ys[STEPS] ?? 0) - base) / IDLE, slope: slope(xs, ys), anon: (anonKiB(proxy.pid) - anon0) / IDLE }
  } finally {
    for (const s of clients) s.destroy()
    proxy.stop()
    backend.close()
  }
}

async function memory(dir: string): Promise<RssRow[]> {
  const runs = new Map<Kind | 'haproxy', { base: number[]; perConn: number[]; slope: number[]; anon: number[] }>()
  const candidates = chosen<Kind | 'haproxy'>(['haproxy', ...KINDS])
  for (let run = 0; run < RUNS; run++) {
    for (const c of candidates) {
      const m = await memoryOnce(c, dir)
      if (m === undefined) continue
      const r = runs.get(c) ?? { base: [], perConn: [], slope: [], anon: [] }
      r.anon.push(m.anon)
      r.base.push(m.base)
      r.perConn.push(m.perConn)
      r.slope.push(m.slope)
      runs.set(c, r)
    }
  }
  return [...runs].map(([c, r]) => ({ name: LABEL[c], baseKiB: median(r.base), perConn: median(r.perConn), slope: median(r.slope), anon: median(r.anon) }))
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-relay-bench-'))
  const load = loadNativeRelay(ADDON)
  if (load.addon === undefined) throw new Error(`native relay unavailable: ${load.reason}`)
  console.log(`native relay: ${load.addon.path}; Node ${process.version}; ${RUNS} runs of ${SECONDS} s, medians\n`)
  if (ONLY === undefined || ONLY === 'throughput') {
    const rows = await throughput(dir)
    const direct = new Map(rows.filter((r) => r.name === LABEL.direct).map((r) => [r.streams, r.gbps]))
    const haproxy = new Map(rows.filter((r) => r.name === LABEL.haproxy).map((r) => [r.streams, r.gbps]))
    console.log('| iperf3 | streams | Gbit/s | ÷ direct | ÷ HAProxy | Gbit per proxy CPU-second |')
    console.log('|---|---:|---:|---:|---:|---:|')
    for (const r of rows) {
      const d = direct.get(r.streams)
      const h = haproxy.get(r.streams)
      console.log(`| ${r.name} | ${r.streams} | ${r.gbps.toFixed(2)} | ${d ? (r.gbps / d).toFixed(2) : '–'} | ${h ? (r.gbps / h).toFixed(2) : '–'} | ${r.perCpu?.toFixed(2) ?? '–'} |`)
    }
    console.log()
  }
  if (ONLY === undefined || ONLY === 'rss') {
    const rows = await memory(dir)
    console.log(`| ${IDLE} idle connections | RSS before, KiB | KiB per connection | slope, KiB per connection | of which anonymous |`)
    console.log('|---|---:|---:|---:|---:|')
    for (const r of rows) console.log(`| ${r.name} | ${r.baseKiB} | ${r.perConn.toFixed(2)} | ${r.slope.toFixed(2)} | ${r.anon.toFixed(2)} |`)
  }
}

if (process.argv[2] === 'proxy') {
  const kind = process.argv[3]
  if (kind !== 'js' && kind !== 'copy' && kind !== 'splice') throw new TypeError(`unknown proxy kind ${kind}`)
  proxyMain(kind, Number(process.argv[4]))
} else {
  await main()
  process.exit(0)
}
