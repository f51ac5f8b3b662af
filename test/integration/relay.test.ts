import t from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import { startDaemon } from '../helpers/daemon.js'
import { backend, closed, dial, readUntil } from '../helpers/net.js'
import { loadNativeRelay } from '../../src/proxy/native-relay.js'
import { parseConfig } from '../../src/config/load.js'
import { ConfigError } from '../../src/errors.js'

const native = loadNativeRelay()
const skip = native.addon === undefined ? `the native relay is not built here: ${native.reason}` : false

const yaml = (relay: string, addr: string): string => `
relay: ${relay}
log: { level: info }
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p: { backends: ["${addr}"] }
`

t.test('relay: native carries the connection after the backend connect; relay: js carries it in the JS relay; the status says which', { skip }, async (t) => {
  const size = 4 * 1024 * 1024
  const down = randomBytes(size)
  const be = await backend(t, (s) => {
    const h = createHash('sha256')
    let n = 0
    s.on('data', (c: Buffer) => {
      h.update(c)
      n += c.length
      if (n === size) {
        s.write(h.digest('hex') + '\n')
        s.end(down)
      }
    })
  })
  for (const relay of ['native', 'js']) {
    const run = await startDaemon(t, yaml(relay, be.address))
    const views = await run.daemon.workerViews()
    t.same(views.map((w) => w.relay), [relay], `${relay}: the worker says which relay carries its connections`)
    t.ok(run.logs.lines.some((l) => l.relay === relay), `${relay}: and the log says so`)
    const up = randomBytes(size)
    const c = await dial(run.port('l'))
    const got: Buffer[] = []
    c.on('data', (d: Buffer) => got.push(d))
    c.write(up)
    await closed(c)
    const all = Buffer.concat(got)
    const nl = all.indexOf(10)
    t.equal(all.subarray(0, nl).toString(), createHash('sha256').update(up).digest('hex'), `${relay}: client → backend intact`)
    t.equal(createHash('sha256').update(all.subarray(nl + 1)).digest('hex'), createHash('sha256').update(down).digest('hex'), `${relay}: backend → client intact`)
    const line = (await run.logs.waitForAccess(1))[0]!
    t.equal(line.bytes_in, size, `${relay}: bytes_in counts what the client sent`)
    t.equal(line.bytes_out, size + 65, `${relay}: bytes_out counts what the client got`)
    t.equal(line.close_reason, 'backend_closed')
    t.match(await run.metrics(), new RegExp(`sluice_bytes_total\\{listener="l",direction="in"\\} ${size}\\b`), `${relay}: sluice_bytes_total counts them once`)
    if (relay === 'native') t.equal(run.daemon.listeners.get('l')!.sessions.size, 0, 'the session ended with the relayed connection')
  }
})

t.test('relay: native with an idle timeout and a graceful stop', { skip }, async (t) => {
  const be = await backend(t, (s) => s.pipe(s))
  const run = await startDaemon(t, yaml('native', be.address).replace('pool: p }', 'pool: p, timeouts: { idle: 300ms } }'))
  const c = await dial(run.port('l'))
  c.write('ping\n')
  t.equal((await readUntil(c, 'line')).toString(), 'ping\n')
  await closed(c)
  const line = (await run.logs.waitForAccess(1))[0]!
  t.equal(line.close_reason, 'idle_timeout', 'the relay closed the idle connection')
  const open = await dial(run.port('l'))
  open.write('x\n')
  await readUntil(open, 'line')
  const stopping = run.daemon.stop()
  open.write('still\n')
  t.equal((await readUntil(open, 'line')).toString(), 'still\n', 'an open relayed connection is served while stopping')
  open.end()
  await stopping
  t.equal(run.logs.lines.at(-1)?.msg, 'sluice stopped')
})

t.test('relay is checked', async (t) => {
  try {
    parseConfig('relay: fast\nlisteners: [{ name: l, listen: ":0", pool: p }]\npools: { p: { backends: ["127.0.0.1:1"] } }\n', 'r.yaml', {})
    t.fail('accepted')
  } catch (err) {
    t.match(err instanceof ConfigError ? err.format() : String(err), /^r\.yaml:1:8: relay .*"fast" is not one of auto, native, js/)
  }
})

t.test('a reload to relay: js that fails changes neither the relay in use nor what the status says; one that succeeds does', { skip }, async (t) => {
  const be = await backend(t, (s) => s.pipe(s))
  const held = await backend(t, () => {})
  const run = await startDaemon(t, yaml('native', be.address))
  const port = run.port('l')
  t.same((await run.daemon.workerViews()).map((w) => w.relay), ['native'])
  const js = yaml('js', be.address).replace('127.0.0.1:0', `127.0.0.1:${port}`)
  // The same file plus a listener on a port another socket holds: its bind fails.
  const broken = js.replace(']\npools', `, { name: m, listen: "127.0.0.1:${held.port}", pool: p }]\npools`)
  await t.rejects(run.daemon.reload(parseConfig(broken, 'test.yaml', {})), { code: 'SLUICE_ERR_LISTEN' })
  t.same((await run.daemon.workerViews()).map((w) => w.relay), ['native'], 'still native after the failed reload')
  t.notOk(run.logs.lines.some((l) => l.relay === 'js'), 'and no line says the connections are relayed by Node streams')
  const c = await dial(port)
  c.write('still native\n')
  t.equal((await readUntil(c, 'line')).toString(), 'still native\n')
  c.destroy()
  await closed(c)
  await run.daemon.reload(parseConfig(js, 'test.yaml', {}))
  t.same((await run.daemon.workerViews()).map((w) => w.relay), ['js'], 'js once a reload to it succeeded')
  t.ok(run.logs.lines.some((l) => l.relay === 'js'), 'and the log says so')
})
