import type { ProbeFactory } from '../probe.js'
import { converse } from './conversation.js'

/** `tcp`: the backend accepts a TCP connection. Nothing is sent; the connection is closed at once. */
export const tcpProbe: ProbeFactory<null> = {
  type: 'tcp',
  optionKeys: [],
  parseOptions: () => null,
  create: () => ({
    check: (target) => converse(target, 'connect-only'),
  }),
}
