import t from 'tap'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pino from 'pino'
import { createLogger, finishableDestination } from '../src/log.js'

t.test('a line logged while the log is finishing is dropped, not thrown (a second stop signal)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-log-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))

  // The bare stream throws on a write once its end has begun: what exited 70 before.
  const bare = pino.destination({ dest: join(dir, 'bare.log'), sync: false })
  await new Promise((resolve) => bare.once('ready', resolve))
  bare.end()
  t.throws(() => bare.write('late\n'), /destroyed/, 'the bare stream throws')

  const raw = pino.destination({ dest: join(dir, 'out.log'), sync: false })
  await new Promise((resolve) => raw.once('ready', resolve))
  const out = finishableDestination(raw)
  const log = createLogger('info', out)
  log.info('before')
  const finished = out.finish()
  t.doesNotThrow(() => log.info('while finishing'), 'a line during the finish')
  await finished
  t.doesNotThrow(() => log.info('after'), 'a line after it')
  t.equal(out.finish(), finished, 'finishing again is the same finish')
  const lines = readFileSync(join(dir, 'out.log'), 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { msg: string }).msg)
  t.same(lines, ['before'], 'every line written before the finish, and none after')
})
