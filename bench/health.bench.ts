import { spawn } from 'node:child_process'
import { connect } from 'node:net'
import { Writable } from 'node:stream'
import { createInterface } from 'node:readline'
import { Registry } from 'prom-client'
import { Metrics } from '../src/metrics/metrics.js'
import { Pool } from '../src/upstream/pool.js'
import { PoolHealth } from '../src/health/pool-health.js'
import { createLogger } from '../src/log.js'
import type { HealthCheckConfig, PoolConfig } from '../src/config/types.js'

/**
 * CPU cost of active health checks: 1,000 backends at a 1 s interval, measured with
 * process.cpuUsage() (user + system) in the checking process over SECONDS (default 10) once
 * the checks run at their steady cadence. The backends are 1,000 TCP listeners on 127.0.0.1
 * in a child process, so their accept work is not counted against sluice (it is shown
 * beside). Scenarios: a `tcp` check, a `redis` check (PING → +PONG), and the floor: the same
 * connects made with bare net.connect + destroy and no checker. Each is measured ROUNDS times
 * (default 3), interleaved; the table gives medians. Prints markdown.
 *
 *   npm run bench:health     (env: SLUICE_BENCH_BACKENDS, SLUICE_BENCH_SECONDS, SLUICE_BENCH_ROUNDS)
 */
const N = Number(process.env.SLUICE_BENCH_BACKENDS ?? 1000)
const SECONDS = Number(process.env.SLUICE_BENCH_SECONDS ?? 10)
const ROUNDS = Number(process.env.SLUICE_BENCH_ROUNDS ?? 3)

const CHILD = `
const net = require('net')
const n = Number(process.argv[1])
const ports = []
let open = 0
for (let i = 0; i < n; i++) {
  const s = net.createServer((c) => {
    c.on('error', () => {})
    c.on('data', (d) => { if (d.includes('PING')) c.write('+PONG\\r\\n') })
  })
  s.listen(0, '127.0.0.1', () => {
    ports[i] = s.address().port
    if (++open === n) process.stdout.write(JSON.stringify(ports) + '\\n')
  })
}
process.stdin.on('data', () => {
  const u = process.cpuUsage()
  process.stdout.write(JSON.stringify(u) + '\\n')
})
`

type Scenario = 'tcp' | 'redis' | 'floor'
interface Sample { rate: number; cpuPct: number; usPerProbe: number; childPct: number; failures: number }
interface Running { count(): Promise<number>; failures(): Promise<number>; stop(): void }

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

