import type { Logger } from '../log.js'
import type { LogThrottle } from '../log-throttle.js'
import type { SourceRefusal } from './source-gate.js'

const CODES: Record<SourceRefusal, 'SLUICE_ERR_ACCESS_DENIED' | 'SLUICE_ERR_SOURCE_CONNECTIONS' | 'SLUICE_ERR_SOURCE_RATE'> = {
  access_denied: 'SLUICE_ERR_ACCESS_DENIED',
  source_connections: 'SLUICE_ERR_SOURCE_CONNECTIONS',
  source_rate: 'SLUICE_ERR_SOURCE_RATE',
}

const WHY: Record<SourceRefusal, string> = {
  access_denied: 'not allowed by access',
  source_connections: 'over limits.per_source_connections',
  source_rate: 'over limits.per_source_rate',
}

/**
 * The summary line of refusals by `access` and `limits`: at most one a second per listener
 * and reason, with how many were held back since the last (`suppressed`) and the latest
 * client, never a line per refused client (a flood must not become a flood of log lines).
 * The counting is the caller's (sluice_rejected_connections_total).
 */
export function reportSourceRefusal(owner: { log: Logger; throttle: LogThrottle; config: { name: string } }, reason: SourceRefusal, client: string): void {
  const suppressed = owner.throttle.take(`source:${reason}`)
  if (suppressed === false) return
  const name = owner.config.name
  owner.log.warn({ code: CODES[reason], listener: name, reason, client, suppressed }, `listener ${name} refused ${suppressed + 1} client(s) in the last second or more: ${WHY[reason]} (latest ${client})`)
}

export function sourceRefusalCode(reason: SourceRefusal): 'SLUICE_ERR_ACCESS_DENIED' | 'SLUICE_ERR_SOURCE_CONNECTIONS' | 'SLUICE_ERR_SOURCE_RATE' {
  return CODES[reason]
}
