import t from 'tap'
import { parseConfig, loadConfig } from '../../src/config/load.js'
import { ConfigError, SluiceError } from '../../src/errors.js'

const minimal = (extra = ''): string => `
listeners: [{ name: l, listen: 127.0.0.1:7000, pool: p }]
pools: { p: { backends: [10.0.0.1:80] } }
${extra}`

t.test('defaults are filled in', async (t) => {
  const c = parseConfig(minimal(), 'x.yaml', {})
  t.equal(c.workers, 1)
  t.equal(c.shutdownTimeoutMs, 30_000)
  t.same(c.log, { level: 'info', accessLog: true })
  const l = c.listeners[0]!
  if (l.protocol !== 'tcp') throw new Error('expected a tcp listener')
  t.equal(l.protocol, 'tcp')
  t.equal(l.maxConnections, 10_000)
  t.equal(l.timeouts.idleMs, 0, 'no idle timeout by default')
  const p = c.pools.get('p')!
  t.equal(p.algorithm, 'round-robin')
  t.equal(p.connectTimeoutMs, 3000)
  t.equal(p.retries, 2)
  t.same(p.backends[0], { address: '10.0.0.1:80', host: '10.0.0.1', port: 80, weight: 1, backup: false, maxConnections: 0 })
})

t.test('${VAR} and ${VAR:-default} expand from the environment', async (t) => {
  const yaml = `
listeners: [{ name: l, listen: "127.0.0.1:\${PORT}", pool: p }]
pools: { p: { backends: ["\${BACKEND_HOST:-10.9.9.9}:80"] } }
`
  const c = parseConfig(yaml, 'x.yaml', { PORT: '7100' })
  t.equal(c.listeners[0]!.port, 7100)
  t.equal(c.pools.get('p')!.backends[0]!.host, '10.9.9.9', 'default used when unset')
  const c2 = parseConfig(yaml, 'x.yaml', { PORT: '7100', BACKEND_HOST: 'db.internal' })
  t.equal(c2.pools.get('p')!.backends[0]!.address, 'db.internal:80')
})

t.test('addresses: IPv6 in brackets, :port for all addresses, host names', async (t) => {
  const c = parseConfig(`
listeners:
  - { name: a, listen: "[::1]:7000", pool: p }
  - { name: b, listen: ":7001", pool: p }
pools: { p: { backends: ["[2001:db8::1]:5432", "db-1.example:5432", 10.0.0.1:1] } }
`, 'x.yaml', {})
  t.equal(c.listeners[0]!.host, '::1')
  t.equal(c.listeners[1]!.host, '', ':port listens on every address')
  t.same(c.pools.get('p')!.backends.map((b) => b.address), ['[2001:db8::1]:5432', 'db-1.example:5432', '10.0.0.1:1'])
})

t.test('durations take units and off where a timeout can be disabled', async (t) => {
  const c = parseConfig(`
shutdown_timeout: 1m30s
listeners: [{ name: l, listen: 127.0.0.1:7000, pool: p, timeouts: { idle: off, handshake: 250ms } }]
pools: { p: { connect_timeout: 2s, backends: [10.0.0.1:80] } }
`, 'x.yaml', {})
  t.equal(c.shutdownTimeoutMs, 90_000)
  const l = c.listeners[0]!
  if (l.protocol !== 'tcp') throw new Error('expected a tcp listener')
  t.equal(l.timeouts.idleMs, 0)
  t.equal(l.timeouts.handshakeMs, 250)
  t.equal(c.pools.get('p')!.connectTimeoutMs, 2000)
  t.throws(() => parseConfig(minimal().replace('backends', 'connect_timeout: off, backends'), 'x.yaml', {}), ConfigError, 'connect_timeout cannot be off')
})

t.test('every problem of a file is reported at once, in file order', async (t) => {
  try {
    parseConfig(`
workers: 0
listeners: [{ name: l, listen: 127.0.0.1:99999, pool: q }]
pools: { p: { retries: -1, backends: [10.0.0.1:80] } }
`, 'x.yaml', {})
    t.fail('should throw')
  } catch (err) {
    t.type(err, ConfigError)
    const issues = (err as ConfigError).issues
    t.equal(issues.length, 4, (err as ConfigError).format())
    t.same(issues.map((i) => i.line), [2, 3, 3, 4], 'sorted by line')
  }
})

t.test('an empty file and an unreadable file', async (t) => {
  t.throws(() => parseConfig('', 'empty.yaml', {}), { code: 'SLUICE_ERR_CONFIG' })
  try {
    loadConfig('/nonexistent/sluice.yaml', {})
    t.fail('should throw')
  } catch (err) {
    t.type(err, SluiceError)
    t.equal((err as SluiceError).code, 'SLUICE_ERR_CONFIG_READ')
    t.match((err as SluiceError).message, /no such file/)
  }
})

t.test('the shipped configurations are valid', async (t) => {
  const { readdirSync } = await import('node:fs')
  const files = ['config/sluice.yaml', ...readdirSync('config/examples').filter((f) => f.endsWith('.yaml')).map((f) => `config/examples/${f}`)]
  for (const f of files) t.doesNotThrow(() => loadConfig(f, { SLUICE_ADMIN_TOKEN: 'x' }), f)
})
