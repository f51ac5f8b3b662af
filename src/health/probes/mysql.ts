import { ProbeFailure, snippet, type ProbeFactory } from '../probe.js'
import { converse } from './conversation.js'

/**
 * `mysql`: reads the server's greeting (the Handshake packet every MySQL / MariaDB server
 * sends first) and checks it is protocol 10. No login is attempted. An error packet (0xff:
 * "Host ... is blocked", "Too many connections") fails the check with the server's message.
 */
export const mysqlProbe: ProbeFactory<null> = {
  type: 'mysql',
  optionKeys: [],
  parseOptions: () => null,
  create: () => ({
    check: (target) =>
      converse(target, async (c) => {
        const payload = await c.read('the server greeting', (buf) => {
          if (buf.length < 4) return undefined
          const len = buf.readUIntLE(0, 3)
          if (buf.length < 4 + len) return undefined
          return { value: buf.subarray(4, 4 + len), used: 4 + len }
        })
        const kind = payload[0]
        if (kind === 0xff) throw new ProbeFailure(`server refused: ${payload.length > 3 ? snippet(payload.subarray(3).toString('utf8').replace(/^#\w{5}/, '')) : 'error packet'}`)
        if (kind !== 10) throw new ProbeFailure(`expected a protocol 10 greeting, got protocol ${String(kind)}`)
        const nul = payload.indexOf(0, 1)
        const version = payload.toString('latin1', 1, nul < 0 ? Math.min(payload.length, 40) : nul)
        return `greeting ${snippet(version)}`
      }),
  }),
}
