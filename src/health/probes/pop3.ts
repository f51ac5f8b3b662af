import { ProbeFailure, snippet, type ProbeFactory } from '../probe.js'
import { converse } from './conversation.js'

/** `pop3`: the greeting is `+OK`; then QUIT. */
export const pop3Probe: ProbeFactory<null> = {
  type: 'pop3',
  optionKeys: [],
  parseOptions: () => null,
  create: () => ({
    check: (target) =>
      converse(target, async (c) => {
        const line = await c.line('the +OK greeting')
        if (!/^\+OK\b/.test(line)) throw new ProbeFailure(`expected "+OK", got "${snippet(line)}"`)
        c.send('QUIT\r\n')
        return '+OK'
      }),
  }),
}
