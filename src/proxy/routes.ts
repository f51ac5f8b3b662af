import type { RouteConfig } from '../config/types.js'
import { CidrSet } from '../config/cidr.js'

const LABEL = '[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?'
const HOST = new RegExp(`^${LABEL}(?:\\.${LABEL})*$`)

/** Whether `name` is a lower-case host name, or `*.` followed by one (a wildcard). */
export function isSniPattern(name: string): boolean {
  if (name.length === 0 || name.length > 253) return false
  return HOST.test(name.startsWith('*.') ? name.slice(2) : name)
}

/** Whether `sni` (lower case) matches `pattern`: equal, or under the suffix of `*.suffix`. */
export function sniMatches(pattern: string, sni: string): boolean {
  if (pattern.charCodeAt(0) !== 42) return pattern === sni
  // `*.example.com`: every name ending in `.example.com` (one label or more), not the bare suffix.
  return sni.length > pattern.length - 1 && sni.endsWith(pattern.slice(1))
}

interface CompiledRoute {
  sni: string | undefined
  source: CidrSet | undefined
  pool: string
}

/**
 * A listener's `routes`, compiled once per configuration: the first route whose every
 * condition matches names the pool. A route with an `sni` condition never matches a
 * connection without a server name.
 */
export class Router {
  private readonly routes: CompiledRoute[]
  /** Whether any route looks at the server name (so it is worth reading one). */
  readonly usesSni: boolean

  constructor(routes: readonly RouteConfig[]) {
    this.routes = routes.map((r) => ({
      sni: r.sni,
      source: r.source === undefined ? undefined : new CidrSet([r.source]),
      pool: r.pool,
    }))
    this.usesSni = routes.some((r) => r.sni !== undefined)
  }

  get size(): number {
    return this.routes.length
  }

  /** The pool of the first matching route, or undefined for the listener's default pool. */
  pick(sni: string | undefined, address: string): string | undefined {
    for (const r of this.routes) {
      if (r.sni !== undefined && (sni === undefined || !sniMatches(r.sni, sni))) continue
      if (r.source !== undefined && !r.source.has(address)) continue
      return r.pool
    }
    return undefined
  }
}
