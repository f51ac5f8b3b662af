import t from 'tap'
import { Writable } from 'node:stream'
import { Registry } from 'prom-client'
import { parseConfig } from '../../src/config/load.js'
import { SharedCounters } from '../../src/control/shared-counters.js'
import type { FromWorker } from '../../src/control/messages.js'
import { DataPlane } from '../../src/data/data-plane.js'
import { dispatch } from '../../src/data/worker-dispatch.js'
import { createLogger } from '../../src/log.js'

/*
 * A scrape or status request costs each worker one stats reply, built and cloned on the
 * worker's event loop (the data plane's). With thousands of backends it must stay small: no
 * per-backend metric series in the worker's registry, and per-backend counts in flat arrays.
 */
t.test('a worker\'s stats reply: no per-backend series, and per-backend counts only for backends with connections', async (t) => {
  const big = Array.from({ length: 10_000 }, (_, i) => `"127.1.${(i >> 8) & 255}.${i & 255}:9"`).join(', ')
  const config = parseConfig(`relay: js\nlisteners: [{ name: l, listen: "127.0.0.1:0", pool: big }]\npools:\n  big: { backends: [${big}] }\n`, 'w.yaml', {})
  const registry = new Registry()
  const quiet = new Writable({ write: (_c, _e, cb) => cb() })
  const plane = new DataPlane({ id: 1, log: createLogger('warn', quiet), registry, counters: SharedCounters.create(1 << 16), shared: false, report: () => {} })
  t.teardown(() => plane.destroy())
  await plane.prepare(config, {}, {})
  plane.commit()
  const stats = async (): Promise<Extract<FromWorker, { type: 'stats' }>> => {
    let reply: FromWorker | undefined
    await dispatch(plane, registry, { type: 'stats', seq: 1 }, () => config, (m) => (reply = m))
    if (reply?.type !== 'stats') throw new TypeError('no stats reply')
    return reply
  }
  const idle = await stats()
  t.same(idle.snapshot.backends, [], '10,000 backends without connections: nothing per backend')
  t.ok(JSON.stringify(idle).length < 50_000, `the whole reply is ${JSON.stringify(idle).length} bytes as JSON`)

  const pool = plane.pools.get('big')!
  pool.backends.forEach((b, i) => {
    b.total = i + 2
    b.established = i + 1
  })
  const busy = await stats()
  const series = busy.metrics.find((m) => m.name === 'sluice_backend_connections_total')
  t.same(series?.values, [], 'sluice_backend_connections_total has no series in the worker\'s registry')
  t.equal(busy.snapshot.backends.length, 1, 'one entry for the pool')
  const share = busy.snapshot.backends[0]!
  t.equal(share.backends.length, 10_000)
  t.equal(share.backends[9_999], pool.backends[9_999]!.id)
  t.same([share.totals[9_999], share.established[9_999]], [10_001, 10_000], 'its counts, in flat arrays beside the ids')
})
