import t from 'tap'
import type { Backend } from '../../src/upstream/backend.js'
import type { Balancer } from '../../src/balancer/types.js'
import { balancerNames } from '../../src/balancer/registry.js'
import { SetExclusion, create, makeBackends, spread } from './helpers.js'

/**
 * The contract every algorithm keeps, run against each one the registry knows. An algorithm
 * added to the registry without a profile here fails the first test.
 *
 * `weights`: the relative tolerance within which each backend's share of picks matches its
 * share of the weight (null: the algorithm ignores weights by design). `hash`: whether a
 * client keeps its backend and removing a backend moves only about 1/n of clients. `smooth`:
 * whether the order itself is promised (smooth weighted round-robin; least-connections while
 * no connection is open), not only the counts.
 */
const PROFILES: Record<string, { weights: number | null; hash: boolean; smooth?: boolean }> = {
  'round-robin': { weights: 0.01, hash: false, smooth: true },
  'least-connections': { weights: 0.01, hash: false, smooth: true },
  'consistent-hash': { weights: 0.1, hash: true },
  maglev: { weights: 0.02, hash: true },
  random: { weights: 0.05, hash: false },
  'power-of-two': { weights: 0.05, hash: false },
  first: { weights: null, hash: false },
  'peak-ewma': { weights: 0.05, hash: false },
}

const PICKS = 100_000

t.test('every registered algorithm has a contract profile', async (t) => {
  t.same(balancerNames().filter((n) => PROFILES[n] === undefined), [], 'no algorithm without a profile')
})

