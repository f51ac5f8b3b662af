import t from 'tap'
import type { Backend } from '../../src/upstream/backend.js'
import { ConsistentHash } from '../../src/balancer/consistent-hash.js'
import { Maglev } from '../../src/balancer/maglev.js'
import { hashBalancer, imbalance, makeBackend, makeBackends, movement, type HashAlgorithm } from '../../bench/hash-quality.js'

/**
 * The measured properties of the two hashing algorithms (issue 3): bench/pick.bench.ts prints
 * the same figures; these tests hold the bounds that docs/algorithms.md quotes.
 */
const ALGS: readonly HashAlgorithm[] = ['consistent-hash', 'maglev']

for (const alg of ALGS) {
  t.test(`${alg}: removing 1 of N backends moves about 1/N of 100k keys`, async (t) => {
    for (const n of [5, 10, 100]) {
      const m = movement(alg, n, 100_000)
      t.ok(m.moved >= m.ideal * 0.75 && m.moved <= m.ideal * 1.6, `N=${n}: moved ${(m.moved * 100).toFixed(2)}% (1/N = ${(m.ideal * 100).toFixed(2)}%)`)
      if (alg === 'consistent-hash') t.equal(m.extra, 0, `N=${n}: no key of a remaining backend moves`)
      else t.ok(m.extra < 0.01, `N=${n}: keys of remaining backends that moved: ${(m.extra * 100).toFixed(3)}% (< 1%)`)
    }
  })
}

t.test('imbalance over 1M keys: max/mean keys per backend', async (t) => {
  const ring10 = imbalance('consistent-hash', 10, 1_000_000)
  const ring100 = imbalance('consistent-hash', 100, 1_000_000)
  const maglev10 = imbalance('maglev', 10, 1_000_000)
  const maglev100 = imbalance('maglev', 100, 1_000_000)
  t.ok(ring10 < 1.25, `ring, 160 vnodes, N=10: ${ring10.toFixed(3)}`)
  t.ok(ring100 < 1.3, `ring, 160 vnodes, N=100: ${ring100.toFixed(3)}`)
  t.ok(maglev10 < 1.02, `maglev, M=65537, N=10: ${maglev10.toFixed(3)}`)
  t.ok(maglev100 < 1.05, `maglev, M=65537, N=100: ${maglev100.toFixed(3)}`)
  t.ok(imbalance('consistent-hash', 100, 1_000_000, { vnodes: 1000 }) < ring100, 'more vnodes, better balance')
})

function shuffled<T>(items: readonly T[], seed: number): T[] {
  const out = [...items]
  let s = seed
  for (let i = out.length - 1; i > 0; i--) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0
    const j = s % (i + 1)
    ;[out[i], out[j]] = [out[j] as T, out[i] as T]
  }
  return out
}

t.test('two instances given the same backends in a different order build identical tables', async (t) => {
  const ids = makeBackends(50).map((b) => b.id)
  // Separate Backend objects per instance, as two processes would have.
  const instance = (order: readonly string[]): Backend[] => order.map((id) => makeBackend(id))
  const a = instance(ids)
  const b = instance(shuffled(ids, 7))
  t.not(a.map((x) => x.id).join(), b.map((x) => x.id).join(), 'the two lists really are in different orders')

  const ringA = hashBalancer('consistent-hash', a) as ConsistentHash
  const ringB = hashBalancer('consistent-hash', []) as ConsistentHash
  for (const x of b) ringB.onBackendUp(x)
  ringA.ring.prepare()
  ringB.ring.prepare()
  t.equal(ringA.ring.size, 50 * 160)
  t.equal(ringSignature(ringA), ringSignature(ringB), 'identical rings (every point and its owner)')

  const magA = hashBalancer('maglev', a) as Maglev
  const magB = hashBalancer('maglev', b) as Maglev
  magA.rebuild()
  magB.rebuild()
  t.equal(maglevSignature(magA), maglevSignature(magB), 'identical Maglev tables (every slot)')

  // Churn on one instance (down and up again) ends in the same table too.
  const x = b[10] as Backend
  magB.onBackendDown(x)
  magB.rebuild()
  magB.onBackendUp(x)
  magB.rebuild()
  t.equal(maglevSignature(magA), maglevSignature(magB), 'after a backend left and came back: still identical')
})

t.test('weighted Maglev tables are order-independent too', async (t) => {
  const a = makeBackends(20).map((b, i) => ((b.weight = 1 + (i % 4)), b))
  const b = shuffled(makeBackends(20).map((b, i) => ((b.weight = 1 + (i % 4)), b)), 3)
  const magA = hashBalancer('maglev', a) as Maglev
  const magB = hashBalancer('maglev', b) as Maglev
  magA.rebuild()
  magB.rebuild()
  t.equal(maglevSignature(magA), maglevSignature(magB))
})

function ringSignature(c: ConsistentHash): string {
  const parts: string[] = []
  for (let i = 0; i < c.ring.size; i++) parts.push(`${c.ring.hashAt(i)}>${c.ring.ownerAt(i).id}`)
  return parts.join(',')
}

function maglevSignature(m: Maglev): string {
  const parts: string[] = []
  for (let i = 0; i < m.table.size; i++) parts.push(m.table.backends[m.table.indexAt(i)]?.id ?? '-')
  return parts.join(',')
}
