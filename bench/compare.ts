/**
 * Side-by-side data-path benchmark (see BENCH.md): the same load generators against direct,
 * HAProxy, nginx (stream), dnsdist (DNS), the 30-line Node pipe proxy and sluice, in one run,
 * every proxy with the same number of workers/threads. Prints a markdown table of medians
 * and writes bench/results/compare.json.
 *
 *   npm run bench                                   # 3 sweeps, 1 worker each
 *   BENCH_WORKERS=1,2 npm run bench                 # 1 worker each, then 2 (sluice needs Node 22.12+ for 2)
 *   BENCH_SWEEPS=1 BENCH_ONLY=redis npm run bench
 *   SLUICE_NODE=/path/to/node BENCH_RELAYS=js,native npm run bench   # sluice on another Node, once per relay
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs'
import { connect, createServer, type AddressInfo, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const SWEEPS = Number(process.env.BENCH_SWEEPS ?? 3)
const ONLY = process.env.BENCH_ONLY
const WORKER_COUNTS = (process.env.BENCH_WORKERS ?? '1').split(',').map((w) => Number(w.trim())).filter((w) => w >= 1)
/** `relay:` values to run sluice with, one candidate each; unset: sluice's default only. */
const RELAYS = (process.env.BENCH_RELAYS ?? '').split(',').map((r) => r.trim()).filter((r) => r !== '')
const SLUICE_NODE = process.env.SLUICE_NODE ?? process.execPath
const PIPE = new URL('../../bench/pipe-proxy.mjs', import.meta.url).pathname
/** Idle connections held open through each proxy to measure its memory per connection. */
const IDLE_CONNECTIONS = Number(process.env.BENCH_IDLE ?? 2000)
const TICKS = Number(run('getconf', ['CLK_TCK']).trim() || 100)
const MAIN = new URL('../../dist/main.js', import.meta.url).pathname
const work = mkdtempSync(join(tmpdir(), 'sluice-bench-'))

interface Proc { child: ChildProcess; port: number }
interface Candidate { name: string; host: string; start(target: number, host: string, udp: boolean, workers: number): Promise<Proc | undefined> }
interface Scenario { name: string; unit: string; backend: 'redis' | 'iperf3' | 'dns'; measure(port: number, pid: number | undefined): number | Promise<number>; p99?: boolean; noCpu?: boolean }
interface Row { scenario: string; unit: string; candidate: string; workers: number; value: number; cpu: number; p99?: number }

function run(cmd: string, args: string[], timeoutMs = 120_000): string {
  return execFileSync(cmd, args, { encoding: 'utf8', timeout: timeoutMs, stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 << 20 })
}

function has(cmd: string): boolean {
  try {
    run('sh', ['-c', `command -v ${cmd}`])
    return true
  } catch {
    return false
  }
}

async function freePort(): Promise<number> {
  const s = createServer()
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
  const { port } = s.address() as AddressInfo
  await new Promise<void>((r) => s.close(() => r()))
  return port
}

async function waitPort(port: number, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect({ port, host: '127.0.0.1' }, () => {
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

/** Waits until a DNS query to 127.0.0.1:port is answered. */
async function waitDns(port: number, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    try {
      if (run('dig', ['+short', '+time=1', '+tries=1', '-p', String(port), '@127.0.0.1', 'a.example.test', 'A'], 5000).includes('192.0.2.1')) return
    } catch {
      // not answering yet
    }
    if (Date.now() > deadline) throw new Error(`no DNS answer on ${port} after ${timeoutMs}ms`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

const children = new Set<ChildProcess>()
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL')
})

async function startProc(cmd: string, args: string[], port: number, udp = false): Promise<Proc> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] })
  children.add(child)
  let err = ''
  child.stderr?.on('data', (d: Buffer) => (err += d.toString()))
  child.on('exit', () => children.delete(child))
  try {
    if (udp) await waitDns(port)
    else await waitPort(port)
  } catch (e) {
    child.kill('SIGKILL')
    throw new Error(`${cmd} did not start: ${err.trim() || String(e)}`)
  }
  return { child, port }
}

/** The fields of /proc/PID/stat after the command name (field 3 onwards), or undefined. */
function statFields(pid: number): string[] | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  } catch {
    return undefined
  }
}