async function main(): Promise<void> {
  const child = spawn(process.execPath, ['-e', CHILD, String(N)], { stdio: ['pipe', 'pipe', 'inherit'] })
  const lines: string[] = []
  const waiters: ((l: string) => void)[] = []
  createInterface({ input: child.stdout }).on('line', (l) => {
    const w = waiters.shift()
    if (w) w(l)
    else lines.push(l)
  })
  const next = (): Promise<string> => new Promise((resolve) => (lines.length > 0 ? resolve(lines.shift() as string) : waiters.push(resolve)))
  const ports = JSON.parse(await next()) as number[]
  const childCpu = async (): Promise<number> => {
    child.stdin.write('x')
    const u = JSON.parse(await next()) as { user: number; system: number }
    return u.user + u.system
  }

  const start = async (s: Scenario): Promise<Running> => (s === 'floor' ? startFloor(ports) : startChecker(ports, s))
  const measure = async (s: Scenario): Promise<Sample> => {
    const run = await start(s)
    await sleep(1500) // the first round's burst settles into the 1 s cadence
    const n0 = await run.count()
    const c0 = await childCpu()
    const t0 = performance.now()
    const u0 = process.cpuUsage()
    await sleep(SECONDS * 1000)
    const u = process.cpuUsage(u0)
    const wallUs = (performance.now() - t0) * 1000
    const c1 = await childCpu()
    const n = (await run.count()) - n0
    const failures = await run.failures()
    run.stop()
    await sleep(200)
    const cpu = u.user + u.system
    return { rate: n / (wallUs / 1e6), cpuPct: (100 * cpu) / wallUs, usPerProbe: cpu / n, childPct: (100 * (c1 - c0)) / wallUs, failures }
  }

  const scenarios: Scenario[] = ['tcp', 'redis', 'floor']
  const samples = new Map<Scenario, Sample[]>(scenarios.map((s) => [s, []]))
  for (let r = 0; r < ROUNDS; r++) for (const s of scenarios) samples.get(s)?.push(await measure(s))
  child.kill()

  console.log(`## Health-check CPU: ${N} backends, 1 s interval (Node ${process.version}, median of ${ROUNDS} × ${SECONDS} s)\n`)
  console.log('| scenario | probes/s | checking process CPU, % of one core | µs CPU per probe | backends\' process, % of one core |')
  console.log('|---|---:|---:|---:|---:|')
  const label: Record<Scenario, string> = { tcp: '`tcp` check', redis: '`redis` check (PING → +PONG)', floor: 'floor: bare net.connect + destroy, no checker' }
  const json: Record<string, unknown> = {}
  for (const s of scenarios) {
    const list = samples.get(s) ?? []
    const med = (f: (x: Sample) => number): number => median(list.map(f))
    console.log(`| ${label[s]} | ${med((x) => x.rate).toFixed(0)} | ${med((x) => x.cpuPct).toFixed(2)} (${list.map((x) => x.cpuPct.toFixed(1)).join(', ')}) | ${med((x) => x.usPerProbe).toFixed(1)} | ${med((x) => x.childPct).toFixed(2)} |`)
    json[s] = list
    const failed = list.reduce((n, x) => n + x.failures, 0)
    if (failed > 0) console.log(`\n(${s}: ${failed} probes failed during the runs)\n`)
  }
  console.log('\nTarget: < 5% of one core. CPU is user + system time; over loopback the kernel runs the TCP')
  console.log('handshake and teardown in the connecting process, so the floor row is what the same connects')
  console.log('cost with no checker at all.')
  console.log(`\n<!-- ${JSON.stringify(json)} -->`)
}

async function startChecker(ports: number[], type: 'tcp' | 'redis'): Promise<Running> {
  const options = type === 'redis' ? { password: undefined, username: undefined } : null
  const healthCheck: HealthCheckConfig = { type, intervalMs: 1000, timeoutMs: 500, rise: 2, fall: 3, jitterMs: 0, port: 0, options }
  const cfg: PoolConfig = {
    name: 'bench',
    algorithm: 'round-robin',
    algorithmOptions: undefined,
    backends: ports.map((port) => ({ address: `127.0.0.1:${port}`, host: '127.0.0.1', port, weight: 1, backup: false, maxConnections: 0 })),
    connectTimeoutMs: 1000,
    retries: 0,
    slowStartMs: 0,
    healthCheck,
  }
  const metrics = new Metrics(new Registry())
  const pool = new Pool(cfg, metrics)
  const health = new PoolHealth(pool, createLogger('info', new Writable({ write: (_c, _e, cb) => cb() })), metrics)
  await health.start()
  const down = pool.backends.filter((b) => b.state !== 'up').length
  if (down > 0) throw new Error(`${down} backends failed their first ${type} check`)
  const sum = async (result?: string): Promise<number> => (await metrics.healthChecksTotal.get()).values.filter((v) => result === undefined || v.labels.result === result).reduce((n, v) => n + v.value, 0)
  return { count: () => sum(), failures: () => sum('failure'), stop: () => health.close() }
}

async function startFloor(ports: number[]): Promise<Running> {
  let done = 0
  let failed = 0
  const timers: NodeJS.Timeout[] = []
  ports.forEach((port, i) => {
    const one = (): void => {
      const s = connect({ host: '127.0.0.1', port })
      s.on('error', () => failed++)
      s.once('connect', () => {
        done++
        s.destroy()
      })
    }
    timers.push(setTimeout(() => timers.push(setInterval(one, 1000)), (i * 1000) / ports.length))
  })
  return { count: async () => done, failures: async () => failed, stop: () => timers.forEach((t) => clearInterval(t)) }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b)
  const m = Math.floor(s.length / 2)
  return s.length % 2 === 1 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2
}

main().catch((err: unknown) => {
  console.error(err)
  process.exit(1)
})
