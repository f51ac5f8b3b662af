import t from 'tap'
import { SharedRateTable } from '../../src/control/shared-rate-table.js'

const S = 1_000_000n

t.test('a bucket holds burst tokens and refills at the rate; a refusal takes none', async (t) => {
  const table = SharedRateTable.create(64)
  const t0 = 1_000n * S
  for (let i = 0; i < 5; i++) t.equal(table.take('a', 5, 5, t0), 'ok', `token ${i + 1} of 5`)
  t.equal(table.take('a', 5, 5, t0), 'limit', 'the sixth at once is refused')
  t.equal(table.take('a', 5, 5, t0 + 100_000n), 'limit', 'still empty 100 ms later (one token per 200 ms)')
  t.equal(table.take('a', 5, 5, t0 + 200_000n), 'ok', 'a token back after 200 ms')
  t.equal(table.take('a', 5, 5, t0 + 200_000n), 'limit', 'the refused attempts took nothing, and this took the one')
  t.equal(table.take('b', 5, 5, t0), 'ok', 'another key has its own bucket')
  t.equal(table.take('a', 5, 5, t0 + 10n * S), 'ok')
  let n = 1
  while (table.take('a', 5, 5, t0 + 10n * S) === 'ok') n++
  t.equal(n, 5, 'a long pause refills to the burst, no more')
})

t.test('entries whose bucket is full again are free: a flood fills the table only while it lasts', async (t) => {
  const table = SharedRateTable.create(16)
  const t0 = 5_000n * S
  let full = 0
  for (let i = 0; i < 64; i++) if (table.take(`k${i}`, 1, 1, t0) === 'full') full++
  t.equal(full, 64 - 16, 'a table of 16 holds 16 buckets at once; the rest is reported full')
  t.equal(table.used(t0), 16)
  t.equal(table.take('late', 1, 1, t0 + 2n * S), 'ok', 'after their buckets refilled, the entries are free again')
  table.sweep(16, t0 + 2n * S)
  t.equal(table.used(t0 + 2n * S), 1, 'a sweep clears the refilled ones')
})

t.test('time wraps modulo 2^40 microseconds without harm', async (t) => {
  const table = SharedRateTable.create(16)
  const wrap = 1n << 40n
  const before = wrap - 100n
  t.equal(table.take('w', 10, 1, before), 'ok')
  t.equal(table.take('w', 10, 1, before + 50_000n), 'limit', 'across the wrap the bucket is still empty')
  t.equal(table.take('w', 10, 1, before + 100_001n), 'ok', 'and refills on time')
})