for (const name of balancerNames()) {
  const profile = PROFILES[name] ?? { weights: null, hash: false }

  t.test(`${name}: empty pool picks nothing`, async (t) => {
    const bal = create(name, [])
    t.equal(bal.pick({ protocol: 'tcp', remoteAddress: '10.0.0.1', remotePort: 1 }), undefined, 'empty → undefined')
    const members = makeBackends(3)
    const full = create(name, members)
    for (const b of members) full.onBackendDown(b)
    t.same([...spread(full, 100).keys()], ['none'], 'all down → undefined')
  })

  t.test(`${name}: the avoid set is respected`, async (t) => {
    const members = makeBackends(5)
    const bal = create(name, members)
    for (const b of members) {
      const counts = spread(bal, 2000, new SetExclusion(new Set([b])))
      t.notOk(counts.has(b.id), `never picks avoided ${b.id}`)
      t.notOk(counts.has('none'), 'always finds one of the others')
    }
    const last = members[4] as Backend
    t.same([...spread(bal, 2000, new SetExclusion(new Set(members.slice(0, 4)))).keys()], [last.id], 'all but one avoided → always that one')
    t.same([...spread(bal, 500, new SetExclusion(new Set(members))).keys()], ['none'], 'all avoided → undefined')
  })

  t.test(`${name}: backends out of rotation are never picked`, async (t) => {
    const members = makeBackends(4)
    const bal = create(name, members)
    const b0 = members[0] as Backend
    bal.onBackendDown(b0)
    const counts = spread(bal, 5000)
    t.notOk(counts.has(b0.id), 'a down backend gets nothing')
    if (profile.weights === null) t.same([...counts.keys()], [members[1]?.id], 'the next in line takes them all')
    else t.equal(counts.size, 3, 'the other three share the picks')
    bal.onBackendDown(b0)
    t.notOk(spread(bal, 1000).has(b0.id), 'a second down event changes nothing')
    bal.onBackendUp(b0)
    bal.onBackendUp(b0)
    t.ok(spread(bal, 5000).has(b0.id), 'back up: picked again')
  })

  if (profile.weights !== null) {
    const tolerance = profile.weights
    t.test(`${name}: weights honoured within ±${tolerance * 100}%`, async (t) => {
      const members = makeBackends(4).map((b, i) => ((b.weight = i + 1), b))
      const counts = spread(create(name, members), PICKS)
      for (const b of members) {
        const share = (counts.get(b.id) ?? 0) / PICKS
        const want = b.weight / 10
        t.ok(Math.abs(share / want - 1) <= tolerance, `weight ${b.weight}: share ${share.toFixed(4)}, want ${want} ±${tolerance * 100}%`)
      }
    })

    t.test(`${name}: a weight change (slow start's ramp) takes effect`, async (t) => {
      const members = makeBackends(4)
      const bal = create(name, members)
      const b0 = members[0] as Backend
      b0.ramp = 0.25
      bal.onWeightChange?.(b0)
      const share = (spread(bal, PICKS).get(b0.id) ?? 0) / PICKS
      const want = 0.25 / 3.25
      t.ok(Math.abs(share / want - 1) <= Math.max(tolerance, 0.15), `ramp 0.25: share ${share.toFixed(4)}, want ${want.toFixed(4)}`)
      b0.ramp = 1
      bal.onWeightChange?.(b0)
      const back = (spread(bal, PICKS).get(b0.id) ?? 0) / PICKS
      t.ok(Math.abs(back / 0.25 - 1) <= Math.max(tolerance, 0.15), `full weight again: share ${back.toFixed(4)}, want 0.25`)
    })
  } else {
    t.test(`${name}: ignores weights, picks the first usable backend in list order`, async (t) => {
      const members = makeBackends(4).map((b, i) => ((b.weight = 10 - i), (b.position = i), b))
      const bal = create(name, [...members].reverse())
      t.same([...spread(bal, 1000).keys()], [members[0]?.id], 'always the first in list order')
    })
  }

  if (profile.smooth === true) {
    t.test(`${name}: weights 5:1:1 interleave: a b a a c a a, never more than 3 a's in a row`, async (t) => {
      const [a, b, c] = weighted([5, 1, 1]) as [Backend, Backend, Backend]
      const bal = create(name, [a, b, c])
      const seq = sequence(bal, 140, new Map([[a, 'a'], [b, 'b'], [c, 'c']]))
      t.equal(seq.slice(0, 7), 'abaacaa', `the first round: ${seq.slice(0, 7)}`)
      t.equal(longestRun(seq, 'a'), 3, `longest run of a over 140 picks is 3: ${seq}`)
      for (let i = 0; i < 140; i += 7) {
        const round = seq.slice(i, i + 7)
        t.same([count(round, 'a'), count(round, 'b'), count(round, 'c')], [5, 1, 1], `round ${i / 7} is 5:1:1 (${round})`, { diagnostic: false })
      }
      t.notMatch(seq, /aaaa/, 'no four in a row anywhere')
    })

    t.test(`${name}: equal weights rotate in list order`, async (t) => {
      const members = weighted([1, 1, 1, 1])
      const ids = new Map(members.map((m, i) => [m, 'abcd'[i] as string]))
      t.equal(sequence(create(name, members), 12, ids), 'abcdabcdabcd')
    })

    t.test(`${name}: at every pick each backend is within one pick of its exact share`, async (t) => {
      // Weight sets of the issues seen in the field, and a few uneven ones.
      for (const ws of [[5, 1, 1], [4, 2, 1], [6, 2, 1, 1], [10, 1, 1, 1], [3, 3, 1], [17, 5, 3, 1], [100, 1, 1, 1, 1, 1], [22, 10, 48, 3, 41, 1]]) {
        const members = weighted(ws)
        const bal = create(name, members)
        const total = ws.reduce((x, y) => x + y, 0)
        const got = new Map<Backend, number>()
        let worst = 0
        for (let k = 1; k <= 3 * total; k++) {
          const p = bal.pick({ protocol: 'tcp', remoteAddress: '10.0.0.1', remotePort: 1 }) as Backend
          got.set(p, (got.get(p) ?? 0) + 1)
          for (const m of members) worst = Math.max(worst, Math.abs((got.get(m) ?? 0) - (k * m.weight) / total))
        }
        t.ok(worst < 1, `${ws.join(':')}: largest lag ${worst.toFixed(3)} picks`)
        t.same(members.map((m) => got.get(m) ?? 0), ws.map((w) => 3 * w), `${ws.join(':')}: three rounds give exactly 3 × the weights`)
      }
    })
  }

  if (profile.hash) {
    t.test(`${name}: a client keeps its backend; removing 1 of n moves about 1/n of clients`, async (t) => {
      const n = 10
      const keys = 20_000
      const members = makeBackends(n)
      const bal = create(name, members)
      const before = assignIds(bal, keys)
      t.same(assignIds(bal, keys), before, 'the same clients map to the same backends again')
      const gone = members[3] as Backend
      bal.onBackendDown(gone)
      const after = assignIds(bal, keys)
      let moved = 0
      let movedOthers = 0
      for (let k = 0; k < keys; k++) {
        if (before[k] !== after[k]) moved++
        if (before[k] !== gone.id && before[k] !== after[k]) movedOthers++
      }
      t.ok(moved / keys <= 1.35 / n && moved / keys >= 0.65 / n, `moved ${(moved / keys).toFixed(4)} of clients, about 1/${n}`)
      t.ok(movedOthers / keys < 0.01, `clients of the remaining backends mostly stay (${movedOthers} of ${keys} moved)`)
      bal.onBackendUp(gone)
      t.same(assignIds(bal, keys), before, 'the backend comes back: every client returns to where it was')
    })
  }
}

function weighted(ws: number[]): Backend[] {
  return makeBackends(ws.length).map((b, i) => ((b.weight = ws[i] as number), b))
}

/** `n` picks as a string of the backends' letters. */
function sequence(bal: Balancer, n: number, letters: Map<Backend, string>): string {
  let out = ''
  for (let i = 0; i < n; i++) {
    const b = bal.pick({ protocol: 'tcp', remoteAddress: '10.0.0.1', remotePort: 1 })
    out += b === undefined ? '-' : (letters.get(b) ?? '?')
  }
  return out
}

function longestRun(seq: string, ch: string): number {
  let best = 0
  let run = 0
  for (const c of seq) {
    run = c === ch ? run + 1 : 0
    best = Math.max(best, run)
  }
  return best
}

const count = (s: string, ch: string): number => s.split(ch).length - 1

function assignIds(bal: Balancer, keys: number): string[] {
  const out: string[] = []
  for (let k = 0; k < keys; k++) out.push(bal.pick({ protocol: 'tcp', remoteAddress: `10.9.${(k >> 8) & 255}.${k & 255}`, remotePort: 5000 })?.id ?? 'none')
  return out
}