/** A process and its descendants (nginx's master and workers). */
function processTree(pid: number): number[] {
  const children = new Map<number, number[]>()
  for (const name of readdirSync('/proc')) {
    const p = Number(name)
    if (!Number.isInteger(p)) continue
    const ppid = Number(statFields(p)?.[1])
    if (Number.isFinite(ppid)) children.set(ppid, [...(children.get(ppid) ?? []), p])
  }
  const out: number[] = []
  const todo = [pid]
  while (todo.length > 0) {
    const p = todo.pop() as number
    out.push(p)
    todo.push(...(children.get(p) ?? []))
  }
  return out
}

/** CPU seconds (user + system) used so far by a process and its children, live and reaped. */
function cpuSeconds(pid: number): number {
  let ticks = 0
  for (const p of processTree(pid)) {
    const f = statFields(p)
    if (f !== undefined) ticks += Number(f[11]) + Number(f[12]) + (p === pid ? 0 : Number(f[13]) + Number(f[14]))
  }
  return ticks / TICKS
}

/** Resident memory of a process and its children, in KiB. */
function rssKiB(pid: number): number {
  let kib = 0
  for (const p of processTree(pid)) {
    try {
      kib += Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${p}/status`, 'utf8'))?.[1] ?? 0)
    } catch {
      // gone
    }
  }
  return kib
}

/** Node's version as [major, minor]. */
function nodeVersion(node: string): [number, number] {
  const v = run(node, ['-p', 'process.versions.node']).trim().split('.').map(Number)
  return [v[0] ?? 0, v[1] ?? 0]
}
const sluiceNode = nodeVersion(SLUICE_NODE)
const sluiceReusePort = sluiceNode[0] > 22 || (sluiceNode[0] === 22 && sluiceNode[1] >= 12)

function sluiceCandidate(relay: string | undefined, dnsMode = false): Candidate {
  return {
    name: dnsMode ? (relay === undefined ? 'sluice (udp.mode dns)' : `sluice (udp.mode dns, ${relay})`) : relay === undefined ? 'sluice' : `sluice (${relay})`,
    host: '127.0.0.4',
    start: async (target, host, udp, workers) => {
      if (workers > 1 && !sluiceReusePort) return undefined
      if (dnsMode && !udp) return undefined
      const port = await freePort()
      const cfg = join(work, `sluice-${port}.yaml`)
      const listener = dnsMode
        ? `{ name: b, protocol: udp, listen: 127.0.0.1:${port}, pool: p, udp: { mode: dns } }`
        : udp
        ? `{ name: b, protocol: udp, listen: 127.0.0.1:${port}, pool: p, udp: { responses: 1, session_timeout: 5s } }`
        : `{ name: b, listen: 127.0.0.1:${port}, pool: p, max_connections: 100000 }`
      const top = `${workers > 1 ? `workers: ${workers}\n` : ''}${relay !== undefined ? `relay: ${relay}\n` : ''}`
      writeFileSync(cfg, `${top}log: { level: warn, access_log: false }\nlisteners: [${listener}]\npools: { p: { backends: [${host}:${target}] } }\n`)
      return startProc(SLUICE_NODE, [MAIN, 'run', '-c', cfg], port, udp)
    },
  }
}

const candidates: Candidate[] = [
  // Each candidate reaches the backend on its own loopback address, so the TIME_WAIT
  // sockets one leaves behind never slow another's ephemeral-port search.
  { name: 'direct', host: '127.0.0.1', start: async (target) => ({ child: undefined as unknown as ChildProcess, port: target }) },
  {
    name: 'HAProxy',
    host: '127.0.0.2',
    start: async (target, host, udp, workers) => {
      if (udp || !has('haproxy')) return undefined // HAProxy has no UDP proxying
      const port = await freePort()
      const cfg = join(work, `haproxy-${port}.cfg`)
      writeFileSync(cfg, `global\n  nbthread ${workers}\n  maxconn 8000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\nlisten l\n  bind 127.0.0.1:${port}\n  server s1 ${host}:${target}\n`)
      return startProc('haproxy', ['-f', cfg, '-db'], port)
    },
  },
  {
    name: 'nginx',
    host: '127.0.0.3',
    start: async (target, host, udp, workers) => {
      if (!has('nginx')) return undefined
      const port = await freePort()
      const cfg = join(work, `nginx-${port}.conf`)
      // One worker: no master, the worker is the process measured. Several: master and
      // workers, measured as a process tree.
      writeFileSync(cfg, `load_module /usr/lib/nginx/modules/ngx_stream_module.so;\ndaemon off;\nmaster_process ${workers > 1 ? 'on' : 'off'};\nworker_processes ${workers};\nworker_rlimit_nofile 100000;\npid ${work}/nginx-${port}.pid;\nerror_log stderr error;\nevents { worker_connections 50000; }\nstream { server { listen 127.0.0.1:${port}${udp ? ' udp reuseport' : workers > 1 ? ' reuseport' : ''}; proxy_pass ${host}:${target};${udp ? ' proxy_responses 1; proxy_timeout 5s;' : ''} } }\n`)
      return startProc('nginx', ['-c', cfg, '-p', work], port, udp)
    },
  },
  {
    name: 'dnsdist',
    host: '127.0.0.5',
    start: async (target, host, udp, workers) => {
      if (!udp || !has('dnsdist')) return undefined
      const port = await freePort()
      const cfg = join(work, `dnsdist-${port}.conf`)
      // Round-robin, no packet cache, the backend forced up (no health checks); one UDP
      // listener thread per worker on the same port (SO_REUSEPORT).
      const locals = Array.from({ length: workers }, (_, i) => `${i === 0 ? 'setLocal' : 'addLocal'}('127.0.0.1:${port}', { reusePort = true })`).join('\n')
      writeFileSync(cfg, `${locals}\nsetSecurityPollSuffix('')\nsetServerPolicy(roundrobin)\nlocal s = newServer({ address = '${host}:${target}', sockets = ${Math.max(2, workers)} })\ns:setUp()\n`)
      return startProc('dnsdist', ['--supervised', '--disable-syslog', '-C', cfg], port, udp)
    },
  },
  {
    name: 'Node pipe',
    host: '127.0.0.6',
    start: async (target, host, udp, workers) => {
      if (workers > 1) return undefined // one event loop by design
      const port = await freePort()
      return startProc(process.execPath, [PIPE, udp ? 'udp' : 'tcp', String(port), host, String(target)], port, udp)
    },
  },
  ...(RELAYS.length === 0 ? [sluiceCandidate(undefined)] : RELAYS.map((r) => sluiceCandidate(r))),
  // udp.mode dns once per relay asked for: relay: js runs it on the JS DNS relay, auto and native on the native one.
  ...(RELAYS.length === 0 ? [sluiceCandidate(undefined, true)] : RELAYS.map((r) => sluiceCandidate(r, true))),
]

function redisBenchmark(port: number, extra: string[]): { rps: number; p99: number } {
  const out = run('redis-benchmark', ['-h', '127.0.0.1', '-p', String(port), '-t', 'get', '--csv', ...extra], 300_000)
  const line = out.trim().split('\n').find((l) => l.startsWith('"GET"'))
  if (!line) throw new Error(`no GET line in redis-benchmark output: ${out}`)
  const f = line.split(',').map((x) => Number(x.replace(/"/g, '')))
  return { rps: f[1] ?? 0, p99: f[6] ?? 0 }
}

let lastP99 = 0
const scenarios: Scenario[] = [
  {
    name: 'redis-benchmark GET -c 50', unit: 'req/s', backend: 'redis', p99: true,
    measure: (port) => {
      const r = redisBenchmark(port, ['-c', '50', '-n', '200000'])
      lastP99 = r.p99
      return r.rps
    },
  },
  {
    name: 'redis-benchmark -k 0 (new connection per request)', unit: 'conn/s', backend: 'redis',
    measure: (port) => redisBenchmark(port, ['-c', '50', '-n', '10000', '-k', '0']).rps,
  },
  {
    name: 'dnsperf, UDP DNS (-c 4 -q 200)', unit: 'q/s', backend: 'dns',
    measure: (port) => dnsperf(port, 4, 200),
  },
  {
    // Stub resolvers send each query from a new source port: many clients, short sessions.
    name: 'dnsperf, UDP DNS (-c 100 -q 100)', unit: 'q/s', backend: 'dns',
    measure: (port) => dnsperf(port, 100, 100),
  },
  {
    name: 'iperf3, 1 stream', unit: 'Gbit/s', backend: 'iperf3',
    measure: (port) => iperf(port, 1),
  },
  {
    name: 'iperf3, 4 streams', unit: 'Gbit/s', backend: 'iperf3',
    measure: (port) => iperf(port, 4),
  },
  {
    name: `idle connections (${IDLE_CONNECTIONS}), RSS per connection`, unit: 'KiB', backend: 'redis', noCpu: true,
    measure: (port, pid) => idleKiB(port, pid),
  },
]

/**
 * Opens IDLE_CONNECTIONS connections through the proxy, each proven end to end by a PING
 * answered with +PONG, then reads the proxy's RSS growth per connection. Direct has no proxy.
 */
async function idleKiB(port: number, pid: number | undefined): Promise<number> {
  if (pid === undefined) return 0
  const before = rssKiB(pid)
  const open: Socket[] = []
  try {
    for (let i = 0; i < IDLE_CONNECTIONS; i += 100) {
      await Promise.all(Array.from({ length: Math.min(100, IDLE_CONNECTIONS - i) }, () => pinged(port).then((s) => open.push(s))))
    }
    // Let lazily freed memory settle; the figure is the growth that stays while they idle.
    await new Promise((r) => setTimeout(r, 1000))
    return (rssKiB(pid) - before) / IDLE_CONNECTIONS
  } finally {
    for (const s of open) s.destroy()
  }
}

function pinged(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ port, host: '127.0.0.1' }, () => s.write('PING\r\n'))
    const timer = setTimeout(() => {
      s.destroy()
      reject(new Error('no +PONG within 10 s'))
    }, 10_000)
    s.once('data', (d: Buffer) => {
      clearTimeout(timer)
      if (d.toString().startsWith('+PONG')) resolve(s)
      else reject(new Error(`unexpected answer ${d.toString()}`))
    })
    s.once('error', (e) => {
      clearTimeout(timer)
      reject(e)
    })
  })
}

let dnsLost = 0
function dnsperf(port: number, clients: number, outstanding: number): number {
  const data = join(work, 'queries.txt')
  writeFileSync(data, Array.from({ length: 1000 }, (_, i) => `q${i}.example.test A`).join('\n') + '\n')
  const out = run('dnsperf', ['-s', '127.0.0.1', '-p', String(port), '-d', data, '-l', '4', '-c', String(clients), '-q', String(outstanding), '-t', '2'], 60_000)
  dnsLost = Number(/Queries lost:\s+(\d+)/.exec(out)?.[1] ?? NaN)
  const qps = Number(/Queries per second:\s+([\d.]+)/.exec(out)?.[1] ?? NaN)
  if (!Number.isFinite(qps)) throw new Error(`no figure in dnsperf output: ${out}`)
  return qps
}

function iperf(port: number, streams: number): number {
  const out = run('iperf3', ['-c', '127.0.0.1', '-p', String(port), '-t', '4', '-P', String(streams), '-J'], 60_000)
  const j = JSON.parse(out) as { error?: string; end: { sum_received?: { bits_per_second: number } } }
  if (j.error !== undefined || j.end.sum_received === undefined) throw new Error(`iperf3 through port ${port}: ${j.error ?? 'no result'}`)
  return j.end.sum_received.bits_per_second / 1e9
}

async function startBackend(kind: 'redis' | 'iperf3' | 'dns'): Promise<Proc | undefined> {
  const port = await freePort()
  if (kind === 'dns') {
    const dnsmasq = ['/usr/sbin/dnsmasq', '/sbin/dnsmasq'].find((p) => has(p))
    if (dnsmasq === undefined || !has('dnsperf') || !has('dig')) return undefined
    return startProc(dnsmasq, ['--no-daemon', '--pid-file=', `--port=${port}`, '--listen-address=127.0.0.1,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6', '--bind-interfaces', '--no-resolv', '--no-hosts', '--cache-size=0', '--address=/example.test/192.0.2.1'], port, true)
  }
  if (kind === 'redis') {
    if (!has('redis-server') || !has('redis-benchmark')) return undefined
    return startProc('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '127.0.0.2', '127.0.0.3', '127.0.0.4', '127.0.0.6', '--save', '', '--appendonly', 'no', '--maxclients', '50000'], port)
  }
  if (!has('iperf3')) return undefined
  return startProc('iperf3', ['-s', '-p', String(port)], port)
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.floor(s.length / 2)] ?? 0
}

async function main(): Promise<void> {
  if (WORKER_COUNTS.some((w) => w > 1) && !sluiceReusePort) {
    console.error(`sluice runs on Node ${sluiceNode.join('.')}: workers above 1 need 22.12+ (reusePort); set SLUICE_NODE to a newer node to measure them`)
  }
  const rows: Row[] = []
  for (const sc of scenarios) {
    if (ONLY && !sc.name.includes(ONLY)) continue
    const be = await startBackend(sc.backend)
    if (!be) {
      console.error(`skipping "${sc.name}": ${sc.backend} tools are not installed`)
      continue
    }
    for (const workers of WORKER_COUNTS) {
      const samples = new Map<string, { v: number[]; cpu: number[]; p99: number[] }>()
      for (let sweep = 0; sweep < SWEEPS; sweep++) {
        // Rotate the order each sweep so no candidate always runs on the busiest machine state.
        const order = candidates.map((_, i) => candidates[(i + sweep) % candidates.length] as Candidate)
        for (const c of order) {
          if (sc.noCpu && c.name === 'direct') continue
          const p = await c.start(be.port, c.host, sc.backend === 'dns', workers)
          if (!p) continue
          const pid = p.child?.pid
          const cpu0 = pid ? cpuSeconds(pid) : 0
          let v: number
          try {
            v = await sc.measure(p.port, pid)
          } catch (err) {
            // A load generator that fails once (iperf3's control connection, say) costs that
            // sample, not the whole run; the median is taken over the samples that completed.
            console.error(`${sc.name} | ${c.name} ×${workers} | sweep ${sweep + 1}: failed: ${err instanceof Error ? err.message : String(err)}`)
            p.child?.kill('SIGKILL')
            continue
          }
          const cpu = pid ? cpuSeconds(pid) - cpu0 : 0
          for (const q of pid ? processTree(pid) : []) if (q !== pid) process.kill(q, 'SIGKILL')
          p.child?.kill('SIGKILL')
          const s = samples.get(c.name) ?? { v: [], cpu: [], p99: [] }
          s.v.push(v)
          s.cpu.push(cpu)
          s.p99.push(lastP99)
          samples.set(c.name, s)
          const lost = sc.backend === 'dns' ? `, lost ${dnsLost}` : ''
          console.error(`${sc.name} | ${c.name} ×${workers} | sweep ${sweep + 1}: ${v.toFixed(2)} ${sc.unit}, proxy CPU ${cpu.toFixed(2)} s${lost}`)
        }
      }
      for (const [name, s] of samples) {
        rows.push({ scenario: sc.name, unit: sc.unit, candidate: name, workers, value: median(s.v), cpu: median(s.cpu), p99: sc.p99 ? median(s.p99) : undefined })
      }
    }
    be.child.kill('SIGKILL')
  }
  printTable(rows)
  mkdirSync(new URL('../../bench/results/', import.meta.url), { recursive: true })
  const file = new URL('../../bench/results/compare.json', import.meta.url)
  writeFileSync(file, JSON.stringify({ date: new Date().toISOString(), node: process.version, sluiceNode: sluiceNode.join('.'), sweeps: SWEEPS, workers: WORKER_COUNTS, rows }, null, 2))
  console.error(`wrote ${file.pathname}`)
}

function printTable(rows: Row[]): void {
  console.log(`Medians of ${SWEEPS} sweep(s); workers/threads per proxy as in the column; bench on Node ${process.version}, sluice on Node ${sluiceNode.join('.')}.\n`)
  console.log('| scenario | candidate | workers | figure | × direct | × HAProxy | × dnsdist | proxy CPU s | per proxy CPU-second | p99 ms |')
  console.log('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|')
  for (const r of rows) {
    const peer = (name: string): Row | undefined => rows.find((x) => x.scenario === r.scenario && x.candidate === name && x.workers === r.workers)
    const ratio = (base: Row | undefined): string => (base && base.value > 0 && base !== r ? (r.value / base.value).toFixed(2) : '–')
    const perCpu = r.candidate !== 'direct' && r.cpu > 0 && r.unit !== 'Gbit/s' && r.unit !== 'KiB' ? Math.round(requestsOf(r) / r.cpu).toLocaleString('en-US') : '–'
    const fig = r.unit === 'Gbit/s' || r.unit === 'KiB' ? r.value.toFixed(1) : Math.round(r.value).toLocaleString('en-US')
    const cpu = r.candidate === 'direct' || r.unit === 'KiB' ? '–' : r.cpu.toFixed(2)
    console.log(`| ${r.scenario} | ${r.candidate} | ${r.workers} | ${fig} ${r.unit} | ${ratio(peer('direct'))} | ${ratio(peer('HAProxy'))} | ${ratio(peer('dnsdist'))} | ${cpu} | ${perCpu} | ${r.p99 !== undefined ? r.p99.toFixed(3) : '–'} |`)
  }
}

/** Requests one measured run made (the -n of its scenario; for dnsperf, rate × its 4 s). */
function requestsOf(r: Row): number {
  if (r.unit === 'q/s') return r.value * 4 // dnsperf runs for 4 s
  return r.scenario.includes('-k 0') ? 10000 : 200000
}

main().catch((err: unknown) => {
  console.error(err)
  process.exit(1)
})
