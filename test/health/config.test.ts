import t from 'tap'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseConfig } from '../../src/config/load.js'
import { ConfigError } from '../../src/errors.js'

function pool(lines: string): string {
  return `listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p:
    backends: [127.0.0.1:5432]
${lines}`
}

function problems(yaml: string): string[] {
  try {
    parseConfig(yaml, 'f.yaml', { PW: 'from-env' })
  } catch (err) {
    if (err instanceof ConfigError) return err.format().split('\n')
    throw err
  }
  return []
}

function issueCodes(yaml: string): unknown {
  try {
    parseConfig(yaml, 'f.yaml', {})
  } catch (err) {
    return err instanceof ConfigError ? err.code : err
  }
  return undefined
}

t.test('health_check: defaults and every common key', async (t) => {
  const c = parseConfig(pool('    health_check: { type: postgres }'), 'f.yaml', {})
  t.same(c.pools.get('p')?.healthCheck, { type: 'postgres', intervalMs: 2000, timeoutMs: 1000, rise: 2, fall: 3, jitterMs: 200, port: 0, options: null })
  const d = parseConfig(pool('    health_check: { type: redis, interval: 1s, timeout: 250ms, rise: 1, fall: 5, jitter: 100ms, port: 6380, send_proxy: false, password: "${PW}" }'), 'f.yaml', { PW: 'from-env' })
  t.same(d.pools.get('p')?.healthCheck, { type: 'redis', intervalMs: 1000, timeoutMs: 250, rise: 1, fall: 5, jitterMs: 100, port: 6380, options: { password: 'from-env', username: undefined } })
  const e = parseConfig(pool('    health_check: {}'), 'f.yaml', {})
  t.equal(e.pools.get('p')?.healthCheck?.type, 'tcp', 'type defaults to tcp')
  t.equal(parseConfig(pool(''), 'f.yaml', {}).pools.get('p')?.healthCheck, undefined, 'no health_check: none')
})

t.test('health_check: clear errors at the line and column', async (t) => {
  t.same(problems(pool('    health_check: { type: postgress }')), ['f.yaml:5:27: pool "p" health_check type "postgress" is not one of tcp, tls, send-expect, redis, postgres, mysql, smtp, imap, pop3, dns, http; did you mean "postgres"?'])
  t.same(problems(pool('    health_check: { type: tcp, path: /x }')), ['f.yaml:5:32: "path" in pool "p" health_check applies to type http, not tcp'])
  t.same(problems(pool('    health_check: { type: http, intervall: 2s }')), ['f.yaml:5:33: unknown key "intervall" in pool "p" health_check; did you mean "interval"?'])
  t.equal(issueCodes(pool('    health_check: { type: http, intervall: 2s }')), 'SLUICE_ERR_CONFIG')
  t.same(problems(pool('    health_check: { interval: 2, rise: 0 }')), [
    'f.yaml:5:31: pool "p" health_check interval: duration "2" has no unit; write e.g. 2s or 2ms',
    'f.yaml:5:40: pool "p" health_check rise is 0; it must be from 1 to 100',
  ])
  t.same(problems(pool('    health_check: { interval: 1s, timeout: 2s }')), ['f.yaml:5:44: pool "p" health_check timeout must not exceed interval; a probe that outlasts its interval would delay the next one'])
  t.same(problems(pool('    health_check: { type: http, expect_status: [200, 6xx] }')), ['f.yaml:5:54: pool "p" health_check expect_status "6xx" is not a status: write a code (200), a class (2xx), a range (200-299) or a list of these, from 100 to 599'])
  t.same(problems(pool('    health_check: { type: send-expect, send: "PING\\r\\n" }')), ['f.yaml:5:19: pool "p" health_check: type send-expect needs an expect (or steps with at least one expect); for a bare connect use type tcp'])
  t.same(problems(pool('    health_check: { type: send-expect, expect: "/+(/" }')), ['f.yaml:5:48: pool "p" health_check expect: /+(/ is not a valid regular expression: Invalid regular expression: /+(/: Nothing to repeat'])
  t.same(problems(pool('    health_check: { type: dns }')), ['f.yaml:5:19: pool "p" health_check (type dns) is missing the required key "query"'])
  t.same(problems(pool('    health_check: { type: dns, query: example.com, expect_rcode: NXDOMIAN }')), ['f.yaml:5:66: pool "p" health_check expect_rcode "NXDOMIAN" is not one of NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED; did you mean "NXDOMAIN"?'])
  t.same(problems(pool('    health_check: { type: tls, ca: /nonexistent/ca.pem }')), ['f.yaml:5:36: pool "p" health_check ca: cannot read /nonexistent/ca.pem: ENOENT'])
  t.same(problems(pool('    health_check: { port: 70000 }')), ['f.yaml:5:27: pool "p" health_check port is 70000; it must be from 1 to 65535'])
})

