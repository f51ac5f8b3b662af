import { ProbeFailure, snippet, type ProbeFactory } from '../probe.js'
import { converse } from './conversation.js'

export interface RedisProbeOptions {
  /** AUTH before PING when set (`${VAR}` keeps it out of the file). */
  password: string | undefined
  /** ACL user name for `AUTH username password` (Redis 6+). */
  username: string | undefined
}

/** `redis`: optional AUTH (→ +OK), then PING → +PONG. A loading or read-only replica still answers PONG. */
export const redisProbe: ProbeFactory<RedisProbeOptions> = {
  type: 'redis',
  optionKeys: ['password', 'username'],
  parseOptions(m, reader, context) {
    const password = m.has('password') ? reader.string(m.get('password'), `${context} password`, { nonEmpty: true }) : undefined
    const username = m.has('username') ? reader.string(m.get('username'), `${context} username`, { nonEmpty: true }) : undefined
    if (username !== undefined && password === undefined && !m.has('password')) {
      reader.report(m.keyAt('username'), `${context}: username needs a password`)
      return undefined
    }
    if ((m.has('password') && password === undefined) || (m.has('username') && username === undefined)) return undefined
    return { password, username }
  },
  create: (o) => ({
    check: (target) =>
      converse(target, async (c) => {
        if (o.password !== undefined) {
          c.send(command(o.username === undefined ? ['AUTH', o.password] : ['AUTH', o.username, o.password]))
          const auth = await c.line('the AUTH reply')
          if (auth !== '+OK') throw new ProbeFailure(`AUTH refused: "${snippet(auth)}"`)
        }
        c.send(command(['PING']))
        const reply = await c.line('+PONG')
        if (reply !== '+PONG') throw new ProbeFailure(`expected +PONG, got "${snippet(reply)}"`)
        return '+PONG'
      }),
  }),
}

/** A command in RESP (arrays of bulk strings), so passwords with spaces or quotes are safe. */
function command(args: string[]): string {
  return `*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`
}
