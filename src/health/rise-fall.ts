/**
 * The rise/fall state machine of one backend's active check, in the style of Envoy's
 * `unchanged | changed | pending`: a result that agrees with the current view is
 * `unchanged`; one that disagrees is `pending` until `rise` passes (or `fall` failures) in a
 * row make it `changed`. The very first result decides alone: a backend is not kept from
 * traffic for `rise` intervals at start-up, nor given traffic before it answered once.
 */
export type Transition = 'unchanged' | 'changed' | 'pending'

export class RiseFall {
  /** The check's view of the backend. Starts false: unchecked backends take no traffic. */
  healthy = false
  /** Whether any result has been seen. */
  checked = false
  /** Consecutive passes (while down) or failures (while up) counted towards a change. */
  streak = 0

  constructor(
    public rise: number,
    public fall: number,
  ) {}

  observe(ok: boolean): Transition {
    if (!this.checked) {
      this.checked = true
      this.streak = 0
      const was = this.healthy
      this.healthy = ok
      return was === ok ? 'unchanged' : 'changed'
    }
    if (ok === this.healthy) {
      this.streak = 0
      return 'unchanged'
    }
    this.streak++
    if (this.streak < (ok ? this.rise : this.fall)) return 'pending'
    this.healthy = ok
    this.streak = 0
    return 'changed'
  }

  /** "rise 2/2" or "fall 1/3": how far the current streak is, for log lines. */
  progress(ok: boolean): string {
    if (!this.checked) return ''
    const need = ok ? this.rise : this.fall
    const got = ok === this.healthy && this.streak === 0 ? need : this.streak
    return `${ok ? 'rise' : 'fall'} ${got}/${need}`
  }
}
