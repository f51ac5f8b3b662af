import t from 'tap'
import { Registry } from 'prom-client'
import { Metrics } from '../../src/metrics/metrics.js'
import { Pool } from '../../src/upstream/pool.js'
import type { PoolConfig } from '../../src/config/types.js'
import { SharedCounters } from '../../src/control/shared-counters.js'
import { PoolHealth } from '../../src/health/pool-health.js'
import { createLogger } from '../../src/log.js'
import { LogSink } from '../helpers/daemon.js'

/** The shared counters as the control plane may use them: reading only. */
class ReadOnlyCounters extends SharedCounters {
  override add(): number {
    throw new Error('the control plane wrote a shared counter (add)')
  }

  override store(): void {
    throw new Error('the control plane wrote a shared counter (store)')
  }

  override tryAcquire(): boolean {
    throw new Error('the control plane wrote a shared counter (tryAcquire)')
  }
}

const cfg: PoolConfig = {
  name: 'p',
  algorithm: 'round-robin',
  algorithmOptions: undefined,
  backends: [1, 2].map((port) => ({ address: `127.0.0.1:${port}`, host: '127.0.0.1', port, weight: 1, backup: false, maxConnections: 0 })),
  connectTimeoutMs: 1000,
  retries: 0,
  slowStartMs: 0,
  passive: { maxFailures: 3, ejectionTimeMs: 20 },
}

t.test('per-worker load has one writer: an ejection and its end leave the shared counts to the data path', async (t) => {
  const buffer = SharedCounters.create(8).buffer
  const data = new Pool(cfg, new Metrics(new Registry()), undefined, 'data')
  const control = new Pool(cfg, new Metrics(new Registry()), undefined, 'control')
  for (const [i, b] of data.backends.entries()) b.bindShared(new SharedCounters(buffer), 2 * i)
  for (const [i, b] of control.backends.entries()) b.bindShared(new ReadOnlyCounters(buffer), 2 * i)
  // The daemon's wiring: decided state goes to the data plane; failed connects come back.
  control.onStateChange = (b, firstCheck) => data.setState(data.find(b.id)!, b.state, firstCheck, Date.now())
  const logs = new LogSink()
  const health = new PoolHealth(control, createLogger('info', logs), new Metrics(new Registry()))
  await health.start()
  t.teardown(() => health.close())
  data.onConnectFailure = (b, reason) => control.onConnectFailure?.(control.find(b.id)!, reason)

  const [db] = data.backends
  const [cb] = control.backends
  if (db === undefined || cb === undefined) throw new TypeError('two backends')
  for (let i = 0; i < 3; i++) {
    db.failedOnce()
    data.onConnectFailure(db, 'ECONNREFUSED')
  }
  t.equal(cb.state, 'down', 'ejected by the control plane at the third failure')
  t.equal(db.state, 'down', 'and the data plane obeys')
  t.equal(cb.consecutiveFailures, 3, 'the control plane reads the count the data path kept')
  await logs.waitFor((l) => typeof l.msg === 'string' && l.msg.endsWith('ejection over, trying it again'), 5000)
  t.equal(db.state, 'up', 'back in the rotation after ejection_time')
  t.equal(cb.consecutiveFailures, 0, 'its count started anew, by the data plane\'s pool as it re-entered the rotation')
  db.addActive(1)
  t.equal(cb.active, 1, 'active connections: counted by the data path, read by the control plane')
})
