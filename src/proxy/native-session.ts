import { isIP } from 'node:net'
import { lookup } from 'node:dns'
import type { Backend } from '../upstream/backend.js'
import type { Pool } from '../upstream/pool.js'
import type { PickContext } from '../balancer/types.js'
import { SluiceError } from '../errors.js'
import { localExhaustion } from '../fd-budget.js'
import { formatAddress } from '../config/address.js'
import type { RelayConnectResult, RelayEnd } from './native-relay.js'
import type { RelayedConnection, RelayHost } from './relay-host.js'
import type { Deadline } from './timer-wheel.js'
import type { QueueWaiter } from '../upstream/backend-queue.js'
import { reportConnectFailure, reportPoolRefusal, writeAccessLine, type PoolRefusal } from './session-report.js'
import type { CloseReason, OpenSession, SessionOwner } from './tcp-session.js'

/**
 * One TCP connection that the native relay accepted itself, on a plain listener with a plain
 * pool: no Node socket exists for it at any point. JS picks the backend, asks the relay to
 * connect, retries on another backend when that fails, and writes the access-log line when
 * the relay reports the end; the relay does everything else (the connect timeout too).
 */
export class NativeSession implements OpenSession, RelayedConnection, Deadline, QueueWaiter {
  readonly startedAt = Date.now()
  sourceKey: string | undefined = undefined
  deadlineAt = 0
  deadlinePrev: Deadline | undefined = undefined
  deadlineNext: Deadline | undefined = undefined
  deadlineSlot = -1
  queuePrev: QueueWaiter | undefined = undefined
  queueNext: QueueWaiter | undefined = undefined
  queued = false
  private backend: Backend | undefined
  private connected = false
  private connectedAt = 0
  private attempts = 0
  private tried: Set<Backend> | undefined
  /** A named backend's further addresses, tried in turn before the backend counts as failed. */
  private moreAddresses: string[] | undefined
  private reason: CloseReason | undefined
  private firstFin: 'client' | 'backend' | undefined
  private finished = false
  /** When a connect first failed for want of a descriptor here (0: never). */
  private localWaitSince = 0
  private readonly ctx: PickContext

  constructor(
    private readonly id: number,
    remoteAddress: string,
    remotePort: number,
    private readonly owner: SessionOwner,
    private readonly pool: Pool,
    private readonly relay: RelayHost,
  ) {
    this.ctx = { protocol: 'tcp', remoteAddress, remotePort }
    relay.track(id, this)
  }

  get clientAddress(): string {
    return formatAddress(this.ctx.remoteAddress, this.ctx.remotePort)
  }

  start(): void {
    this.connectNext()
  }

  /** Bytes are counted by the relay per listener: nothing to add per connection. */
  flushCounters(): void {}

  destroy(reason: CloseReason): void {
    this.reason ??= reason
    this.relay.destroy(this.id)
  }

  private connectNext(): void {
    const pool = this.pool
    const queueing = this.attempts === 0 && pool.maxQueue > 0
    // First come, first served: behind the connections already waiting.
    if (queueing && pool.queue.length > 0) {
      this.enqueue()
      return
    }
    const b = this.takeBackend()
    if (b === undefined) {
      if (queueing && pool.allFull()) this.enqueue()
      else this.refuse(this.attempts === 0 ? 'no_backend' : 'connect_failed')
      return
    }
    this.connectTo(b)
  }

  /** A backend picked and its slot taken atomically (max_connections across workers), or undefined. */
  private takeBackend(): Backend | undefined {
    return this.pool.take(this.ctx, this.tried)
  }

  /** Every usable backend is at max_connections: wait in the pool's queue, or be refused when it is full. */
  private enqueue(): void {
    const pool = this.pool
    if (pool.queue.length >= pool.maxQueue) {
      this.refuse('queue_full')
      return
    }
    pool.queue.push(this)
    this.owner.wheel.schedule(this, performance.now() + pool.queueTimeoutMs)
  }

  /** A slot may have freed (the pool's queue, head first): take it and connect, or stay. */
  trySlot(): boolean {
    if (this.finished) return true
    const b = this.takeBackend()
    if (b === undefined) return false
    this.owner.wheel.cancel(this)
    this.connectTo(b)
    return true
  }

  /** queue_timeout passed in the queue (the relay bounds the connect itself). */
  onDeadline(): void {
    if (!this.queued || this.finished) return
    this.pool.queue.remove(this)
    this.refuse('queue_timeout')
  }

  private connectTo(b: Backend): void {
    this.attempts++
    this.backend = b
    if (isIP(b.host) !== 0) {
      this.connectAddress(b, b.host)
      return
    }
    // A backend named by a host name: resolved for each connection, and, as Node's connect does
    // (family auto-selection), each address it has is tried in turn: `localhost` is often ::1
    // first and 127.0.0.1 second, with the service listening on one of them only.
    lookup(b.host, { all: true }, (err, addresses) => {
      if (this.finished || this.backend !== b) return
      if (err !== null) return this.failed(b, err)
      const [first, ...rest] = addresses.map((a) => a.address)
      if (first === undefined) return this.failed(b, Object.assign(new Error(`no address for ${b.host}`), { code: 'ENOTFOUND' }))
      this.moreAddresses = rest.length > 0 ? rest : undefined
      this.connectAddress(b, first)
    })
  }

