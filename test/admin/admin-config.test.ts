import t from 'tap'
import { parseConfig } from '../../src/config/load.js'
import { ConfigError } from '../../src/errors.js'
import { isLoopback } from '../../src/admin/admin-config.js'

const base = (admin: string): string => `${admin}
listeners: [{ name: l, listen: "127.0.0.1:0", pool: p }]
pools:
  p: { backends: [127.0.0.1:9] }
`

function problems(text: string, env: NodeJS.ProcessEnv = {}): string[] {
  try {
    parseConfig(text, 'a.yaml', env)
  } catch (err) {
    if (err instanceof ConfigError) return err.format().split('\n')
    throw err
  }
  return []
}

t.test('admin: defaults, listen, token and ${VAR}', async (t) => {
  t.equal(parseConfig(base(''), 'a.yaml', {}).admin, undefined, 'no admin key: the API is off')
  t.same(parseConfig(base('admin: {}'), 'a.yaml', {}).admin, { host: '127.0.0.1', port: 9090, listen: '127.0.0.1:9090', token: undefined }, 'admin: {} listens on 127.0.0.1:9090')
  t.same(parseConfig(base('admin: { listen: "[::1]:0" }'), 'a.yaml', {}).admin, { host: '::1', port: 0, listen: '[::1]:0', token: undefined })
  const c = parseConfig(base('admin: { listen: 0.0.0.0:9090, token: "${TOK}" }'), 'a.yaml', { TOK: 's3cret-token' })
  t.same(c.admin, { host: '0.0.0.0', port: 9090, listen: '0.0.0.0:9090', token: 's3cret-token' }, 'a token from the environment allows a public address')
})

t.test('a non-loopback admin.listen without a token is refused at its line', async (t) => {
  const p = problems(base('admin:\n  listen: 0.0.0.0:9090'))
  t.equal(p.length, 1)
  t.match(p[0], /^a\.yaml:2:11: admin\.listen 0\.0\.0\.0:9090 is not a loopback address and admin\.token is not set/)
  t.match(problems(base('admin: { listen: ":9090" }'))[0], /^a\.yaml:1:18: admin\.listen :9090 is not a loopback address/, 'all addresses (:port) is not loopback')
  t.match(problems(base('admin: { listen: "10.1.2.3:9090" }'))[0], /not a loopback address/)
})

t.test('bad admin values are located', async (t) => {
  t.match(problems(base('admin: { listen: 127.0.0.1 }'))[0], /^a\.yaml:1:18: admin\.listen: "127\.0\.0\.1" has no port/)
  t.match(problems(base('admin: { lisen: 127.0.0.1:9090 }'))[0], /^a\.yaml:1:10: unknown key "lisen" in admin; did you mean "listen"\?/)
  t.match(problems(base('admin: { token: "" }'))[0], /^a\.yaml:1:17: admin\.token must not be empty/)
  t.match(problems(base('admin: { token: "two words" }'))[0], /^a\.yaml:1:17: admin\.token must not contain spaces/)
  t.match(problems(base('admin: { token: "${NOPE}" }'))[0], /environment variable NOPE is not set/)
  t.match(problems(base('admin: 9090'))[0], /^a\.yaml:1:8: admin must be a mapping/)
})

t.test('isLoopback', async (t) => {
  for (const h of ['127.0.0.1', '127.1.2.3', '::1', 'localhost', '::ffff:127.0.0.1']) t.ok(isLoopback(h), h)
  for (const h of ['', '0.0.0.0', '::', '10.0.0.1', '128.0.0.1', 'example.com']) t.notOk(isLoopback(h), h || '(all addresses)')
})
