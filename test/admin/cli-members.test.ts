import t from 'tap'
import { greeting, namedBackend, eventually } from '../helpers/net.js'
import { runCli, startSluice, tempFile } from '../helpers/spawn.js'
import { adminYaml } from './helpers.js'

const env = { ...process.env, SLUICE_ADMIN_TOKEN: '' }

t.test('sluice backend add|remove: PUT and DELETE from the command line', async (t) => {
  const a = await namedBackend(t, 'a')
  const b = await namedBackend(t, 'b')
  const sluice = startSluice(t, tempFile('m.yaml', adminYaml([a.address])))
  const line = await sluice.waitFor((l) => l.msg === 'sluice started', 'start')
  const url = `http://${String(line.admin)}`
  const port = await sluice.port('l')

  const add = await runCli(['backend', 'add', 'p', b.address, '--weight', '3', '--admin', url], 20_000, env)
  t.equal(add.code, 0, add.stderr)
  t.equal(add.stdout.trim(), `pool p backend ${b.address}: added (weight 3; up)`)
  const seen = new Set<string>()
  for (let i = 0; i < 8; i++) seen.add(await greeting(port))
  t.same(seen, new Set(['a', 'b']), 'the added backend takes traffic')

  const rm = await runCli(['backend', 'remove', 'p', a.address, '--admin', url], 20_000, env)
  t.equal(rm.code, 0, rm.stderr)
  t.equal(rm.stdout.trim(), `pool p backend ${a.address}: removed (draining 0 active connections)`)
  await eventually(async () => (await greeting(port)) === 'b', 'b only')
  for (let i = 0; i < 4; i++) t.equal(await greeting(port), 'b')

  const bad = await runCli(['backend', 'add', 'p', b.address, '--weight', 'lots', '--admin', url], 20_000, env)
  t.equal(bad.code, 2, 'a weight that is not a number is bad usage')
  t.match(bad.stderr, /--weight lots is not a whole number/)
  const unknown = await runCli(['backend', 'remove', 'nope', b.address, '--admin', url], 20_000, env)
  t.equal(unknown.code, 1)
  t.match(unknown.stderr, /no pool "nope"/)
  sluice.signal('SIGTERM')
  t.equal((await sluice.exited).code, 0)
})
