import type { ProbeFactory } from '../probe.js'
import { converse } from './conversation.js'

/**
 * `tcp`: the backend accepts a TCP connection. Nothing is sent (but the PROXY header, when the
 * pool sends one); the probe then closes with a FIN and reads what the backend still sends
 * (a banner, say) until it closes too, so the backend sees a client leave, not a reset.
 */
export const tcpProbe: ProbeFactory<null> = {
  type: 'tcp',
  optionKeys: [],
  parseOptions: () => null,
  create: () => ({
    check: (target) => converse(target, 'connect-only'),
  }),
}
