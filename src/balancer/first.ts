import type { Backend } from '../upstream/backend.js'
import type { Balancer, BalancerFactory, Exclusion, PickContext } from './types.js'

/**
 * First (HAProxy's `balance first`): every connection goes to the first backend in the
 * pool's list that can take it, so each backend fills up to its `max_connections` before the
 * next one gets anything. Use it to keep as few backends busy as possible (others can be
 * scaled down) or for ordered active/standby. Weights do not matter. The backends in rotation
 * are kept in list order (by `position`), inserted on the event, never sorted on a pick; a
 * pick walks past the full ones.
 */
export class First implements Balancer {
  private readonly ordered: Backend[] = []

  constructor(members: readonly Backend[]) {
    for (const b of members) this.onBackendUp(b)
  }

  pick(_ctx: PickContext, avoid?: Exclusion): Backend | undefined {
    const list = this.ordered
    if (avoid === undefined) return list[0]
    for (let i = 0; i < list.length; i++) {
      const b = list[i] as Backend
      if (!avoid.has(b)) return b
    }
    return undefined
  }

  onBackendUp(b: Backend): void {
    const list = this.ordered
    if (list.includes(b)) return
    let i = list.length
    while (i > 0 && (list[i - 1] as Backend).position > b.position) i--
    list.splice(i, 0, b)
  }

  onBackendDown(b: Backend): void {
    const i = this.ordered.indexOf(b)
    if (i >= 0) this.ordered.splice(i, 1)
  }
}

export const firstFactory: BalancerFactory<null> = {
  name: 'first',
  needs: [],
  weighted: false,
  optionKeys: [],
  parseOptions: () => null,
  create: (members) => new First(members),
}
