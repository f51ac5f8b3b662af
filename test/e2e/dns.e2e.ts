import t, { type Test } from 'tap'
import { createSocket } from 'node:dgram'
import { createServer } from 'node:net'
import { networkInterfaces } from 'node:os'
import { readFileSync } from 'node:fs'
import { startSluice, tempFile, type SluiceProcess } from '../helpers/spawn.js'
import { daemon, run, skipWithout, which } from '../helpers/tools.js'
import { eventually } from '../helpers/net.js'

const dnsmasq = which('dnsmasq', ['/usr/sbin', '/sbin'])
const dig = which('dig')
const dnsperf = which('dnsperf')
const hasV6 = Object.values(networkInterfaces()).some((l) => l?.some((a) => a.family === 'IPv6' && a.address === '::1'))

/** 3 KiB of TXT: an answer far above 512 bytes, carried whole over UDP with EDNS. */
const BIG = Array.from({ length: 12 }, (_, i) => `chunk${i}-${'x'.repeat(240)}`)

/** A port free for both UDP and TCP on 127.0.0.1 (dnsmasq binds both). */
async function freeDnsPort(): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const u = createSocket('udp4')
    await new Promise<void>((resolve) => u.bind(0, '127.0.0.1', resolve))
    const port = u.address().port
    const s = createServer()
    const tcpFree = await new Promise<boolean>((resolve) => {
      s.once('error', () => resolve(false))
      s.listen(port, '127.0.0.1', () => resolve(true))
    })
    if (tcpFree) await new Promise<void>((resolve) => s.close(() => resolve()))
    await new Promise<void>((resolve) => u.close(resolve))
    if (tcpFree) return port
  }
  throw new Error('no port free for both UDP and TCP after 20 tries')
}

/** Two dnsmasq instances serving the same zone, each answering whoami.sluice.test with its name. */
async function resolvers(t: Test): Promise<number[]> {
  const ports: number[] = []
  for (const name of ['ns1', 'ns2']) {
    const port = await freeDnsPort()
    daemon(t, dnsmasq!, [
      '--no-daemon', '--log-facility=-', '--pid-file=', `--port=${port}`, '--listen-address=127.0.0.1', '--bind-interfaces',
      '--no-resolv', '--no-hosts', '--local=/sluice.test/', '--edns-packet-max=4096', '--cache-size=0',
      '--address=/example.test/192.0.2.1',
      '--host-record=www.sluice.test,192.0.2.10,2001:db8::10',
      '--host-record=api.sluice.test,192.0.2.11',
      '--mx-host=sluice.test,mail.sluice.test,10',
      `--txt-record=whoami.sluice.test,${name}`,
      `--txt-record=big.sluice.test,${BIG.join(',')}`,
    ])
    ports.push(port)
  }
  for (const port of ports) {
    await eventually(() => {
      try {
        return digShort('127.0.0.1', port, 'www.sluice.test', 'A') === '192.0.2.10'
      } catch {
        return false
      }
    }, `dnsmasq on ${port} to answer`)
  }
  return ports
}

function digShort(server: string, port: number, name: string, type: string, extra: string[] = []): string {
  return run(dig!, [`@${server}`, '-p', String(port), '+tries=1', '+time=2', '+short', ...extra, name, type], { timeoutMs: 10_000 }).trim()
}

async function startDnsSluice(t: Test, ports: number[], accessLog: boolean): Promise<{ sluice: SluiceProcess; port: number; port6: number | undefined }> {
  const six = hasV6 ? `\n  - { name: dns6, protocol: udp, listen: "[::1]:0", pool: dns, udp: { responses: 1 } }` : ''
  const sluice = startSluice(t, tempFile('dns.yaml', `
log: { level: info, access_log: ${accessLog} }
listeners:
  - { name: dns, protocol: udp, listen: 127.0.0.1:0, pool: dns, udp: { responses: 1, session_timeout: 5s } }${six}
pools:
  dns:
    algorithm: round-robin
    backends: [127.0.0.1:${ports[0]}, 127.0.0.1:${ports[1]}]
`))
  return { sluice, port: await sluice.port('dns'), port6: hasV6 ? await sluice.port('dns6') : undefined }
}

