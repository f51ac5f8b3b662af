// Builds the native relay, native/build/Release/sluice_relay.node, with node-gyp against the
// headers of the Node on this machine: never a download. With --optional (the install hook) a
// failed build prints one line and exits 0, and sluice runs its JS relay; without it (CI, the
// build:native script) a failure fails.
import { spawnSync } from 'node:child_process'
import { existsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const optional = process.argv.includes('--optional')
const here = dirname(fileURLToPath(import.meta.url))

function fail(why, detail) {
  if (optional) {
    console.log(`sluice: native relay not built (${why}); the JS relay will be used`)
    process.exit(0)
  }
  if (detail) process.stderr.write(detail)
  console.error(`sluice: native relay not built: ${why}`)
  process.exit(1)
}

if (process.platform !== 'linux') fail(`${process.platform} is not supported, Linux only`)

// node-gyp: the one npm runs scripts with, the one bundled with npm, or the project's own.
const npmDir = process.env.npm_execpath ? dirname(dirname(process.env.npm_execpath)) : undefined
const gyp = [
  process.env.npm_config_node_gyp,
  npmDir && join(npmDir, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  join(dirname(dirname(process.execPath)), 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  join(here, '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
].find((p) => p !== undefined && p !== '' && existsSync(p))
if (gyp === undefined) fail('node-gyp not found')

// Headers: npm's nodedir setting, else the ones installed beside this node (/usr/include/node
// for /usr/bin/node). Without them node-gyp would download them: refuse instead.
const prefix = dirname(dirname(process.execPath))
const nodedir = [process.env.npm_config_nodedir, prefix].find(
  (d) => d !== undefined && d !== '' && existsSync(join(d, 'include', 'node', 'node_api.h')),
)
if (nodedir === undefined) fail(`no Node headers in ${join(prefix, 'include', 'node')} (set npm_config_nodedir)`)

const run = spawnSync(process.execPath, [gyp, 'rebuild', `--nodedir=${nodedir}`, '--directory', here], {
  stdio: optional ? 'pipe' : 'inherit',
  encoding: 'utf8',
})
if (run.error !== undefined) fail(`node-gyp did not run: ${run.error.message}`)
if (run.status !== 0) {
  const out = `${run.stdout ?? ''}${run.stderr ?? ''}`
  const error = out.split('\n').find((l) => /error/i.test(l) && !l.startsWith('gyp ERR! stack'))
  fail(error !== undefined ? error.trim() : `node-gyp exited with ${run.status}`, out)
}
console.log(`sluice: native relay built (${join('native', 'build', 'Release', 'sluice_relay.node')})`)