  private connectAddress(b: Backend, address: string): void {
    this.relay.connect(this.id, this, address, b.port, this.pool.connectTimeoutMs, this.owner.config.timeouts.idleMs)
  }

  onRelayConnect(result: RelayConnectResult): void {
    const b = this.backend
    if (b === undefined || this.finished) return
    if (result.ok) {
      this.moreAddresses = undefined
      this.connected = true
      this.connectedAt = Date.now()
      this.pool.observeConnect(b, result.micros / 1000)
      b.consecutiveFailures = 0
      b.established++
      return
    }
    const err =
      result.code === 'ETIMEDOUT'
        ? new SluiceError('SLUICE_ERR_CONNECT_TIMEOUT', `no connection to ${b.id} within ${this.pool.connectTimeoutMs}ms`)
        : Object.assign(new Error(`connect ${result.code} ${b.id}`), { code: result.code, errno: -result.errno })
    const next = this.moreAddresses?.shift()
    if (next !== undefined && localExhaustion(err) === undefined) {
      this.connectAddress(b, next)
      return
    }
    this.moreAddresses = undefined
    this.failed(b, err)
  }

  private failed(b: Backend, err: Error): void {
    this.pool.release(b)
    this.backend = undefined
    const local = localExhaustion(err)
    if (local !== undefined) {
      this.waitForDescriptors(b, local)
      return
    }
    b.failedOnce()
    // Kept only once a connect failed: most connections never need one.
    ;(this.tried ??= new Set()).add(b)
    const timeout = err instanceof SluiceError && err.code === 'SLUICE_ERR_CONNECT_TIMEOUT'
    const code = (err as { code?: unknown }).code
    this.pool.onConnectFailure?.(b, timeout ? 'timeout' : typeof code === 'string' ? code : err.message)
    reportConnectFailure(this.owner, this.pool.name, b, err, this.attempts)
    if (this.attempts <= this.pool.retries) this.connectNext()
    else this.refuse('connect_failed')
  }

  /**
   * The connect to `b` failed because sluice is out of descriptors (or socket memory): not the
   * backend's failure, and the attempt is not spent; tried again once descriptors are free,
   * within the pool's connect_timeout, else refused as `fd_exhausted` (as TcpSession does).
   */
  private waitForDescriptors(b: Backend, errno: string): void {
    this.attempts--
    const guard = this.owner.exhaustion
    guard?.exhausted(this.owner.config.name, 'connect', errno)
    if (this.localWaitSince === 0) this.localWaitSince = Date.now()
    const left = this.pool.connectTimeoutMs - (Date.now() - this.localWaitSince)
    if (guard === undefined || left <= 0) {
      this.refuse('fd_exhausted')
      return
    }
    guard.whenAvailable((ok) => {
      if (this.finished) return
      if (ok) this.connectNext()
      else this.refuse('fd_exhausted')
    }, left)
  }

  private refuse(reason: PoolRefusal): void {
    this.reason ??= reason
    reportPoolRefusal(this.owner, reason, this.pool, this.attempts, this.clientAddress)
    // A reset tells the client at once that nothing is there, as a refused connect would.
    this.relay.destroy(this.id, true)
  }

  onRelayEnd(end: RelayEnd): void {
    if (this.finished) return
    this.finished = true
    if (this.queued) this.pool.queue.remove(this)
    this.owner.wheel.cancel(this)
    if (end.reason === 'destroyed') this.reason ??= 'shutdown'
    else if (end.reason === 'client_closed' || end.reason === 'backend_closed') this.firstFin ??= end.reason === 'client_closed' ? 'client' : 'backend'
    else if (end.reason === 'client_aborted' || !this.connected) this.reason ??= 'client_aborted'
    else this.reason ??= end.reason
    const b = this.backend
    if (b !== undefined) this.pool.release(b)
    const owner = this.owner
    if (owner.accessLog) {
      const connected = this.connected
      writeAccessLine(owner, {
        client: this.clientAddress,
        peer: this.clientAddress,
        pool: this.pool.name,
        backend: connected ? (b?.id ?? null) : null,
        bytes_in: end.bytesIn,
        bytes_out: end.bytesOut,
        duration_ms: Date.now() - this.startedAt,
        connect_ms: connected ? this.connectedAt - this.startedAt : null,
        attempts: this.attempts,
        close_reason: this.reason ?? (this.firstFin === 'backend' ? 'backend_closed' : 'client_closed'),
      })
    }
    owner.sessionEnded(this)
  }
}