t.test('dig through sluice: every answer correct, both resolvers used', async (t) => {
  if (skipWithout(t, { dnsmasq, dig })) return
  const ports = await resolvers(t)
  const { sluice, port, port6 } = await startDnsSluice(t, ports, true)
  const cases: [string, string, string][] = [
    ['www.sluice.test', 'A', '192.0.2.10'],
    ['www.sluice.test', 'AAAA', '2001:db8::10'],
    ['api.sluice.test', 'A', '192.0.2.11'],
    ['sluice.test', 'MX', '10 mail.sluice.test.'],
    ['anything.example.test', 'A', '192.0.2.1'],
    ['missing.sluice.test', 'A', ''],
  ]
  let queries = 0
  for (let round = 0; round < 5; round++) {
    for (const [name, type, want] of cases) {
      t.equal(digShort('127.0.0.1', port, name, type), want, `${name} ${type}`)
      queries++
    }
  }
  const status = run(dig!, ['@127.0.0.1', '-p', String(port), '+tries=1', '+time=2', 'missing.sluice.test', 'A'], { timeoutMs: 10_000 })
  t.match(status, /status: NXDOMAIN/, 'NXDOMAIN comes through as NXDOMAIN')
  queries++
  const who = new Set<string>()
  for (let i = 0; i < 6; i++) {
    who.add(digShort('127.0.0.1', port, 'whoami.sluice.test', 'TXT'))
    queries++
  }
  t.same([...who].sort(), ['"ns1"', '"ns2"'], 'each dig is a new session: round-robin alternates the two resolvers')
  const big = run(dig!, ['@127.0.0.1', '-p', String(port), '+tries=1', '+time=2', '+bufsize=4096', '+notcp', 'big.sluice.test', 'TXT'], { timeoutMs: 10_000 })
  queries++
  t.notMatch(big, / tc[ ;]/, 'not truncated')
  t.match(big, /MSG SIZE\s+rcvd: (\d{4})/, 'a reply of several KiB over UDP')
  for (const chunk of BIG) t.ok(big.includes(chunk), `${chunk.slice(0, 7)} intact`)
  if (port6 !== undefined) {
    t.equal(digShort('::1', port6, 'www.sluice.test', 'AAAA'), '2001:db8::10', 'over IPv6 to IPv4 resolvers')
    queries++
  }
  await eventually(() => sluice.lines.filter((l) => l.access === true).length === queries, `${queries} access-log lines`)
  const access = sluice.lines.filter((l) => l.access === true)
  t.ok(access.every((l) => l.close_reason === 'responses' && l.datagrams_in === 1 && l.datagrams_out === 1), 'one session per query, closed by its reply')
  sluice.signal('SIGTERM')
  t.equal((await sluice.exited).code, 0)
  // Not the start-up line about the open-files limit (the machine's, not the relay's).
  t.notOk(sluice.lines.some((l) => (l.level === 'error' || l.level === 'warn') && l.open_files_limit === undefined), 'no warnings or errors logged')
})

interface PerfResult {
  qps: number
  sent: number
  completed: number
  lost: number
  noerror: number
  cpuSeconds: number | undefined
}

/** One bounded dnsperf run; `pid` is the process whose CPU time to read (sluice), if any. */
function perf(port: number, dataFile: string, args: string[], pid?: number): PerfResult {
  const cpu0 = pid === undefined ? undefined : cpuTicks(pid)
  const out = run(dnsperf!, ['-s', '127.0.0.1', '-p', String(port), '-d', dataFile, '-t', '2', ...args], { timeoutMs: 60_000 })
  const cpu1 = pid === undefined ? undefined : cpuTicks(pid)
  const num = (re: RegExp): number => Number(re.exec(out)?.[1] ?? NaN)
  return {
    qps: num(/Queries per second:\s+([\d.]+)/),
    sent: num(/Queries sent:\s+(\d+)/),
    completed: num(/Queries completed:\s+(\d+)/),
    lost: num(/Queries lost:\s+(\d+)/),
    noerror: num(/NOERROR (\d+)/),
    cpuSeconds: cpu0 === undefined || cpu1 === undefined ? undefined : (cpu1 - cpu0) / 100,
  }
}

/** utime + stime of `pid` in clock ticks (100 per second on Linux). */
function cpuTicks(pid: number): number | undefined {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ')
    return Number(f[11]) + Number(f[12])
  } catch {
    return undefined
  }
}

t.test('dnsperf: through sluice and straight to dnsmasq, same run', async (t) => {
  if (skipWithout(t, { dnsmasq, dnsperf })) return
  const ports = await resolvers(t)
  const { sluice, port } = await startDnsSluice(t, ports, false)
  const data = tempFile('queries.txt', ['www.sluice.test A', 'www.sluice.test AAAA', 'api.sluice.test A', 'sluice.test MX', 'whoami.sluice.test TXT', 'a.example.test A'].join('\n') + '\n')
  const pid = sluice.child.pid
  const rows: [string, PerfResult][] = []
  const few = ['-l', '4', '-c', '4', '-q', '200']
  const perQuery = ['-l', '4', '-c', '100', '-q', '100']
  rows.push(['direct to one dnsmasq, 4 clients', perf(ports[0]!, data, few)])
  rows.push(['sluice, 4 clients', perf(port, data, few, pid)])
  rows.push(['direct to one dnsmasq, 100 clients × 1 outstanding', perf(ports[0]!, data, perQuery)])
  rows.push(['sluice, 100 clients × 1 outstanding (a session per query)', perf(port, data, perQuery, pid)])
  const paced = perf(port, data, ['-l', '3', '-c', '4', '-Q', '5000'], pid)
  rows.push(['sluice, paced at 5,000 q/s', paced])
  t.comment('| run | queries/s | lost | sluice CPU s | queries per sluice CPU-second |')
  t.comment('|---|---:|---:|---:|---:|')
  for (const [name, r] of rows) {
    const perCpu = r.cpuSeconds ? Math.round(r.completed / r.cpuSeconds) : '–'
    t.comment(`| ${name} | ${Math.round(r.qps)} | ${r.lost} (${((100 * r.lost) / Math.max(1, r.sent)).toFixed(2)}%) | ${r.cpuSeconds?.toFixed(2) ?? '–'} | ${perCpu} |`)
  }
  for (const [name, r] of rows) {
    t.ok(r.completed > 0, `${name}: queries completed`)
    t.equal(r.noerror, r.completed, `${name}: every answer NOERROR`)
    t.ok(r.lost <= r.sent * 0.01, `${name}: at most 1% lost at saturation (${r.lost} of ${r.sent})`)
  }
  t.equal(paced.lost, 0, 'no loss below saturation')
  t.ok(paced.completed >= 3 * 5000 * 0.9, `paced run completed ${paced.completed} queries`)
  sluice.signal('SIGTERM')
  t.equal((await sluice.exited).code, 0)
  t.notOk(sluice.lines.some((l) => l.level === 'error'), 'no errors logged')
})
