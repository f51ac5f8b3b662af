import t from 'tap'
import { TimerWheel, type Deadline } from '../../src/proxy/timer-wheel.js'

function item(fired: string[], name: string, onDeadline?: () => void): Deadline & { name: string } {
  return {
    name,
    deadlineAt: 0,
    deadlinePrev: undefined,
    deadlineNext: undefined,
    deadlineSlot: -1,
    onDeadline: onDeadline ?? (() => fired.push(name)),
  }
}

t.test('deadlines fire once, at or after their time and within a tick; cancel and reschedule are O(1)', async (t) => {
  let now = 1_000
  const wheel = new TimerWheel(10, 64, () => now)
  t.teardown(() => wheel.stop())
  const fired: string[] = []
  const a = item(fired, 'a')
  const b = item(fired, 'b')
  const c = item(fired, 'c')
  const far = item(fired, 'far')
  wheel.schedule(a, 1_050)
  wheel.schedule(b, 1_050)
  wheel.schedule(c, 1_200)
  // Further than one turn of the wheel (64 x 10 ms): it stays filed through the turns before.
  wheel.schedule(far, 1_000 + 64 * 10 * 3 + 5)
  t.equal(wheel.size, 4)
  wheel.cancel(b)
  now = 1_049
  wheel.advance(now)
  t.same(fired, [], 'nothing before its time')
  now = 1_060
  wheel.advance(now)
  t.same(fired, ['a'], 'a fires; b was cancelled')
  wheel.schedule(c, 1_300)
  now = 1_250
  wheel.advance(now)
  t.same(fired, ['a'], 'c was moved later')
  for (now = 1_250; now < 2_900; now += 10) wheel.advance(now)
  t.same(fired, ['a', 'c'], 'far did not fire on the earlier turns of the wheel')
  now = 2_960
  wheel.advance(now)
  t.same(fired, ['a', 'c', 'far'])
  t.equal(wheel.size, 0)
})

t.test('a handler may cancel or schedule others in the same slot', async (t) => {
  let now = 0
  const wheel = new TimerWheel(10, 16, () => now)
  t.teardown(() => wheel.stop())
  const fired: string[] = []
  const victim = item(fired, 'victim')
  const later = item(fired, 'later')
  const killer = item(fired, 'killer', () => {
    fired.push('killer')
    wheel.cancel(victim)
    wheel.schedule(later, now)
  })
  wheel.schedule(victim, 100)
  wheel.schedule(killer, 100)
  now = 110
  wheel.advance(now)
  t.same(fired, ['killer'], 'the cancelled one does not fire')
  now = 120
  wheel.advance(now)
  t.same(fired, ['killer', 'later'], 'one scheduled in the past fires on the next tick')
})

t.test('the timer runs only while something is scheduled, and fires on its own', async (t) => {
  const wheel = new TimerWheel(5, 128)
  const fired: string[] = []
  // The wheel's timer does not keep a process alive (its sockets do): this test holds it open.
  const hold = setTimeout(() => {}, 5000)
  const done = new Promise<void>((resolve) => wheel.schedule(item(fired, 'x', () => resolve()), performance.now() + 20))
  await done
  clearTimeout(hold)
  t.equal(wheel.size, 0)
})