t.test('send-expect: steps, regexes, and one of send/expect per step', async (t) => {
  const c = parseConfig(pool(`    health_check:
      type: send-expect
      steps:
        - expect: "/^220 /"
        - send: "HELO x\\r\\n"
        - expect: "250"`), 'f.yaml', {})
  const steps = (c.pools.get('p')?.healthCheck?.options as { steps: unknown[] }).steps
  t.same(steps, [{ expect: /^220 / }, { send: 'HELO x\r\n' }, { expect: '250' }])
  t.same(problems(pool(`    health_check:
      type: send-expect
      send: x
      steps: [{ send: a, expect: b }]`)), [
    'f.yaml:7:7: pool "p" health_check: give either steps or send/expect, not both',
    'f.yaml:8:15: a step of pool "p" health_check needs exactly one of send or expect',
  ])
})

t.test('passive: defaults and errors', async (t) => {
  t.same(parseConfig(pool('    passive: {}'), 'f.yaml', {}).pools.get('p')?.passive, { maxFailures: 3, ejectionTimeMs: 30_000 })
  t.same(parseConfig(pool('    passive: { max_failures: 5, ejection_time: 1m }'), 'f.yaml', {}).pools.get('p')?.passive, { maxFailures: 5, ejectionTimeMs: 60_000 })
  t.same(problems(pool('    passive: { max_failures: 0, ejection_tim: 5s }')), [
    'f.yaml:5:30: pool "p" passive max_failures is 0; it must be from 1 to 1000',
    'f.yaml:5:33: unknown key "ejection_tim" in pool "p" passive; did you mean "ejection_time"?',
  ])
})

t.test('jitter: 10% of the interval unless set; 0 or off turns it off', async (t) => {
  const jitter = (hc: string): number | undefined => parseConfig(pool(`    health_check: ${hc}`), 'f.yaml', {}).pools.get('p')?.healthCheck?.jitterMs
  t.equal(jitter('{}'), 200, 'default interval 2s: 200ms')
  t.equal(jitter('{ interval: 500ms }'), 50)
  t.equal(jitter('{ interval: 15ms }'), 2, 'rounded')
  t.equal(jitter('{ jitter: 0 }'), 0)
  t.equal(jitter('{ jitter: off }'), 0)
  t.equal(jitter('{ interval: 1s, jitter: 1s }'), 1000)
  t.same(problems(pool('    health_check: { interval: 1s, jitter: 2s }')), ['f.yaml:5:43: pool "p" health_check jitter must not exceed interval (a random extra delay of 0 to jitter is added to each interval)'])
})

t.test('send_proxy: follows the pool\'s proxy_protocol unless the check has its own port; false turns it off', async (t) => {
  const sendProxy = (pp: string, hc: string): unknown => parseConfig(pool(`    proxy_protocol: ${pp}\n    health_check: ${hc}`), 'f.yaml', {}).pools.get('p')?.healthCheck?.sendProxy
  t.equal(sendProxy('v2', '{ type: smtp }'), 'v2')
  t.equal(sendProxy('v1', '{ type: imap }'), 'v1')
  t.equal(sendProxy('off', '{ type: imap }'), undefined)
  t.equal(sendProxy('v2', '{ type: smtp, send_proxy: false }'), undefined)
  t.equal(sendProxy('v2', '{ type: http, port: 8081 }'), undefined, 'a separate health port gets no header by default')
  t.equal(sendProxy('v2', '{ type: http, port: 8081, send_proxy: true }'), 'v2', 'unless asked')
  t.equal(sendProxy('v2', '{ type: dns, query: example.com }'), 'v2', 'v2 has a datagram form')
  t.equal(sendProxy('v1', '{ type: dns, query: example.com }'), undefined, 'v1 has none: a UDP dns check sends no header')
  t.equal(sendProxy('v1', '{ type: dns, query: example.com, transport: tcp }'), 'v1')
  t.equal(parseConfig(pool('    health_check: { type: smtp }'), 'f.yaml', {}).pools.get('p')?.healthCheck?.sendProxy, undefined, 'no proxy_protocol: none')
  t.same(problems(pool('    health_check: { type: smtp, send_proxy: true }')), ['f.yaml:5:45: pool "p" health_check send_proxy: true needs the pool\'s proxy_protocol (v1 or v2), whose version the checks send; set proxy_protocol, or remove send_proxy'])
  t.same(problems(pool('    proxy_protocol: v1\n    health_check: { type: dns, query: a.example, send_proxy: true }')), ['f.yaml:6:62: pool "p" health_check send_proxy: true cannot be honoured over UDP with proxy_protocol v1, which exists only for TCP; use transport: tcp, or proxy_protocol v2'])
  t.same(problems(pool('    proxy_protocol: v2\n    health_check: { send_proxy: maybe }')), ['f.yaml:6:33: pool "p" health_check send_proxy must be true or false, not "maybe"'])
})

