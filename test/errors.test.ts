import t from 'tap'
import { readFileSync, readdirSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { ERROR_CODES, SluiceError, ConfigError } from '../src/errors.js'

const root = join(import.meta.dirname ?? new URL('.', import.meta.url).pathname, '..')

function sourceFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f)
    return statSync(p).isDirectory() ? sourceFiles(p) : p.endsWith('.ts') ? [p] : []
  })
}

t.test('the code table, the docs and the sources agree', async (t) => {
  const table = Object.keys(ERROR_CODES).sort()
  const docs = readFileSync(join(root, 'docs/errors.md'), 'utf8')
  const documented = [...docs.matchAll(/^\| `(SLUICE_ERR_[A-Z_]+)` \|/gm)].map((m) => m[1]!).sort()
  t.same(documented, table, 'docs/errors.md lists exactly the codes in src/errors.ts')
  const used = new Set<string>()
  for (const f of sourceFiles(join(root, 'src'))) {
    for (const m of readFileSync(f, 'utf8').matchAll(/SLUICE_ERR_[A-Z_]+/g)) used.add(m[0])
  }
  for (const code of used) t.ok(code in ERROR_CODES, `${code} used in src/ is in the table`)
})

t.test('SluiceError and ConfigError carry their codes', async (t) => {
  const e = new SluiceError('SLUICE_ERR_CONNECT', 'x', { cause: new Error('inner') })
  t.equal(e.code, 'SLUICE_ERR_CONNECT')
  t.type(e.cause, Error)
  const c = new ConfigError([
    { file: 'f.yaml', line: 3, col: 7, path: 'a', message: 'bad' },
    { file: 'f.yaml', line: 9, col: 1, path: 'b', message: 'worse' },
  ])
  t.equal(c.code, 'SLUICE_ERR_CONFIG')
  t.equal(c.message, 'f.yaml:3:7: bad (and 1 more)')
  t.equal(c.format(), 'f.yaml:3:7: bad\nf.yaml:9:1: worse')
})
