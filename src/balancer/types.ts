import type { Backend } from '../upstream/backend.js'
import type { ConfigReader, MapView } from '../config/reader.js'

/** What a balancer may look at to pick: kept tiny so TCP and UDP share every algorithm. */
export interface PickContext {
  protocol: 'tcp' | 'udp'
  remoteAddress: string
  remotePort: number
  sni?: string
}

/** Backends a pick must skip: already tried for this connection, or full. */
export interface Exclusion {
  has(backend: Backend): boolean
}

/**
 * An algorithm over the backends currently in rotation. Membership changes arrive as
 * `onBackendUp`/`onBackendDown`; the algorithm keeps whatever structure it needs and updates
 * it on those events, never on every pick.
 */
export interface Balancer {
  /** The backend for a new connection, or undefined when every member is excluded. Never throws. */
  pick(ctx: PickContext, avoid?: Exclusion): Backend | undefined
  /** The backend joined the rotation. */
  onBackendUp(backend: Backend): void
  /** The backend left the rotation (down, draining, disabled or removed). */
  onBackendDown(backend: Backend): void
  /** The backend's `effectiveWeight` changed (a reload, or slow start ramping it up). */
  onWeightChange?(backend: Backend): void
  onConnectionOpen?(backend: Backend): void
  onConnectionClose?(backend: Backend): void
  /**
   * `b`'s active count changed without this balancer opening or closing the connection (another
   * worker did): re-key it. Only load-ordered algorithms need it.
   */
  onLoadChanged?(b: Backend): void
  /** A connection to the backend was established `ms` milliseconds after it was started. */
  onConnectLatency?(backend: Backend, ms: number): void
}

export interface BalancerFactory<O = unknown> {
  readonly name: string
  /** What a pick needs from the connection, so routing can fail early when it cannot be had. */
  readonly needs: readonly ('address' | 'sni')[]
  /** Whether backends' weights change what it picks (slow_start means nothing otherwise). */
  readonly weighted: boolean
  /** Pool keys this algorithm reads besides the common ones. */
  readonly optionKeys: readonly string[]
  /** Reads and checks this algorithm's keys of a pool; reports problems to `reader`. */
  parseOptions(pool: MapView, reader: ConfigReader, context: string): O
  /** A balancer over `members`, the backends in rotation now. */
  create(members: readonly Backend[], options: O): Balancer
}
