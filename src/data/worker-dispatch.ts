import { isMainThread } from 'node:worker_threads'
import type { Registry } from 'prom-client'
import type { BackendConfig, Config } from '../config/types.js'
import { SluiceError, errorMessage } from '../errors.js'
import type { DataPlane } from './data-plane.js'
import type { FromWorker, ToWorker } from '../control/messages.js'

/**
 * Carries out one control-plane message on a data plane and answers it: the same code for the
 * in-process data plane of a one-worker daemon and for a worker thread.
 */
export async function dispatch(plane: DataPlane, registry: Registry, msg: ToWorker, configOf: (m: Extract<ToWorker, { type: 'prepare' }>) => Config, reply: (m: FromWorker) => void): Promise<void> {
  switch (msg.type) {
    case 'prepare': {
      try {
        const ports = await plane.prepare(withMembers(configOf(msg), msg.members), msg.slots, msg.ports)
        reply({ type: 'prepared', seq: msg.seq, ok: true, ports })
      } catch (err) {
        reply({ type: 'prepared', seq: msg.seq, ok: false, code: err instanceof SluiceError ? err.code : 'SLUICE_ERR_RELOAD', message: errorMessage(err) })
      }
      return
    }
    case 'commit':
      plane.commit()
      for (const s of msg.states) plane.backendState(s.pool, s.backend, s.state, false)
      reply({ type: 'committed', seq: msg.seq })
      return
    case 'abort':
      plane.abort()
      return
    case 'backend-state':
      plane.backendState(msg.pool, msg.backend, msg.state, msg.firstCheck, msg.at)
      return
    case 'membership':
      plane.membership(msg.pool, msg.backends, msg.slots, msg.states)
      return
    case 'stats': {
      const snapshot = plane.snapshot()
      const metrics = await registry.getMetricsAsJSON()
      reply({ type: 'stats', seq: msg.seq, snapshot, metrics })
      return
    }
    case 'stop':
      await plane.stop(msg.timeoutMs)
      reply({ type: 'stopped', seq: msg.seq })
      return
    case 'exit':
      // Only a worker thread can exit on its own; the in-process data plane is the process.
      if (!isMainThread) process.exit(msg.code)
      return
  }
}

/**
 * The configuration with each pool's members as the control plane merged them (its
 * `backends`, discovery, run-time changes): a worker parses only the file, which has the first.
 */
export function withMembers(config: Config, members: Record<string, BackendConfig[]> | undefined): Config {
  if (members === undefined) return config
  const pools = new Map(config.pools)
  for (const [name, pc] of config.pools) {
    const m = members[name]
    if (m !== undefined) pools.set(name, { ...pc, backends: m })
  }
  return { ...config, pools }
}
