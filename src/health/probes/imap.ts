import { ProbeFailure, snippet, type ProbeFactory } from '../probe.js'
import { converse } from './conversation.js'

/** `imap`: the greeting is `* OK` (or `* PREAUTH`); `* BYE` or anything else fails. Then LOGOUT. */
export const imapProbe: ProbeFactory<null> = {
  type: 'imap',
  optionKeys: [],
  parseOptions: () => null,
  create: () => ({
    check: (target) =>
      converse(target, async (c) => {
        const line = await c.line('the * OK greeting')
        if (!/^\* (OK|PREAUTH)\b/i.test(line)) throw new ProbeFailure(`expected "* OK", got "${snippet(line)}"`)
        c.send('a1 LOGOUT\r\n')
        return snippet(line.slice(0, 20))
      }),
  }),
}
