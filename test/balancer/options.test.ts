import t from 'tap'
import { parseConfig } from '../../src/config/load.js'
import { ConfigError } from '../../src/errors.js'
import type { ConsistentHashOptions } from '../../src/balancer/consistent-hash.js'
import type { MaglevOptions } from '../../src/balancer/maglev.js'
import type { PeakEwmaOptions } from '../../src/balancer/peak-ewma.js'

/** A pool `p` with `lines` (YAML, indented under the pool) after its backends line 5. */
const yaml = (lines: string, backends = '[10.0.0.1:80, 10.0.0.2:80]'): string => `listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools:
  p:
    backends: ${backends}
${lines
  .trim()
  .split('\n')
  .map((l) => `    ${l.trim()}`)
  .join('\n')}
`

function issues(text: string): string[] {
  try {
    parseConfig(text, 'x.yaml', {})
  } catch (err) {
    if (err instanceof ConfigError) return err.issues.map((i) => `${i.line}:${i.col} ${i.message}`)
    throw err
  }
  return []
}

const pool = (text: string): ReturnType<typeof parseConfig>['pools'] extends Map<string, infer P> ? P : never => {
  const p = parseConfig(text, 'x.yaml', {}).pools.get('p')
  if (p === undefined) throw new TypeError('no pool p')
  return p
}

t.test('every algorithm is selectable by name, with its defaults', async (t) => {
  for (const alg of ['round-robin', 'least-connections', 'consistent-hash', 'maglev', 'random', 'power-of-two', 'first', 'peak-ewma']) {
    t.equal(pool(yaml(`algorithm: ${alg}`)).algorithm, alg, alg)
  }
  t.same(pool(yaml('algorithm: consistent-hash')).algorithmOptions as ConsistentHashOptions, { key: 'source-ip', vnodes: 160, balanceFactor: 0 })
  t.same(pool(yaml('algorithm: maglev')).algorithmOptions as MaglevOptions, { key: 'source-ip', tableSize: 65537 })
  t.same(pool(yaml('algorithm: peak-ewma')).algorithmOptions as PeakEwmaOptions, { decayMs: 10_000 })
  t.equal(pool(yaml('algorithm: random')).slowStartMs, 0, 'slow start off by default')
})

t.test('hash options are read', async (t) => {
  const ch = pool(yaml('algorithm: consistent-hash\nhash_key: sni\nhash_vnodes: 400\nhash_balance_factor: 1.25')).algorithmOptions as ConsistentHashOptions
  t.same(ch, { key: 'sni', vnodes: 400, balanceFactor: 1.25 })
  const mg = pool(yaml('algorithm: maglev\nhash_key: source-ip-port\ntable_size: 251')).algorithmOptions as MaglevOptions
  t.same(mg, { key: 'source-ip-port', tableSize: 251 })
  t.same(pool(yaml('algorithm: peak-ewma\newma_decay: 2s')).algorithmOptions, { decayMs: 2000 })
  t.equal(pool(yaml('algorithm: round-robin\nslow_start: 30s')).slowStartMs, 30_000)
  t.equal(pool(yaml('algorithm: maglev\nslow_start: off')).slowStartMs, 0)
})

