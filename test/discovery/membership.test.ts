import t from 'tap'
import { Registry } from 'prom-client'
import { parseConfig } from '../../src/config/load.js'
import { Metrics } from '../../src/metrics/metrics.js'
import { Pool } from '../../src/upstream/pool.js'
import { MaglevTable } from '../../src/balancer/maglev-table.js'
import { HashRing } from '../../src/balancer/hash-ring.js'
import { Membership } from '../../src/upstream/discovery/membership.js'
import type { BackendConfig } from '../../src/config/types.js'

function cfgOf(algorithm: string, n: number) {
  const backends = Array.from({ length: n }, (_, i) => `"10.3.0.${i + 1}:80"`).join(', ')
  return parseConfig(`listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]\npools: { p: { algorithm: ${algorithm}, backends: [${backends}] } }`, 'm.yaml', {}).pools.get('p')!
}

for (const [algorithm, proto] of [['maglev', MaglevTable.prototype], ['consistent-hash', HashRing.prototype]] as const) {
  t.test(`${algorithm}: a change of several backends rebuilds the table once, and keeps the ones that stay`, async (t) => {
    const cfg = cfgOf(algorithm, 10)
    const pool = new Pool(cfg, new Metrics(new Registry(), () => {}, false), undefined, 'data')
    const ctx = { protocol: 'tcp' as const, remoteAddress: '192.0.2.1', remotePort: 1 }
    pool.pick(ctx)
    const method = 'build'
    const original = (proto as unknown as Record<string, (...a: unknown[]) => unknown>)[method]!
    let builds = 0
    const counting = function (this: unknown, ...args: unknown[]): unknown {
      builds++
      return original.apply(this, args)
    }
    ;(proto as unknown as Record<string, unknown>)[method] = counting
    t.teardown(() => void ((proto as unknown as Record<string, unknown>)[method] = original))
    const kept = pool.find('10.3.0.5:80')!
    kept.total = 42
    // Three removed, four added, in one update.
    const next = cfgOf(algorithm, 14).backends.slice(3)
    pool.update({ ...cfg, backends: next })
    for (let i = 0; i < 100; i++) pool.pick({ ...ctx, remoteAddress: `192.0.2.${i}` })
    t.equal(builds, 1, 'one rebuild for the whole change, on the first pick after it')
    t.equal(pool.find('10.3.0.5:80'), kept, 'a backend that stays is the same object')
    t.equal(kept.total, 42, 'with its counters')
    t.equal(pool.backends.length, 11)
  })
}

t.test('Membership: backends first, then dns, file, etcd; admin PUT overrides settings, DELETE wins over every source', async (t) => {
  const b = (address: string, weight = 1): BackendConfig => ({ address, host: address.split(':')[0]!, port: Number(address.split(':')[1]), weight, backup: false, maxConnections: 0 })
  const m = new Membership()
  m.setSource('etcd', [b('10.0.0.3:80', 7), b('10.0.0.4:80')])
  m.setSource('dns', [b('10.0.0.2:80', 5), b('10.0.0.3:80', 2)])
  const merged = (): string[] => m.merge([b('10.0.0.1:80'), b('10.0.0.2:80', 9)]).map((x) => `${x.backend.address}/${x.backend.weight}/${x.source}`)
  t.same(merged(), ['10.0.0.1:80/1/backends', '10.0.0.2:80/9/backends', '10.0.0.3:80/2/dns', '10.0.0.4:80/1/etcd'])
  m.put('10.0.0.3:80', '10.0.0.3', 80, { weight: 50 })
  m.put('10.0.0.9:80', '10.0.0.9', 80, {})
  m.delete('10.0.0.1:80')
  t.same(merged(), ['10.0.0.2:80/9/backends', '10.0.0.3:80/50/dns', '10.0.0.4:80/1/etcd', '10.0.0.9:80/1/admin'])
  m.dropSource('etcd')
  m.put('10.0.0.1:80', '10.0.0.1', 80, {})
  t.same(merged(), ['10.0.0.1:80/1/backends', '10.0.0.2:80/9/backends', '10.0.0.3:80/50/dns', '10.0.0.9:80/1/admin'], 'PUT undoes a DELETE; a dropped source takes its backends')
})
