import t from 'tap'
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { loadConfig } from '../../src/config/load.js'
import { ConfigError } from '../../src/errors.js'

// Each fixture holds one kind of mistake and says where it is: `# expect: LINE:COL text`.
const dir = join(import.meta.dirname ?? new URL('.', import.meta.url).pathname, '../fixtures/bad')

for (const name of readdirSync(dir).filter((f) => f.endsWith('.yaml')).sort()) {
  t.test(name, async (t) => {
    const file = join(dir, name)
    const expects = readFileSync(file, 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('# expect: '))
      .map((l) => {
        const m = /^# expect: (\d+):(\d+) (.+)$/.exec(l)
        if (!m) throw new Error(`bad expect line in ${name}: ${l}`)
        return { line: Number(m[1]), col: Number(m[2]), text: m[3]! }
      })
    t.ok(expects.length > 0, 'fixture states what it expects')
    const err = t.throws(() => loadConfig(file, {})) as unknown
    t.type(err, ConfigError)
    const ce = err as ConfigError
    t.equal(ce.code, 'SLUICE_ERR_CONFIG')
    t.equal(ce.issues.length, expects.length, `exactly ${expects.length} problem(s) reported:\n${ce.format()}`)
    for (const e of expects) {
      const hit = ce.issues.find((i) => i.line === e.line && i.col === e.col)
      t.ok(hit, `a problem at ${e.line}:${e.col}`)
      t.ok(hit?.message.includes(e.text), `at ${e.line}:${e.col}: "${hit?.message}" says "${e.text}"`)
      t.ok(ce.format().includes(`${file}:${e.line}:${e.col}: `), 'formatted as FILE:LINE:COL: message')
    }
  })
}
