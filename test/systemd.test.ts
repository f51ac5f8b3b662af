import t from 'tap'
import { readFileSync, writeFileSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { spawnSync } from 'node:child_process'
import { MAIN } from './helpers/spawn.js'
import { skipWithout, which } from './helpers/tools.js'

const root = join(import.meta.dirname ?? new URL('.', import.meta.url).pathname, '..')
const UNIT = readFileSync(join(root, 'systemd/sluice.service'), 'utf8')
const analyze = which('systemd-analyze')
/** The highest overall exposure we accept (systemd's scale: 0 best, 10 worst; "OK" is below 2). */
const MAX_EXPOSURE = 2.0

/** The unit with ExecStart pointing at this checkout (verify checks that the program exists). */
function localUnit(): string {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-unit-'))
  const file = join(dir, 'sluice.service')
  writeFileSync(file, UNIT.replace('/usr/local/bin/sluice', `${process.execPath} ${MAIN}`))
  return file
}

t.test('the unit has what docs/install.md promises', async (t) => {
  const has = (line: string): void => void t.match(UNIT, new RegExp(`^${line.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`, 'm'), line)
  has('Type=exec')
  has('ExecStart=/usr/local/bin/sluice run --config /etc/sluice/sluice.yaml')
  has('ExecReload=/bin/kill -HUP $MAINPID')
  has('Restart=on-failure')
  has('DynamicUser=yes')
  has('NoNewPrivileges=yes')
  has('ProtectSystem=strict')
  has('ProtectHome=yes')
  has('PrivateTmp=yes')
  has('CapabilityBoundingSet=CAP_NET_BIND_SERVICE')
  has('AmbientCapabilities=CAP_NET_BIND_SERVICE')
  has('RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX')
  has('SystemCallFilter=@system-service')
  has('LimitNOFILE=1048576')
})

t.test('systemd-analyze verify accepts the unit', async (t) => {
  if (skipWithout(t, { 'systemd-analyze': analyze })) return
  const r = spawnSync(analyze!, ['verify', localUnit()], { encoding: 'utf8', timeout: 60_000 })
  t.equal(r.status, 0, `exit 0; stderr: ${r.stderr}`)
  t.equal(r.stderr.trim(), '', 'no warnings')
})

t.test(`systemd-analyze security: overall exposure at most ${MAX_EXPOSURE}`, async (t) => {
  if (skipWithout(t, { 'systemd-analyze': analyze })) return
  const r = spawnSync(analyze!, ['security', '--offline=true', '--no-pager', localUnit()], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, SYSTEMD_COLORS: '0' } })
  const m = /Overall exposure level for sluice\.service: (\d+\.\d+)/.exec(r.stdout)
  t.ok(m, `an overall score in: ${r.stdout.slice(-300)} ${r.stderr}`)
  const score = Number(m?.[1])
  t.ok(score <= MAX_EXPOSURE, `exposure ${score} <= ${MAX_EXPOSURE}`)
  t.comment(`systemd-analyze security exposure: ${score}`)
  for (const setting of ['NoNewPrivileges=', 'ProtectSystem=', 'ProtectHome=', 'PrivateTmp=', 'RestrictSUIDSGID=', 'SystemCallFilter=~@privileged']) {
    t.match(r.stdout, new RegExp(`✓ ${setting.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`), `${setting} passes`)
  }
})
