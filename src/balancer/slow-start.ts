import type { Backend } from '../upstream/backend.js'

/** Share of its weight a backend starts at when it joins with slow start on. */
export const SLOW_START_FLOOR = 0.1
const MIN_STEP_MS = 100
const MAX_STEP_MS = 5_000
const STEPS = 50

/**
 * Slow start: a backend that joins the rotation (comes back up, is enabled, or is added by a
 * reload) starts at 10% of its weight and ramps linearly to all of it over the period:
 * ramp = 0.1 + 0.9 × elapsed / period. A cold cache or a JIT that is still warming up is not
 * handed its full share at once. Backends present when sluice starts begin at full weight
 * (ramping everyone is no ramp at all): the pool does not call `join` for them.
 *
 * There is no timer: the pool calls `tick` before each pick, and while some backend is
 * ramping, a step (at most every period/50, at least every 5 s) sets each ramping backend's
 * `ramp` and tells its balancer through `changed`. Without traffic nothing needs ramping.
 */
export class SlowStart {
  private readonly ramping: Backend[] = []
  private readonly since = new Map<Backend, number>()
  private nextAt = 0

  constructor(
    private periodMs: number,
    private readonly changed: (b: Backend) => void,
    private readonly now: () => number = () => performance.now(),
  ) {}

  get active(): boolean {
    return this.ramping.length > 0
  }

  /** A new period (reload); 0 ends every ramp now. */
  configure(periodMs: number): void {
    this.periodMs = periodMs
    if (periodMs === 0) {
      for (const b of this.ramping.splice(0)) {
        this.since.delete(b)
        b.ramp = 1
        if (b.inRotation && !b.retired) this.changed(b)
      }
    }
  }

  /**
   * `b` is joining the rotation: sets its starting ramp. Call before its balancer hears of it,
   * so the balancer sees the reduced weight from the first pick. `agoMs`: the join was
   * decided that long ago (elsewhere: the control plane), and the ramp runs from then, the
   * same in every worker. Returns `b`.
   */
  join(b: Backend, agoMs = 0): Backend {
    if (this.periodMs <= 0) return b
    b.ramp = SLOW_START_FLOOR
    if (!this.since.has(b)) this.ramping.push(b)
    this.since.set(b, this.now() - Math.max(0, agoMs))
    if (this.ramping.length === 1) this.nextAt = 0
    return b
  }

  /** Cheap when nothing ramps; otherwise steps the ramps when a step is due. */
  tick(): void {
    if (this.ramping.length === 0) return
    const now = this.now()
    if (now >= this.nextAt) this.step(now)
  }

  private step(now: number): void {
    this.nextAt = now + Math.min(MAX_STEP_MS, Math.max(MIN_STEP_MS, this.periodMs / STEPS))
    const list = this.ramping
    for (let i = list.length - 1; i >= 0; i--) {
      const b = list[i] as Backend
      const live = b.inRotation && !b.retired
      const elapsed = now - (this.since.get(b) ?? now)
      const ramp = live ? rampAt(elapsed, this.periodMs) : 1
      if (ramp === 1) {
        list.splice(i, 1)
        this.since.delete(b)
      }
      if (ramp !== b.ramp) {
        b.ramp = ramp
        if (live) this.changed(b)
      }
    }
  }
}

/** The share of its weight a backend has `elapsedMs` into a ramp of `periodMs`. */
export function rampAt(elapsedMs: number, periodMs: number): number {
  if (elapsedMs >= periodMs) return 1
  return SLOW_START_FLOOR + (1 - SLOW_START_FLOOR) * Math.max(0, elapsedMs) / periodMs
}