t.test('a wrong key lists the keys of its type only, with a "did you mean" when one is close', async (t) => {
  const common = 'type, interval, timeout, rise, fall, jitter, port, send_proxy'
  t.same(problems(pool('    health_check: { type: tcp, bogus: 1 }')), [`f.yaml:5:32: unknown key "bogus" in pool "p" health_check; type tcp takes ${common}`])
  t.same(problems(pool('    health_check: { bogus: 1 }')), [`f.yaml:5:21: unknown key "bogus" in pool "p" health_check; type tcp takes ${common}`], 'type tcp by default')
  t.same(problems(pool('    health_check: { type: http, bogus: 1 }')), [`f.yaml:5:33: unknown key "bogus" in pool "p" health_check; type http takes ${common}, path, expect_status, host`])
  t.same(problems(pool('    health_check: { type: postgres, bogus: 1 }')), [`f.yaml:5:37: unknown key "bogus" in pool "p" health_check; type postgres takes ${common}, user, database, password, password_file`])
  t.same(problems(pool('    health_check: { type: http, pth: /x }')), ['f.yaml:5:33: unknown key "pth" in pool "p" health_check; did you mean "path"?'])
  t.same(problems(pool('    health_check: { type: mysql, usr: probe }')), ['f.yaml:5:34: unknown key "usr" in pool "p" health_check; did you mean "user"?'])
  t.same(problems(pool('    health_check: { type: tcp, pasword: x }')), ['f.yaml:5:32: unknown key "pasword" in pool "p" health_check; did you mean "password" (a key of type redis or postgres or mysql)?'])
  t.same(problems(pool('    health_check: { type: tcp, sendproxy: true }')), ['f.yaml:5:32: unknown key "sendproxy" in pool "p" health_check; did you mean "send_proxy"?'])
  t.same(problems(pool('    health_check: { type: htp, path: /x, bogus: 1 }')), [
    'f.yaml:5:27: pool "p" health_check type "htp" is not one of tcp, tls, send-expect, redis, postgres, mysql, smtp, imap, pop3, dns, http; did you mean "http"?',
    'f.yaml:5:42: unknown key "bogus" in pool "p" health_check; the common keys are type, interval, timeout, rise, fall, jitter, port, send_proxy',
  ], 'with a wrong type, keys of some type are not blamed')
})

t.test('postgres and mysql: user, database, password or password_file make a login check', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-pw-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const pwFile = join(dir, 'pw')
  writeFileSync(pwFile, 's3cret from a file\n')
  writeFileSync(join(dir, 'empty'), '')
  const options = (hc: string, env: NodeJS.ProcessEnv = {}): unknown => parseConfig(pool(`    health_check: ${hc}`), 'f.yaml', env).pools.get('p')?.healthCheck?.options
  t.equal(options('{ type: postgres }'), null, 'no user: the anonymous check')
  t.equal(options('{ type: mysql }'), null)
  t.same(options('{ type: postgres, user: probe }'), { user: 'probe', database: undefined, password: undefined, passwordFile: undefined })
  t.same(options('{ type: mysql, user: probe, database: app, password: "${DB_PW}" }', { DB_PW: 'from env' }), { user: 'probe', database: 'app', password: 'from env', passwordFile: undefined })
  t.same(options(`{ type: postgres, user: probe, password_file: ${pwFile} }`), { user: 'probe', database: undefined, password: 's3cret from a file', passwordFile: pwFile }, 'one trailing newline dropped')
  t.same(options('{ type: postgres, user: probe, password: 1234 }'), { user: 'probe', database: undefined, password: '1234', passwordFile: undefined }, 'a number is a password too')
  t.same(problems(pool('    health_check: { type: postgres, database: app, password: x }')), [
    'f.yaml:5:37: pool "p" health_check: "database" needs "user" (a postgres check logs in only when it has a user; without one it does not authenticate)',
    'f.yaml:5:52: pool "p" health_check: "password" needs "user" (a postgres check logs in only when it has a user; without one it does not authenticate)',
  ])
  t.same(problems(pool(`    health_check: { type: mysql, user: u, password: x, password_file: ${pwFile} }`)), ['f.yaml:5:56: pool "p" health_check: give either password or password_file, not both'])
  t.same(problems(pool(`    health_check: { type: mysql, user: u, password_file: ${join(dir, 'none')} }`)), [`f.yaml:5:58: pool "p" health_check password_file: cannot read ${join(dir, 'none')}: ENOENT`])
  t.same(problems(pool(`    health_check: { type: mysql, user: u, password_file: ${join(dir, 'empty')} }`)), [`f.yaml:5:58: pool "p" health_check password_file: ${join(dir, 'empty')} is empty`])
  t.same(problems(pool('    health_check: { type: postgres, user: "" }')), ['f.yaml:5:43: pool "p" health_check user must not be empty'])
  t.same(problems(pool('    health_check: { type: postgres, user: u, password: "${NOPE}" }')), ['f.yaml:5:56: environment variable NOPE is not set (used in pool "p" health_check password); set it, or write ${NOPE:-default}'])
  t.same(problems(pool('    health_check: { type: redis, user: u }')), ['f.yaml:5:34: "user" in pool "p" health_check applies to type postgres or mysql, not redis'])
})
