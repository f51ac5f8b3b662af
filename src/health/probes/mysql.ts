import { ProbeFailure, snippet, type ProbeFactory } from '../probe.js'
import { converse } from './conversation.js'
import { LOGIN_KEYS, readLogin, type LoginOptions } from './login-options.js'
import { mysqlLogin, parseGreeting, readPacket, serverError } from './mysql-login.js'

/**
 * `mysql`. Without `user`: reads the server's greeting (the Handshake packet every MySQL /
 * MariaDB server sends first) and checks it is protocol 10; no login is attempted (so the
 * server logs an aborted, unauthenticated connection per probe). An error packet (0xff:
 * "Host ... is blocked", "Too many connections") fails the check with the server's message.
 *
 * With `user` (and `database`, `password` or `password_file`): a login (mysql-login.ts) that
 * passes at the OK packet and ends with COM_QUIT; an ERR packet fails with its message.
 */
export const mysqlProbe: ProbeFactory<LoginOptions | null> = {
  type: 'mysql',
  optionKeys: LOGIN_KEYS,
  parseOptions: (m, reader, context) => readLogin(m, reader, context, 'mysql'),
  create: (o) => ({
    check: (target) =>
      converse(target, async (c) => {
        if (o !== null) return mysqlLogin(c, o)
        const packet = await readPacket(c, 'the server greeting')
        const kind = packet.payload[0]
        if (kind === 0xff) throw new ProbeFailure(`server refused: ${serverError(packet.payload)}`)
        if (kind !== 10) throw new ProbeFailure(`expected a protocol 10 greeting, got protocol ${String(kind)}`)
        return `greeting ${snippet(parseGreeting(packet.payload).version)}`
      }),
  }),
}