t.test('bad values are reported at their line and column', async (t) => {
  t.same(issues(yaml('algorithm: consistent-hash\nhash_key: source_ip')), ['6:15 pool "p" hash_key "source_ip" is not one of source-ip, source-ip-port, sni; did you mean "source-ip"?'])
  t.match(issues(yaml('algorithm: consistent-hash\nhash_vnodes: 0')), [/^6:18 pool "p" hash_vnodes is 0; it must be from 1 to 10000/])
  t.match(issues(yaml('algorithm: consistent-hash\nhash_balance_factor: 0.5')), [/^6:26 pool "p" hash_balance_factor is 0.5; it must be from 1 to 1000/])
  t.match(issues(yaml('algorithm: consistent-hash\nhash_balance_factor: 125')), [/^6:26 .*multiple of the average load.*HAProxy's hash-balance-factor 125 is written 1.25 here/])
  t.match(issues(yaml('algorithm: consistent-hash\nhash_balance_factor: lots')), [/^6:26 pool "p" hash_balance_factor must be a number such as 1.25, not "lots"/])
  t.match(issues(yaml('algorithm: maglev\ntable_size: 65536')), [/^6:17 pool "p" table_size 65536 is not a prime number; Maglev needs a prime, e.g. 65521 or 65537/])
  t.match(issues(yaml('algorithm: maglev\ntable_size: 13')), [/^6:17 pool "p" table_size 13 is too small for 2 backends/])
  t.match(issues(yaml('algorithm: maglev\ntable_size: 20000000')), [/^6:17 pool "p" table_size is 20000000; it must be from 3 to 9999991/])
  t.match(issues(yaml('algorithm: peak-ewma\newma_decay: 10')), [/^6:17 pool "p" ewma_decay: duration "10" has no unit/])
  t.match(issues(yaml('slow_start: soon')), [/^5:17 pool "p" slow_start: "soon" is not a duration/])
})

t.test('options of another algorithm are refused, naming the algorithms they belong to', async (t) => {
  t.same(issues(yaml('algorithm: round-robin\nhash_key: source-ip')), ['6:5 "hash_key" in pool "p" applies to algorithm consistent-hash or maglev, not round-robin'])
  t.same(issues(yaml('hash_key: source-ip')), ['5:5 "hash_key" in pool "p" applies to algorithm consistent-hash or maglev, not round-robin'], 'the default algorithm too')
  t.same(issues(yaml('algorithm: maglev\nhash_vnodes: 100')), ['6:5 "hash_vnodes" in pool "p" applies to algorithm consistent-hash, not maglev'])
  t.same(issues(yaml('algorithm: consistent-hash\ntable_size: 65537')), ['6:5 "table_size" in pool "p" applies to algorithm maglev, not consistent-hash'])
  t.same(issues(yaml('algorithm: random\newma_decay: 5s')), ['6:5 "ewma_decay" in pool "p" applies to algorithm peak-ewma, not random'])
})

t.test('slow_start with an algorithm that ignores weights is refused', async (t) => {
  t.same(issues(yaml('algorithm: first\nslow_start: 30s')), ['6:5 pool "p": slow_start ramps backends\' weights, which algorithm first does not use; remove slow_start or pick a weighted algorithm'])
  t.same(issues(yaml('algorithm: first\nslow_start: off')), [], 'off is fine')
})

t.test('a ring that would be too large is refused before anything starts', async (t) => {
  const heavy = '[{ address: 10.0.0.1:80, weight: 1000 }, { address: 10.0.0.2:80, weight: 1000 }]'
  t.match(issues(yaml('algorithm: consistent-hash\nhash_vnodes: 5000', heavy)), [/^6:18 pool "p": hash_vnodes 5000 × total weight 2000 makes a ring of 10000000 points, more than 4000000/])
  t.same(issues(yaml('algorithm: consistent-hash\nhash_vnodes: 100', heavy)), [], '100 × 2000 points is fine')
})

t.test('the ring-size limit applies to the default hash_vnodes too, reported at the backends', async (t) => {
  const heavy = `[${Array.from({ length: 30 }, (_, i) => `{ address: 10.0.1.${i}:80, weight: 1000 }`).join(', ')}]`
  t.match(issues(yaml('algorithm: consistent-hash', heavy)), [/^4:15 pool "p": hash_vnodes 160 × total weight 30000 makes a ring of 4800000 points/])
})

t.test("another balancer's algorithm name is refused at its FILE:LINE:COL, naming sluice's", async (t) => {
  const formatted = (text: string): string => {
    try {
      parseConfig(text, 'sluice.yaml', {})
    } catch (err) {
      if (err instanceof ConfigError) return err.format()
      throw err
    }
    return ''
  }
  const all = 'round-robin, least-connections, consistent-hash, maglev, random, power-of-two, first, peak-ewma'
  t.equal(
    formatted(yaml('algorithm: leastconn')),
    `sluice.yaml:5:16: pool "p" algorithm "leastconn" is not one of ${all}; did you mean "least-connections" (HAProxy's leastconn)?`,
  )
  t.equal(
    formatted(yaml('algorithm: source')),
    `sluice.yaml:5:16: pool "p" algorithm "source" is not one of ${all}; did you mean "consistent-hash" with hash_key: source-ip (HAProxy's balance source)?`,
  )
  const hint = (name: string): string => issues(yaml(`algorithm: ${name}`))[0]?.replace(/^.*did you mean /, '') ?? ''
  t.equal(hint('roundrobin'), `"round-robin" (HAProxy's roundrobin)?`)
  t.equal(hint('LeastConn'), `"least-connections" (HAProxy's leastconn)?`, 'case does not matter')
  t.equal(hint('least_conn'), `"least-connections" (nginx's least_conn)?`)
  t.equal(hint('ip_hash'), `"consistent-hash" with hash_key: source-ip (nginx's ip_hash)?`)
  t.equal(hint('ring_hash'), `"consistent-hash" (Envoy's RING_HASH)?`)
  t.equal(hint('least_request'), `"power-of-two" (Envoy's LEAST_REQUEST, which draws two)?`)
  t.equal(hint('wrr'), `"round-robin" (IPVS's wrr; round-robin is weighted)?`)
  t.equal(hint('mh'), `"maglev" (IPVS's mh)?`)
  t.equal(hint('least-connection'), '"least-connections"?', 'a near miss of a name of sluice\'s')
  t.same(issues(yaml('algorithm: weighted-fair')), [`5:16 pool "p" algorithm "weighted-fair" is not one of ${all}`], 'nothing near: no suggestion')
  t.same(issues(yaml('algorithm: leastconn\nhash_key: source-ip')), [`5:16 pool "p" algorithm "leastconn" is not one of ${all}; did you mean "least-connections" (HAProxy's leastconn)?`], 'a suggestion only: the pool is not read as least-connections')
})
