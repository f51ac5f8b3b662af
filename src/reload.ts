import { loadConfig } from './config/load.js'
import { ConfigError, SluiceError, errorMessage, type ErrorCode } from './errors.js'
import type { Config } from './config/types.js'
import { ReloadWhileStopping, type Reloadable } from './control/control-api.js'

/** What happened to one reload, for the log, the admin API and `sluice reload`. */
export interface ReloadOutcome {
  ok: boolean
  /**
   * The label it is counted under in sluice_config_reloads_total: `success`; `failure` (a bad
   * file, or a change that could not be applied); `refused` (sluice is stopping).
   */
  result: ReloadResult
  file: string
  /** Who asked: SIGHUP or POST /api/reload. */
  trigger: 'signal' | 'api'
  /** On failure: SLUICE_ERR_CONFIG (bad file), SLUICE_ERR_CONFIG_READ, or the apply error's code. */
  code?: ErrorCode
  /** One line for people. */
  message: string
  /** A bad file's problems, one `FILE:LINE:COL: message` each. */
  problems: string[]
  /** After a good reload: what now runs. */
  summary?: { listeners: number; pools: number; backends: number }
  duration_ms: number
}

export type ReloadResult = 'success' | 'failure' | 'refused'

/** Reloads of one daemon run one after the other: a SIGHUP during an API reload waits its turn. */
const queues = new WeakMap<Reloadable, Promise<unknown>>()

/**
 * Re-reads `file`, validates it, and applies it to `daemon` as a diff. The one path for both
 * SIGHUP and POST /api/reload: a file that does not validate, or a diff that cannot be applied
 * (a new port in use), changes nothing. Counted in sluice_config_reloads_total{result}.
 */
export function reloadFromFile(daemon: Reloadable, file: string, trigger: ReloadOutcome['trigger']): Promise<ReloadOutcome> {
  // A stopping daemon refuses at once, without waiting for the turn of a reload in flight.
  if (daemon.stopping) return Promise.resolve(refuse(daemon, file, trigger, Date.now()))
  const prev = queues.get(daemon) ?? Promise.resolve()
  const next = prev.then(() => reloadNow(daemon, file, trigger))
  queues.set(daemon, next.catch(() => undefined))
  return next
}

async function reloadNow(daemon: Reloadable, file: string, trigger: ReloadOutcome['trigger']): Promise<ReloadOutcome> {
  const started = Date.now()
  if (daemon.stopping) return refuse(daemon, file, trigger, started)
  const log = daemon.log
  let next: Config
  try {
    next = loadConfig(file)
  } catch (err) {
    daemon.metrics.configReloadsTotal.inc({ result: 'failure' })
    const problems = err instanceof ConfigError ? err.issues.map((i) => `${i.file}:${i.line}:${i.col}: ${i.message}`) : []
    const detail = err instanceof ConfigError ? err.format() : errorMessage(err)
    const code: ErrorCode = err instanceof SluiceError ? err.code : 'SLUICE_ERR_RELOAD'
    log.error({ code, file, trigger, problems: problems.length > 0 ? problems : undefined }, `reload refused, the running configuration stays: ${detail}`)
    const message = err instanceof ConfigError ? `${file}: ${problems.length} problem${problems.length === 1 ? '' : 's'}; nothing was changed` : errorMessage(err)
    return { ok: false, result: 'failure', file, trigger, code, message, problems, duration_ms: Date.now() - started }
  }
  try {
    await daemon.reload(next)
  } catch (err) {
    // The stop began while the new listeners were being bound: they were closed again.
    if (err instanceof ReloadWhileStopping) return refuse(daemon, file, trigger, started)
    daemon.metrics.configReloadsTotal.inc({ result: 'failure' })
    const code: ErrorCode = err instanceof SluiceError ? err.code : 'SLUICE_ERR_RELOAD'
    log.error({ code, file, trigger }, `reload failed, the running configuration stays: ${errorMessage(err)}`)
    return { ok: false, result: 'failure', file, trigger, code, message: `reload failed, nothing was changed: ${errorMessage(err)}`, problems: [], duration_ms: Date.now() - started }
  }
  daemon.metrics.configReloadsTotal.inc({ result: 'success' })
  const backends = [...next.pools.values()].reduce((n, p) => n + p.backends.length, 0)
  const summary = { listeners: next.listeners.length, pools: next.pools.size, backends }
  return {
    ok: true,
    result: 'success',
    file,
    trigger,
    message: `${file}: reloaded (${summary.listeners} listener${summary.listeners === 1 ? '' : 's'}, ${summary.pools} pool${summary.pools === 1 ? '' : 's'}, ${backends} backend${backends === 1 ? '' : 's'})`,
    problems: [],
    summary,
    duration_ms: Date.now() - started,
  }
}

/** A reload asked of a stopping daemon: one warning, counted as `refused`, nothing changed. */
function refuse(daemon: Reloadable, file: string, trigger: ReloadOutcome['trigger'], started: number): ReloadOutcome {
  const err = new ReloadWhileStopping()
  daemon.metrics.configReloadsTotal.inc({ result: 'refused' })
  daemon.log.warn({ code: err.code, file, trigger }, err.message)
  return { ok: false, result: 'refused', file, trigger, code: err.code, message: err.message, problems: [], duration_ms: Date.now() - started }
}
