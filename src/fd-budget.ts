import { closeSync, openSync, readFileSync, readdirSync } from 'node:fs'
import type { Config } from './config/types.js'
import type { Logger } from './log.js'
import { errnoCode } from './errors.js'

/**
 * Descriptors: what sluice needs for its configuration, what the process may open, and a few
 * held in reserve. Running out of them (or of kernel socket memory) is sluice's own
 * condition, never a backend's: these errors never count against a backend.
 */

/** errno codes that mean this host or process is out of a resource, not that the peer failed. */
export const LOCAL_EXHAUSTION: ReadonlySet<string> = new Set(['EMFILE', 'ENFILE', 'ENOBUFS', 'ENOMEM'])

/** The errno when `err` is local exhaustion (EMFILE, ENFILE, ENOBUFS, ENOMEM), else undefined. */
export function localExhaustion(err: unknown): string | undefined {
  const code = errnoCode(err)
  return code !== undefined && LOCAL_EXHAUSTION.has(code) ? code : undefined
}

/** A health probe's failure detail (`connect EMFILE`) that is local exhaustion, not the backend's. */
export function localProbeFailure(detail: string): boolean {
  const m = /^connect (E[A-Z]+)$/.exec(detail)
  return m !== null && LOCAL_EXHAUSTION.has(m[1] ?? '')
}

/** Descriptors kept open on /dev/null per data plane, let go when the rest run out (see FdReserve). */
export const RESERVE_DESCRIPTORS = 8

/**
 * Descriptors that must be free, beyond the reserve, before paused listeners accept again:
 * room for the backend connections of the clients waiting, so accepting does not at once
 * run out again.
 */
export const HEADROOM_DESCRIPTORS = 16

/** What the process holds besides connections: Node, libuv, worker threads, log, admin API. */
export const BASE_DESCRIPTORS = 64

/** The soft RLIMIT_NOFILE of this process (Linux /proc/self/limits), or undefined when unknown or unlimited. */
export function openFilesLimit(limitsText?: string): number | undefined {
  let text = limitsText
  if (text === undefined) {
    try {
      text = readFileSync('/proc/self/limits', 'utf8')
    } catch {
      return undefined
    }
  }
  const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(text)
  if (m === null) return undefined
  const soft = Number(m[1])
  return Number.isSafeInteger(soft) && soft > 0 ? soft : undefined
}

/** Descriptors this process holds now (Linux /proc/self/fd), or undefined when unknown. */
export function openDescriptors(): number | undefined {
  try {
    // The directory handle that reads it is one of them.
    return readdirSync('/proc/self/fd').length - 1
  } catch {
    return undefined
  }
}

/** One line of the estimate: a listener and the descriptors its limit can take. */
export interface DescriptorNeed {
  listener: string
  /** `max_connections` (tcp) or `udp.max_sessions` (udp, session mode). */
  key: string
  limit: number
  descriptors: number
}

/**
 * Descriptors the configuration can make sluice hold at once: two per TCP connection (client
 * and backend), one per UDP session (its connected upstream socket); dns mode holds a few
 * shared sockets per backend only.
 */
export function descriptorNeeds(config: Config): DescriptorNeed[] {
  const needs: DescriptorNeed[] = []
  for (const l of config.listeners) {
    if (l.protocol === 'tcp') needs.push({ listener: l.name, key: 'max_connections', limit: l.maxConnections, descriptors: 2 * l.maxConnections })
    else if (l.udp.mode === 'session') needs.push({ listener: l.name, key: 'udp.max_sessions', limit: l.udp.maxSessions, descriptors: l.udp.maxSessions })
  }
  return needs
}

/**
 * A warning at start-up (and after a reload) when the open-files limit cannot hold what the
 * configuration allows: then sluice runs out of descriptors before it reaches its own limits.
 * Returns the line's fields (for tests), or undefined when the limit is enough or unknown.
 */
export function warnDescriptorLimit(config: Config, log: Logger, limit = openFilesLimit()): Record<string, unknown> | undefined {
  if (limit === undefined) return undefined
  const needs = descriptorNeeds(config)
  const total = needs.reduce((n, x) => n + x.descriptors, 0) + BASE_DESCRIPTORS + RESERVE_DESCRIPTORS * config.workers
  if (total <= limit) return undefined
  const biggest = [...needs].sort((a, b) => b.descriptors - a.descriptors)[0]
  const what = needs.map((x) => `${x.listener} ${x.key} ${x.limit}`).join(', ')
  const fields = { code: 'SLUICE_ERR_RESOURCE_EXHAUSTED', resource: 'fd', open_files_limit: limit, descriptors_needed: total, listeners: needs }
  log.warn(
    fields,
    `the open-files limit (${limit}) is too low for this configuration (${what}: up to ${total} descriptors with sluice's own); ` +
      `raise it (LimitNOFILE= in the systemd unit, ulimit -n) or lower ${biggest?.key ?? 'max_connections'}` +
      `${biggest !== undefined ? ` of listener ${biggest.listener}` : ''}: when descriptors run out, sluice pauses accepting until some are free`,
  )
  return fields
}

/**
 * A few descriptors held open on /dev/null. When the rest run out they are let go, so the
 * admin API (and the connections sluice holds) still have room; they are taken back before
 * listeners accept again, so getting them back is the test that descriptors are free.
 */
export class FdReserve {
  private readonly fds: number[] = []

  constructor(private readonly size = RESERVE_DESCRIPTORS) {
    this.refill()
  }

  get held(): number {
    return this.fds.length
  }

  /** Closes every reserved descriptor (they are free for others now). */
  release(): void {
    for (const fd of this.fds.splice(0)) {
      try {
        closeSync(fd)
      } catch {
        // Already closed: nothing to give back.
      }
    }
  }

  /**
   * Takes the reserve back: true when it is whole (that many descriptors were free). All or
   * nothing, so a reserve that cannot be whole takes none of the few descriptors left.
   */
  refill(): boolean {
    while (this.fds.length < this.size) {
      try {
        this.fds.push(openSync('/dev/null', 'r'))
      } catch {
        this.release()
        return false
      }
    }
    return true
  }

  /** True when `n` more descriptors can be opened now (they are closed again at once). */
  headroom(n: number): boolean {
    const opened: number[] = []
    try {
      while (opened.length < n) opened.push(openSync('/dev/null', 'r'))
      return true
    } catch {
      return false
    } finally {
      for (const fd of opened) closeSync(fd)
    }
  }

  close(): void {
    this.release()
  }
}
