/**
 * What a slowloris costs sluice, and when it is cut: N connections that send their opening
 * (a PROXY header, or a TLS ClientHello to an sni_passthrough listener) one byte every 700 ms
 * against a sluice process of its own. Prints, for each kind, sluice's resident memory before,
 * with every stalled connection held and after they were cut (so the memory per stalled
 * connection), and how long each lived (the cut-off after its timeout). Measured, not asserted.
 *
 *   npm run build && npx tsc -p tsconfig.bench.json && node dist-bench/bench/slowloris.js
 *   (SLOW_N=5000 SLOW_TIMEOUT=15s by default; SLUICE_NODE=/path/to/node to pick the runtime)
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { connect, createServer, type AddressInfo, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const MAIN = new URL('../../dist/main.js', import.meta.url).pathname
const NODE = process.env.SLUICE_NODE ?? process.execPath
const N = Number(process.env.SLOW_N ?? 5000)
const TIMEOUT = process.env.SLOW_TIMEOUT ?? '15s'
const BATCH = 250
const work = mkdtempSync(join(tmpdir(), 'sluice-slowloris-'))

async function freePort(): Promise<number> {
  const s = createServer()
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r))
  const { port } = s.address() as AddressInfo
  await new Promise<void>((r) => s.close(() => r()))
  return port
}

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  return m === null ? 0 : Number(m[1])
}

async function start(): Promise<{ child: ChildProcess; pp: number; sni: number }> {
  const echo = createServer((s) => s.pipe(s))
  await new Promise<void>((r) => echo.listen(0, '127.0.0.1', r))
  echo.unref()
  const echoPort = (echo.address() as AddressInfo).port
  const [pp, sni, admin] = [await freePort(), await freePort(), await freePort()]
  const file = join(work, 'slowloris.yaml')
  writeFileSync(
    file,
    `log: { level: error, access_log: false }
admin: { listen: "127.0.0.1:${admin}" }
listeners:
  - { name: pp, listen: "127.0.0.1:${pp}", pool: echo, proxy_protocol_accept: true, max_connections: 100000, timeouts: { proxy_header: ${TIMEOUT}, handshake: 1h } }
  - { name: sni, listen: "127.0.0.1:${sni}", pool: echo, sni_passthrough: true, max_connections: 100000, timeouts: { handshake: ${TIMEOUT} } }
pools: { echo: { backends: ["127.0.0.1:${echoPort}"] } }
`,
  )
  const child = spawn(NODE, [MAIN, 'run', '-c', file], { stdio: ['ignore', 'ignore', 'inherit'] })
  const deadline = Date.now() + 30_000
  for (;;) {
    try {
      if ((await fetch(`http://127.0.0.1:${admin}/readyz`)).status === 200) break
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) throw new Error('sluice did not start')
    await new Promise((r) => setTimeout(r, 100))
  }
  return { child, pp, sni }
}

interface Stalled {
  socket: Socket
  sent: number
  openedAt: number
  closedAt: number
}

/** A TLS record header and the start of a ClientHello that says it is 512 bytes long. */
const HELLO = Buffer.concat([Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]), Buffer.alloc(64, 7)])
const HEADER = Buffer.from('PROXY TCP4 198.51.100.123 192.0.2.111 40000 54321\r\n')

async function run(kind: 'PROXY header' | 'ClientHello', port: number, pid: number): Promise<string[]> {
  const bytes = kind === 'PROXY header' ? HEADER : HELLO
  const before = rssKiB(pid)
  const all: Stalled[] = []
  const trickle = setInterval(() => {
    for (const s of all) if (!s.socket.destroyed && s.sent < bytes.length - 2) s.socket.write(bytes.subarray(s.sent, ++s.sent))
  }, 700)
  const openStart = performance.now()
  for (let i = 0; i < N; i += BATCH) {
    all.push(
      ...(await Promise.all(
        Array.from({ length: Math.min(BATCH, N - i) }, () => new Promise<Stalled>((resolve, reject) => {
          const s = connect({ port, host: '127.0.0.1' }, () => {
            s.off('error', reject)
            s.on('error', () => {})
            s.write(bytes.subarray(0, 1))
            const st: Stalled = { socket: s, sent: 1, openedAt: performance.now(), closedAt: 0 }
            s.once('close', () => (st.closedAt = performance.now()))
            resolve(st)
          })
          s.once('error', reject)
        })),
      )),
    )
  }
  const openMs = performance.now() - openStart
  await new Promise((r) => setTimeout(r, 1000))
  const held = all.filter((s) => s.closedAt === 0).length
  const during = rssKiB(pid)
  while (all.some((s) => s.closedAt === 0)) await new Promise((r) => setTimeout(r, 100))
  clearInterval(trickle)
  await new Promise((r) => setTimeout(r, 1000))
  const after = rssKiB(pid)
  const lived = all.map((s) => s.closedAt - s.openedAt).sort((a, b) => a - b)
  const q = (p: number): string => (lived[Math.min(lived.length - 1, Math.floor(p * lived.length))]! / 1000).toFixed(2)
  const perConn = ((during - before) * 1024) / Math.max(1, held)
  return [kind, String(N), `${(openMs / 1000).toFixed(1)}`, String(held), (before / 1024).toFixed(1), (during / 1024).toFixed(1), (after / 1024).toFixed(1), `${(perConn / 1024).toFixed(2)}`, `${q(0)} / ${q(0.5)} / ${q(1)}`]
}

const { child, pp, sni } = await start()
const pid = child.pid!
const rows = [
  ['stalled opening', 'conns', 'open (s)', 'held at once', 'RSS before (MiB)', 'RSS held (MiB)', 'RSS after (MiB)', 'KiB per stalled conn', `lived min/median/max (s), timeout ${TIMEOUT}`],
  await run('PROXY header', pp, pid),
  await run('ClientHello', sni, pid),
]
child.kill('SIGTERM')
const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)))
for (const r of rows) console.log(r.map((c, i) => c.padEnd(widths[i]!)).join('  '))
console.log(`node ${NODE === process.execPath ? process.version : NODE}; sluice relay default, workers 1 (data plane in a worker thread)`)
