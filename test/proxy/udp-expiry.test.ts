import t from 'tap'
import { ExpiryWheel, type Expiring } from '../../src/proxy/udp-expiry.js'

class Item implements Expiring {
  expiryPrev: Expiring | undefined
  expiryNext: Expiring | undefined
  expirySlot = -1
  constructor(
    readonly id: number,
    public lastSeen: number,
  ) {}
}

function wheel(timeoutMs: number): { w: ExpiryWheel<Item>; expired: Item[] } {
  const expired: Item[] = []
  const w = new ExpiryWheel<Item>(timeoutMs, (i) => expired.push(i))
  return { w, expired }
}

t.test('an idle item expires after the timeout, late by at most a tick', async (t) => {
  const { w, expired } = wheel(1000)
  t.teardown(() => w.stop())
  const now = Date.now()
  const item = new Item(1, now)
  w.add(item)
  t.equal(w.size, 1)
  w.advance(now + 999)
  t.same(expired, [], 'not before the timeout')
  w.advance(now + 1000 + 1000 / 16 + 1)
  t.same(expired, [item], 'expired within a tick after it')
  t.equal(w.size, 0)
  t.equal(item.expirySlot, -1)
})

t.test('activity (a lastSeen write) postpones expiry to timeout after the last datagram', async (t) => {
  const { w, expired } = wheel(1000)
  t.teardown(() => w.stop())
  const now = Date.now()
  const item = new Item(1, now)
  w.add(item)
  item.lastSeen = now + 800
  w.advance(now + 1100)
  t.same(expired, [], 'active 800ms in: still there at 1100ms')
  t.equal(w.size, 1, 're-filed')
  w.advance(now + 1700)
  t.same(expired, [], 'still there at 1700ms')
  w.advance(now + 1800 + 100)
  t.same(expired, [item], 'gone a timeout after its last datagram')
})

t.test('remove takes an item out in O(1) from the middle of a slot', async (t) => {
  const { w, expired } = wheel(1000)
  t.teardown(() => w.stop())
  const now = Date.now()
  const items = [1, 2, 3].map((i) => new Item(i, now))
  for (const i of items) w.add(i)
  w.remove(items[1]!)
  w.remove(items[1]!)
  t.equal(w.size, 2, 'removing twice is harmless')
  w.advance(now + 5000)
  t.same(expired.map((i) => i.id).sort(), [1, 3])
})

t.test('a long stall catches up without visiting a slot more than once per advance', async (t) => {
  const { w, expired } = wheel(200)
  t.teardown(() => w.stop())
  const now = Date.now()
  const old = new Item(1, now)
  const active = new Item(2, now)
  w.add(old)
  w.add(active)
  active.lastSeen = now + 1_000_000
  w.advance(now + 1_000_050)
  t.same(expired, [old], 'the idle one expired; the one active just now stayed')
  t.equal(w.size, 1)
})

t.test('configure re-files items against a new timeout', async (t) => {
  const { w, expired } = wheel(3_600_000)
  t.teardown(() => w.stop())
  const now = Date.now()
  const item = new Item(1, now)
  w.add(item)
  w.configure(100)
  t.equal(w.timeout, 100)
  t.equal(w.size, 1)
  w.advance(now + 200)
  t.same(expired, [item])
})

t.test('100,000 items: each expires exactly once, in bounded work', async (t) => {
  const { w, expired } = wheel(1000)
  t.teardown(() => w.stop())
  const now = Date.now()
  const n = 100_000
  for (let i = 0; i < n; i++) w.add(new Item(i, now + (i % 1000)))
  t.equal(w.size, n)
  const started = process.hrtime.bigint()
  for (let ms = 0; ms <= 2100; ms += 10) w.advance(now + ms)
  const tookMs = Number(process.hrtime.bigint() - started) / 1e6
  t.equal(expired.length, n, 'all expired')
  t.equal(new Set(expired.map((i) => i.id)).size, n, 'each once')
  t.ok(tookMs < 2000, `advancing through 2s of ticks took ${tookMs.toFixed(1)}ms`)
})
