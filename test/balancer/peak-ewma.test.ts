import t from 'tap'
import type { Backend } from '../../src/upstream/backend.js'
import type { PickContext } from '../../src/balancer/types.js'
import { PeakEwma } from '../../src/balancer/peak-ewma.js'
import { Rng } from '../../src/balancer/rng.js'
import { makeBackends } from './helpers.js'

const ctx: PickContext = { protocol: 'tcp', remoteAddress: '10.0.0.1', remotePort: 1 }

function setup(n = 2, decayMs = 10_000): { bal: PeakEwma; members: Backend[]; clock: { now: number } } {
  const clock = { now: 1000 }
  const members = makeBackends(n)
  return { bal: new PeakEwma(members, { decayMs }, new Rng(7), () => clock.now), members, clock }
}

t.test('the backend with the lower connect latency gets the connections', async (t) => {
  const { bal, members } = setup()
  const [fast, slow] = members as [Backend, Backend]
  bal.onConnectLatency(fast, 1)
  bal.onConnectLatency(slow, 20)
  let toFast = 0
  for (let i = 0; i < 1000; i++) if (bal.pick(ctx) === fast) toFast++
  t.equal(toFast, 1000, 'with nothing held open, the faster always wins')
})

t.test('latency × (active + 1): a fast backend loaded enough loses to a slow idle one', async (t) => {
  const { bal, members } = setup()
  const [fast, slow] = members as [Backend, Backend]
  bal.onConnectLatency(fast, 2)
  bal.onConnectLatency(slow, 10)
  const held: Backend[] = []
  for (let i = 0; i < 60; i++) {
    const b = bal.pick(ctx) as Backend
    b.active++
    held.push(b)
  }
  t.ok(fast.active > slow.active * 3, `the fast one holds most (${fast.active} vs ${slow.active})`)
  t.ok(slow.active > 0, 'but the slow one takes some once the fast one is busy')
  t.ok(Math.abs(fast.active / (slow.active + 1) - 5) < 1.5, `costs balance near the latency ratio 5:1 (${fast.active}:${slow.active})`)
})

t.test('peak: a sample above the average replaces it at once; lower ones blend in', async (t) => {
  const { bal, members, clock } = setup(1)
  const b = members[0] as Backend
  t.equal(bal.latencyOf(b), undefined, 'no samples yet')
  bal.onConnectLatency(b, 5)
  t.equal(bal.latencyOf(b), 5)
  bal.onConnectLatency(b, 50)
  t.equal(bal.latencyOf(b), 50, 'a spike counts in full straight away')
  clock.now += 1000
  bal.onConnectLatency(b, 1)
  const after = bal.latencyOf(b) as number
  const w = Math.exp(-1000 / 10_000)
  t.ok(Math.abs(after - (50 * w + 1 * (1 - w))) < 1e-9, `a faster sample 1 s later blends: ${after.toFixed(3)}`)
})

t.test('without samples the average decays, so an idle slow backend is tried again', async (t) => {
  const { bal, members, clock } = setup(2, 1000)
  const [a, b] = members as [Backend, Backend]
  bal.onConnectLatency(a, 5)
  bal.onConnectLatency(b, 100)
  t.equal(bal.pick(ctx), a)
  clock.now += 10_000
  bal.onConnectLatency(a, 5)
  t.ok((bal.latencyOf(b) as number) < 0.01, 'ten decay periods later b looks fast again')
  t.equal(bal.pick(ctx), b, 'and gets the next connection (a probe)')
})

t.test('never measured: tried first while idle, avoided while it has connections in flight', async (t) => {
  const { bal, members } = setup()
  const [known, fresh] = members as [Backend, Backend]
  bal.onConnectLatency(known, 3)
  t.equal(bal.pick(ctx), fresh, 'idle and unmeasured: cost 0, tried first')
  fresh.active = 1
  t.equal(bal.pick(ctx), known, 'connecting and still unmeasured: avoided')
})

t.test('latency reports for backends that are not members are ignored', async (t) => {
  const { bal, members } = setup()
  bal.onBackendDown(members[0] as Backend)
  bal.onConnectLatency(members[0] as Backend, 3)
  t.equal(bal.latencyOf(members[0] as Backend), undefined)
})
