import t from 'tap'
import { startDaemon } from '../helpers/daemon.js'
import { backend, dial, eventually, greeting, namedBackend, readUntil } from '../helpers/net.js'

t.test('weighted round-robin spreads connections 3:2:1 and interleaves them', async (t) => {
  const a = await namedBackend(t, 'a')
  const b = await namedBackend(t, 'b')
  const c = await namedBackend(t, 'c')
  const run = await startDaemon(t, `
listeners: [{ name: web, listen: 127.0.0.1:0, pool: p }]
pools:
  p:
    algorithm: round-robin
    backends:
      - { address: ${a.address}, weight: 3 }
      - { address: ${b.address}, weight: 2 }
      - { address: ${c.address}, weight: 1 }
`)
  const seen: string[] = []
  for (let i = 0; i < 60; i++) seen.push(await greeting(run.port('web')))
  const count = (n: string): number => seen.filter((s) => s === n).length
  t.equal(count('a'), 30, 'a (weight 3) gets half')
  t.equal(count('b'), 20, 'b (weight 2) gets a third')
  t.equal(count('c'), 10, 'c (weight 1) gets a sixth')
  // Smooth: within any 6 consecutive picks each backend appears in its proportion.
  for (let i = 0; i + 6 <= seen.length; i += 6) {
    const win = seen.slice(i, i + 6)
    t.same([win.filter((s) => s === 'a').length, win.filter((s) => s === 'b').length, win.filter((s) => s === 'c').length], [3, 2, 1], `window ${i / 6} is 3:2:1`)
  }
  let longestRun = 0
  for (let i = 0, r = 0; i < seen.length; i++) {
    r = i > 0 && seen[i] === seen[i - 1] ? r + 1 : 1
    longestRun = Math.max(longestRun, r)
  }
  t.ok(longestRun <= 2, `no backend gets more than 2 in a row (longest run ${longestRun})`)
})

t.test('least-connections sends new connections to the backend holding the fewest', async (t) => {
  const a = await namedBackend(t, 'a')
  const b = await namedBackend(t, 'b')
  const c = await namedBackend(t, 'c')
  const run = await startDaemon(t, `
listeners: [{ name: db, listen: 127.0.0.1:0, pool: p }]
pools:
  p:
    algorithm: least-connections
    backends: [${a.address}, ${b.address}, ${c.address}]
`)
  const port = run.port('db')
  const held = new Map<string, import('node:net').Socket[]>([['a', []], ['b', []], ['c', []]])
  const open = async (): Promise<string> => {
    const s = await dial(port)
    const name = (await readUntil(s, 'line')).toString().trim()
    held.get(name)?.push(s)
    return name
  }
  for (let i = 0; i < 6; i++) await open()
  t.same([...held.values()].map((l) => l.length), [2, 2, 2], '6 held connections spread 2/2/2')
  // Free two of b's connections: the next two go to b.
  for (const s of held.get('b')!.splice(0)) s.destroy()
  await eventually(() => run.daemon.pools.get('p')!.backends[1]!.active === 0, 'b to have no connections')
  t.equal(await open(), 'b', 'next connection goes to b, now the least loaded')
  t.equal(await open(), 'b', 'and the one after, still b')
  t.not(await open(), 'b', 'then b is level with the others again')
  for (const l of held.values()) for (const s of l) s.destroy()
})

t.test('weighted least-connections: held connections follow the weights', async (t) => {
  const a = await namedBackend(t, 'a')
  const b = await namedBackend(t, 'b')
  const run = await startDaemon(t, `
listeners: [{ name: db, listen: 127.0.0.1:0, pool: p }]
pools:
  p:
    algorithm: least-connections
    backends: [{ address: ${a.address}, weight: 3 }, { address: ${b.address}, weight: 1 }]
`)
  const names: string[] = []
  const sockets: import('node:net').Socket[] = []
  for (let i = 0; i < 8; i++) {
    const s = await dial(run.port('db'))
    sockets.push(s)
    names.push((await readUntil(s, 'line')).toString().trim())
  }
  t.equal(names.filter((n) => n === 'a').length, 6, 'a (weight 3) holds 6 of 8')
  t.equal(names.filter((n) => n === 'b').length, 2, 'b (weight 1) holds 2 of 8')
  for (const s of sockets) s.destroy()
})

t.test('backup backends serve only while no primary can', async (t) => {
  const primary = await namedBackend(t, 'primary')
  const spare = await namedBackend(t, 'spare')
  const run = await startDaemon(t, `
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p:
    backends:
      - ${primary.address}
      - { address: ${spare.address}, backup: true }
`)
  const port = run.port('l')
  for (let i = 0; i < 4; i++) t.equal(await greeting(port), 'primary', `connection ${i} goes to the primary`)
  const pool = run.daemon.pools.get('p')!
  pool.setState(pool.backends[0]!, 'down')
  for (let i = 0; i < 3; i++) t.equal(await greeting(port), 'spare', `primary down: connection ${i} goes to the backup`)
  pool.setState(pool.backends[0]!, 'up')
  t.equal(await greeting(port), 'primary', 'primary back: traffic returns to it')
})

t.test('a backend at its max_connections is skipped until a connection closes', async (t) => {
  const a = await namedBackend(t, 'a')
  const b = await namedBackend(t, 'b')
  const run = await startDaemon(t, `
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p:
    algorithm: round-robin
    backends: [{ address: ${a.address}, max_connections: 1 }, ${b.address}]
`)
  const port = run.port('l')
  const first = await dial(port)
  t.equal((await readUntil(first, 'line')).toString().trim(), 'a', 'first connection to a')
  const names: string[] = []
  for (let i = 0; i < 4; i++) names.push(await greeting(port))
  t.same(names, ['b', 'b', 'b', 'b'], 'a is full (1 held): everything else goes to b')
  first.destroy()
  await eventually(() => run.daemon.pools.get('p')!.backends[0]!.active === 0, 'a to be free')
  t.equal(await greeting(port), 'a', 'a takes connections again once free')
})

t.test('IPv6 listener and IPv6 backend', async (t) => {
  let v6: Awaited<ReturnType<typeof backend>>
  try {
    v6 = await namedBackend(t, 'six', '::1')
  } catch {
    t.skip('::1 is not available on this machine', () => {})
    return
  }
  const run = await startDaemon(t, `
listeners: [{ name: l6, listen: "[::1]:0", pool: p }]
pools:
  p: { backends: ["${v6.address}"] }
`)
  t.equal(await greeting(run.port('l6'), '::1'), 'six', 'bytes flow over IPv6 on both sides')
  const line = (await run.logs.waitForAccess(1))[0]!
  t.match(line.client, /^\[::1\]:\d+$/, 'client address logged in [v6]:port form')
  t.equal(line.backend, v6.address, 'backend logged as [::1]:port')
})
