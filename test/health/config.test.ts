import t from 'tap'
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

t.test('health_check: defaults and every common key', async (t) => {
  const c = parseConfig(pool('    health_check: { type: postgres }'), 'f.yaml', {})
  t.same(c.pools.get('p')?.healthCheck, { type: 'postgres', intervalMs: 2000, timeoutMs: 1000, rise: 2, fall: 3, jitterMs: 0, port: 0, options: null })
  const d = parseConfig(pool('    health_check: { type: redis, interval: 1s, timeout: 250ms, rise: 1, fall: 5, jitter: 100ms, port: 6380, password: "${PW}" }'), 'f.yaml', { PW: 'from-env' })
  t.same(d.pools.get('p')?.healthCheck, { type: 'redis', intervalMs: 1000, timeoutMs: 250, rise: 1, fall: 5, jitterMs: 100, port: 6380, options: { password: 'from-env', username: undefined } })
  const e = parseConfig(pool('    health_check: {}'), 'f.yaml', {})
  t.equal(e.pools.get('p')?.healthCheck?.type, 'tcp', 'type defaults to tcp')
  t.equal(parseConfig(pool(''), 'f.yaml', {}).pools.get('p')?.healthCheck, undefined, 'no health_check: none')
})

t.test('health_check: clear errors at the line and column', async (t) => {
  t.same(problems(pool('    health_check: { type: postgress }')), ['f.yaml:5:27: pool "p" health_check type "postgress" is not one of tcp, tls, send-expect, redis, postgres, mysql, smtp, imap, pop3, dns, http; did you mean "postgres"?'])
  t.same(problems(pool('    health_check: { type: tcp, path: /x }')), ['f.yaml:5:32: "path" in pool "p" health_check applies to type http, not tcp'])
  t.same(problems(pool('    health_check: { type: http, intervall: 2s }')), ['f.yaml:5:33: unknown key "intervall" in pool "p" health_check; did you mean "interval"?'])
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
