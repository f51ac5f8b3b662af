import t from 'tap'
import { Writable } from 'node:stream'
import { parseConfig } from '../src/config/load.js'
import { createLogger } from '../src/log.js'
import { FdReserve, descriptorNeeds, localExhaustion, localProbeFailure, openDescriptors, openFilesLimit, warnDescriptorLimit } from '../src/fd-budget.js'

const LIMITS = `Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max open files            1024                 524288               files
`

t.test('the open-files limit is read from /proc/self/limits', async (t) => {
  t.equal(openFilesLimit(LIMITS), 1024)
  t.equal(openFilesLimit(LIMITS.replace('1024  ', 'unlimited')), undefined, 'unlimited is no limit')
  t.equal(openFilesLimit('nothing here'), undefined)
  const own = openFilesLimit()
  if (own !== undefined) t.ok(own > 0, `this process: ${own}`)
  const open = openDescriptors()
  if (open !== undefined) t.ok(open >= 3, `this process holds ${open}`)
})

t.test('local exhaustion is told apart from a backend failure', async (t) => {
  for (const code of ['EMFILE', 'ENFILE', 'ENOBUFS', 'ENOMEM']) t.equal(localExhaustion(Object.assign(new Error(code), { code })), code)
  for (const code of ['ECONNREFUSED', 'ETIMEDOUT', 'EHOSTUNREACH']) t.equal(localExhaustion(Object.assign(new Error(code), { code })), undefined)
  t.equal(localExhaustion('EMFILE'), undefined, 'a string is not an error with a code')
  t.ok(localProbeFailure('connect EMFILE'))
  t.notOk(localProbeFailure('connect ECONNREFUSED'))
  t.notOk(localProbeFailure('timeout after 1s waiting for connect'))
})

t.test('the start-up warning names the limit, the need and the listeners', async (t) => {
  const config = parseConfig(`
listeners:
  - { name: pg, protocol: tcp, listen: 127.0.0.1:0, pool: p, max_connections: 1000 }
  - { name: dns, protocol: udp, listen: 127.0.0.1:0, pool: p, udp: { max_sessions: 5000 } }
pools:
  p: { backends: [127.0.0.1:1] }
`, 'fd.yaml', {})
  t.same(descriptorNeeds(config).map((n) => [n.listener, n.key, n.descriptors]), [['pg', 'max_connections', 2000], ['dns', 'udp.max_sessions', 5000]])
  const lines: Record<string, unknown>[] = []
  const sink = new Writable({ write(chunk: Buffer, _e, cb) { lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>); cb() } })
  const log = createLogger('info', sink)
  t.equal(warnDescriptorLimit(config, log, 1_000_000), undefined, 'no warning when the limit is enough')
  const fields = warnDescriptorLimit(config, log, 1024)
  t.ok(fields !== undefined && Number(fields.descriptors_needed) > 7000)
  await new Promise((r) => setImmediate(r))
  t.equal(lines.length, 1)
  t.match(String(lines[0]?.msg), /open-files limit \(1024\) is too low.*lower udp\.max_sessions of listener dns/)
  t.equal(lines[0]?.code, 'SLUICE_ERR_RESOURCE_EXHAUSTED')
})

t.test('the reserve holds descriptors, lets them go and takes them back', async (t) => {
  const before = openDescriptors()
  const r = new FdReserve(4)
  t.equal(r.held, 4)
  if (before !== undefined) t.equal(openDescriptors(), before + 4, 'four descriptors held')
  r.release()
  t.equal(r.held, 0)
  if (before !== undefined) t.equal(openDescriptors(), before, 'all given back')
  t.ok(r.headroom(8), 'eight more can be opened')
  if (before !== undefined) t.equal(openDescriptors(), before, 'the headroom probe closes what it opened')
  t.ok(r.refill())
  t.equal(r.held, 4)
  r.close()
  t.equal(r.held, 0)
})
