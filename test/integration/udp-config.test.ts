import t from 'tap'
import { parseConfig } from '../../src/config/load.js'
import { ConfigError } from '../../src/errors.js'
import type { ConfigIssue } from '../../src/errors.js'

const POOLS = 'pools: { dns: { backends: [10.0.0.1:53] } }'

/** Every issue of a configuration that must fail. */
function problems(yaml: string): ConfigIssue[] {
  try {
    parseConfig(yaml, 'u.yaml', {})
  } catch (err) {
    if (err instanceof ConfigError) return [...err.issues]
    throw err
  }
  throw new Error('the configuration was accepted')
}

t.test('a udp listener gets the UDP defaults and no TCP settings', async (t) => {
  const c = parseConfig(`
listeners: [{ name: dns, protocol: udp, listen: "127.0.0.1:5353", pool: dns }]
${POOLS}
`, 'u.yaml', {})
  t.same(c.listeners[0], {
    name: 'dns',
    protocol: 'udp',
    host: '127.0.0.1',
    port: 5353,
    listen: '127.0.0.1:5353',
    pool: 'dns',
    udp: { mode: 'session', queryTimeoutMs: 2000, upstreamSockets: 2, sessionTimeoutMs: 30_000, responses: 0, maxSessions: 100_000, reuseSockets: 128 },
  })
})

t.test('udp settings are read and checked', async (t) => {
  const c = parseConfig(`
listeners:
  - name: dns
    protocol: udp
    listen: "[::1]:53"
    pool: dns
    udp: { session_timeout: 2s, responses: 1, max_sessions: 500 }
${POOLS}
`, 'u.yaml', {})
  const l = c.listeners[0]!
  t.equal(l.protocol, 'udp')
  if (l.protocol === 'udp') t.same(l.udp, { mode: 'session', queryTimeoutMs: 2000, upstreamSockets: 2, sessionTimeoutMs: 2000, responses: 1, maxSessions: 500, reuseSockets: 128 })
  t.equal(l.host, '::1')
})

t.test('bad udp values are each reported at their own line and column', async (t) => {
  const issues = problems(`
listeners:
  - name: dns
    protocol: udp
    listen: 127.0.0.1:53
    pool: dns
    udp:
      session_timeout: 30
      responses: -1
      max_sessions: 0
      sesion_timeout: 5s
${POOLS}
`)
  t.same(issues.map((i) => [i.line, i.col]), [[8, 24], [9, 18], [10, 21], [11, 7]], issues.map((i) => i.message).join('\n'))
  t.match(issues[0]!.message, /udp\.session_timeout.*no unit/)
  t.match(issues[1]!.message, /udp\.responses.*from 0 to 65535/)
  t.match(issues[2]!.message, /udp\.max_sessions is 0; it must be from 1/)
  t.match(issues[3]!.message, /unknown key "sesion_timeout".*did you mean "session_timeout"/)
})

t.test('session_timeout is bounded: no off, at most a day', async (t) => {
  for (const [value, pattern] of [['off', /not a duration/], ['0', /no unit/], ['2d', /at most 1d/], ['5ms', /at least 10ms/]] as const) {
    const issues = problems(`
listeners: [{ name: dns, protocol: udp, listen: 127.0.0.1:53, pool: dns, udp: { session_timeout: ${value} } }]
${POOLS}
`)
    t.equal(issues.length, 1, `session_timeout: ${value} is refused`)
    t.match(issues[0]!.message, pattern)
  }
})

t.test('udp: on a tcp listener, and TCP-only keys on a udp listener, are errors', async (t) => {
  const tcp = problems(`
listeners: [{ name: web, listen: 127.0.0.1:80, pool: dns, udp: { responses: 1 } }]
${POOLS}
`)
  t.equal(tcp.length, 1)
  t.match(tcp[0], { line: 2, col: 59, path: 'listeners[0].udp' })
  t.match(tcp[0]!.message, /apply only to listeners with protocol: udp/)

  const udp = problems(`
listeners:
  - name: dns
    protocol: udp
    listen: 127.0.0.1:53
    pool: dns
    max_connections: 100
    timeouts: { idle: 10s }
${POOLS}
`)
  t.same(udp.map((i) => [i.line, i.col]), [[7, 5], [8, 5]])
  t.match(udp[0]!.message, /"max_connections" does not apply to listener "dns", which is protocol udp: .*udp\.max_sessions/)
  t.match(udp[1]!.message, /"timeouts" does not apply .*udp\.session_timeout/)
})

t.test('udp and tcp listeners may share a port number; two udp listeners may not', async (t) => {
  const c = parseConfig(`
listeners:
  - { name: dns-udp, protocol: udp, listen: 127.0.0.1:53, pool: dns }
  - { name: dns-tcp, protocol: tcp, listen: 127.0.0.1:53, pool: dns }
${POOLS}
`, 'u.yaml', {})
  t.same(c.listeners.map((l) => l.protocol), ['udp', 'tcp'])
  const issues = problems(`
listeners:
  - { name: a, protocol: udp, listen: 127.0.0.1:53, pool: dns }
  - { name: b, protocol: udp, listen: ":53", pool: dns }
${POOLS}
`)
  t.equal(issues.length, 1)
  t.match(issues[0], { line: 4, message: /port 53, already taken by listener "a"/ })
})

t.test('every listener key a udp listener does not apply is refused once', async (t) => {
  for (const [key, value] of [['tls', '{ cert: a.pem, key: a.key }'], ['max_connections', '10'], ['sni_passthrough', 'true']] as const) {
    const issues = problems(`
listeners: [{ name: dns, protocol: udp, listen: 127.0.0.1:53, pool: dns, ${key}: ${value} }]
${POOLS}
`)
    t.equal(issues.length, 1, `${key}: one problem\n${issues.map((i) => i.message).join('\n')}`)
    t.equal(issues[0]!.path, `listeners[0].${key}`)
  }
})

t.test('reuse_sockets: a count of idle upstream sockets per backend, 0 turns reuse off', async (t) => {
  const read = (value: string): unknown => {
    const c = parseConfig(`
listeners: [{ name: dns, protocol: udp, listen: 127.0.0.1:53, pool: dns, udp: { responses: 1, reuse_sockets: ${value} } }]
${POOLS}
`, 'u.yaml', {})
    const l = c.listeners[0]!
    return l.protocol === 'udp' ? l.udp.reuseSockets : undefined
  }
  t.equal(read('0'), 0)
  t.equal(read('1000'), 1000)
  for (const [value, pattern] of [['-1', /udp\.reuse_sockets \(idle upstream sockets kept per backend.*\) is -1; it must be from 0 to 65536/], ['yes', /udp\.reuse_sockets.*whole number/], ['70000', /it must be from 0 to 65536/]] as const) {
    const issues = problems(`
listeners: [{ name: dns, protocol: udp, listen: 127.0.0.1:53, pool: dns, udp: { reuse_sockets: ${value} } }]
${POOLS}
`)
    t.equal(issues.length, 1, `reuse_sockets: ${value} is refused`)
    t.match(issues[0]!.message, pattern)
    t.equal(issues[0]!.line, 2)
  }
})
