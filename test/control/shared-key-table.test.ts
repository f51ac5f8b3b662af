import t from 'tap'
import { Worker } from 'node:worker_threads'
import { SharedKeyTable } from '../../src/control/shared-key-table.js'
import { SharedCounters, SlotAllocator } from '../../src/control/shared-counters.js'

t.test('per-key counts with a limit; the last release frees the entry', async (t) => {
  const table = SharedKeyTable.create(64)
  t.equal(table.acquire('10.0.0.1', 2), 'ok')
  t.equal(table.acquire('10.0.0.1', 2), 'ok')
  t.equal(table.acquire('10.0.0.1', 2), 'limit', 'the third is over the limit')
  t.equal(table.acquire('10.0.0.2', 2), 'ok', 'another key has its own count')
  t.equal(table.count('10.0.0.1'), 2)
  t.equal(table.used(), 2)
  table.release('10.0.0.1')
  table.release('10.0.0.1')
  t.equal(table.count('10.0.0.1'), 0)
  t.equal(table.used(), 1, 'an entry whose count reaches 0 is free again')
  table.release('10.0.0.9')
  t.equal(table.used(), 1, 'releasing a key that holds nothing changes nothing')
})

t.test('a flood of distinct keys fills the table and is told so; memory stays what it was', async (t) => {
  const table = SharedKeyTable.create(256)
  let ok = 0
  let full = 0
  for (let i = 0; i < 5000; i++) {
    const r = table.acquire(`198.51.${i >> 8}.${i & 255}`, 10)
    if (r === 'ok') ok++
    else if (r === 'full') full++
  }
  t.ok(ok <= table.capacity, `${ok} keys held in ${table.capacity} entries`)
  t.ok(ok > table.capacity * 0.9, 'the table fills almost completely before saying full')
  t.equal(ok + full, 5000, 'every other attempt is reported full')
  t.equal(table.buffer.byteLength, 256 * 8, 'the buffer never grows')
})

t.test('two worker threads acquiring and releasing the same keys at once keep exact counts', async (t) => {
  const table = SharedKeyTable.create(1024)
  const src = `
    const { workerData, parentPort } = require('node:worker_threads')
    // The real class, from the compiled module (an eval'd worker cannot load TypeScript).
    import(workerData.module).then(({ SharedKeyTable }) => {
      const t = new SharedKeyTable(workerData.buffer)
      let ok = 0
      for (let round = 0; round < 2000; round++) {
        for (let k = 0; k < 20; k++) if (t.acquire('key-' + k, 1000000) === 'ok') ok++
        if (round % 2 === 1) for (let k = 0; k < 20; k++) t.release('key-' + k)
      }
      parentPort.postMessage(ok)
    })
  `
  const module = new URL('../../dist/control/shared-key-table.js', import.meta.url).href
  const run = (): Promise<number> =>
    new Promise((resolve, reject) => {
      const w = new Worker(src, { eval: true, workerData: { buffer: table.buffer, module } })
      w.once('message', (n: number) => resolve(n))
      w.once('error', reject)
    })
  const [a, b] = await Promise.all([run(), run()])
  t.equal(a + b, 2 * 2000 * 20, 'every acquire succeeded')
  for (let k = 0; k < 20; k++) t.equal(table.count(`key-${k}`), 2000, `key-${k}: 2 threads × 1000 net acquires`)
})

t.test('the slot allocator hands out pairs and reuses a released slot only once its counters are zero', async (t) => {
  const counters = SharedCounters.create(8)
  const slots = new SlotAllocator(counters)
  const a = slots.slotOf('p\na')
  const b = slots.slotOf('p\nb')
  t.same([a, b], [0, 2], 'two cells per key')
  t.equal(slots.slotOf('p\na'), a, 'a key keeps its slot')
  counters.add(a, 1)
  slots.release('p\na')
  t.equal(slots.slotOf('p\nc'), 4, 'a released slot with a live count is not reused')
  counters.add(a, -1)
  slots.release('p\nc')
  t.equal(slots.slotOf('p\nd'), 0, 'once back to zero it is')
  t.ok(counters.tryAcquire(6, 1), 'tryAcquire takes the last place')
  t.notOk(counters.tryAcquire(6, 1), 'and refuses beyond it')
  t.equal(slots.slotOf('p\ne'), 4, 'the other released slot')
  t.equal(slots.slotOf('p\nf'), 6, 'the last fresh pair')
  t.throws(() => slots.slotOf('p\ng'), RangeError, 'a full table says so')
})
