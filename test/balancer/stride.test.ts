import t from 'tap'
import type { Backend } from '../../src/upstream/backend.js'
import type { Balancer, Exclusion, PickContext } from '../../src/balancer/types.js'
import { RoundRobin } from '../../src/balancer/round-robin.js'
import { LeastConnections } from '../../src/balancer/least-connections.js'
import { Rng } from '../../src/balancer/rng.js'
import { SetExclusion, makeBackends } from './helpers.js'

/**
 * StrideBalancer keeps its schedule in two heaps and moves slots between them lazily. This
 * checks it against the rule written out plainly, a scan of every backend per pick: the
 * lightest (least-connections: fewest connections per unit of weight), then among those whose
 * turn has started the one whose turn ends first, else the one whose turn starts first, then
 * join order; a turn taken before its start moves the clock to it. Same arithmetic, so the
 * picks must be the same, one for one, through joins, leaves, weight changes, exclusions and
 * connections opening and closing.
 */
class Plain {
  private readonly slots: { b: Backend; weight: number; base: number; turns: number; order: number }[] = []
  private clockBase = 0
  private picks = 0
  private total = 0
  private clock = 0
  private order = 0

  constructor(
    members: readonly Backend[],
    private readonly byLoad: boolean,
  ) {
    for (const b of members) this.up(b)
  }

  pick(avoid?: Exclusion): Backend | undefined {
    let best: (typeof this.slots)[number] | undefined
    for (const s of this.slots) if (!(avoid?.has(s.b) ?? false) && (best === undefined || this.before(s, best))) best = s
    if (best === undefined) return undefined
    this.picks++
    this.clock = this.clockBase + this.picks / this.total
    const start = best.base + best.turns / best.weight
    if (start > this.clock) {
      this.clockBase = start
      this.clock = start
      this.picks = 0
    }
    best.turns++
    this.behind(best)
    return best.b
  }

  up(b: Backend): void {
    if (this.slots.some((s) => s.b === b)) return
    this.slots.push({ b, weight: b.effectiveWeight, base: this.clock, turns: 0, order: this.order++ })
    this.retotal(b.effectiveWeight)
  }

  down(b: Backend): void {
    const i = this.slots.findIndex((s) => s.b === b)
    if (i < 0) return
    const [s] = this.slots.splice(i, 1)
    this.retotal(-(s?.weight ?? 0))
  }

  reweigh(b: Backend): void {
    const s = this.slots.find((x) => x.b === b)
    if (s === undefined || s.weight === b.effectiveWeight) return
    this.retotal(b.effectiveWeight - s.weight)
    if (s.turns > 0) {
      s.base += (s.turns - 1) / s.weight
      s.turns = 1
    }
    s.weight = b.effectiveWeight
    this.behind(s)
  }

  private behind(s: (typeof this.slots)[number]): void {
    if (s.base + (s.turns + 1) / s.weight < this.clock) {
      s.base = this.clock
      s.turns = 0
    }
  }

  private before(a: (typeof this.slots)[number], b: (typeof this.slots)[number]): boolean {
    if (this.byLoad) {
      const d = a.b.active * b.weight - b.b.active * a.weight
      if (d !== 0) return d < 0
    }
    const sa = a.base + a.turns / a.weight
    const sb = b.base + b.turns / b.weight
    const ra = sa <= this.clock
    const rb = sb <= this.clock
    if (ra !== rb) return ra
    const ka = ra ? a.base + (a.turns + 1) / a.weight : sa
    const kb = rb ? b.base + (b.turns + 1) / b.weight : sb
    return ka < kb || (ka === kb && a.order < b.order)
  }

  private retotal(delta: number): void {
    this.clockBase = this.clock
    this.picks = 0
    this.total = this.slots.length === 0 ? 0 : this.total + delta
  }
}

const ctx: PickContext = { protocol: 'tcp', remoteAddress: '10.0.0.1', remotePort: 1 }

for (const [name, byLoad] of [['round-robin', false], ['least-connections', true]] as const) {
  for (const seed of [1, 2, 3, 4, 5, 6]) {
    t.test(`${name}: the heaps pick exactly what a plain scan picks (seed ${seed})`, async (t) => {
      const rng = new Rng(seed)
      const below = (n: number): number => rng.next() % n
      const members = makeBackends(3 + below(12))
      for (const m of members) m.weight = 1 + below(below(4) === 0 ? 60 : 8)
      const bal: Balancer = byLoad ? new LeastConnections(members) : new RoundRobin(members)
      const plain = new Plain(members, byLoad)
      const inRotation = new Set(members)
      const held: Backend[] = []
      let mismatch = ''
      for (let step = 0; step < 20_000 && mismatch === ''; step++) {
        const r = below(1000)
        const m = members[below(members.length)] as Backend
        if (r < 8) {
          // leaves the rotation, or comes back
          if (inRotation.delete(m)) {
            bal.onBackendDown(m)
            plain.down(m)
          } else {
            inRotation.add(m)
            bal.onBackendUp(m)
            plain.up(m)
          }
        } else if (r < 20) {
          // slow start's ramp, or a new weight
          m.ramp = r < 14 ? 0.1 + below(90) / 100 : 1
          bal.onWeightChange?.(m)
          plain.reweigh(m)
        } else if (byLoad && r < 120 && held.length > 0) {
          const i = below(held.length)
          const b = held[i] as Backend
          held.splice(i, 1)
          b.active--
          bal.onConnectionClose?.(b)
        } else {
          const avoid = r < 60 ? new SetExclusion(new Set([m])) : undefined
          const got = bal.pick(ctx, avoid)
          const want = plain.pick(avoid)
          if (got !== want) mismatch = `step ${step}: picked ${got?.id}, the plain scan ${want?.id}`
          if (byLoad && got !== undefined && r % 3 === 0) {
            got.active++
            held.push(got)
            bal.onConnectionOpen?.(got)
          }
        }
      }
      t.equal(mismatch, '', 'every pick agrees')
      for (const b of held) b.active--
    })
  }
}

t.test('a backend passed over while excluded does not catch up in a burst', async (t) => {
  const [a, b, c] = makeBackends(3) as [Backend, Backend, Backend]
  const bal = new RoundRobin([a, b, c])
  const avoid = new SetExclusion(new Set([a]))
  for (let i = 0; i < 300; i++) bal.pick(ctx, avoid)
  const next: string[] = []
  for (let i = 0; i < 9; i++) next.push(bal.pick(ctx) === a ? 'a' : 'x')
  t.ok(next.filter((x) => x === 'a').length <= 4, `after 300 picks without a, the next 9 give a ${next.filter((x) => x === 'a').length} (${next.join('')})`)
})

t.test('a weight change takes effect from the next turn, without waiting out the old stride', async (t) => {
  const [a, b] = makeBackends(2) as [Backend, Backend]
  a.ramp = 0.1
  const bal = new RoundRobin([a, b])
  // a at 10%: one pick in 11.
  const first: string[] = []
  for (let i = 0; i < 22; i++) first.push(bal.pick(ctx) === a ? 'a' : 'b')
  t.equal(first.filter((x) => x === 'a').length, 2, `at 10%: ${first.join('')}`)
  a.ramp = 1
  bal.onWeightChange(a)
  const after: string[] = []
  for (let i = 0; i < 10; i++) after.push(bal.pick(ctx) === a ? 'a' : 'b')
  t.ok(after.filter((x) => x === 'a').length >= 4, `at full weight again, a takes about half at once: ${after.join('')}`)
})
