import { ProbeFailure, snippet, type ProbeFactory } from '../probe.js'
import { converse, type Conversation } from './conversation.js'
import { LOGIN_KEYS, readLogin, type LoginOptions } from './login-options.js'
import { postgresLogin } from './postgres-login.js'
import { ScramKeyCache } from './scram.js'

/** int32 length 8, then the SSLRequest code 80877103 (1234 << 16 | 5679). */
const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])

/**
 * `postgres`. Without `user`: sends an SSLRequest, the first message of every PostgreSQL
 * connection, and expects the one-byte answer `S` (TLS available) or `N` (not). The
 * postmaster answers it itself before any authentication, so no user or password is needed
 * (and a server that refuses logins, full or shutting down, still answers it).
 *
 * With `user` (and `database`, `password` or `password_file`): a whole start-up, as a client
 * does (postgres-login.ts): passes at ReadyForQuery; an ErrorResponse ("remaining connection
 * slots are reserved", "too many clients", "the database system is shutting down", a wrong
 * password) fails with the server's message.
 */
export const postgresProbe: ProbeFactory<LoginOptions | null> = {
  type: 'postgres',
  optionKeys: LOGIN_KEYS,
  parseOptions: (m, reader, context) => readLogin(m, reader, context, 'postgres'),
  create: (o) => {
    if (o !== null) {
      const keys = new ScramKeyCache(o.password ?? '')
      return { check: (target) => converse(target, (c) => postgresLogin(c, o, keys)) }
    }
    return { check: (target) => converse(target, sslRequest) }
  },
}

async function sslRequest(c: Conversation): Promise<string> {
  c.send(SSL_REQUEST)
  const b = await c.read('the SSLRequest answer', (buf) => (buf.length >= 1 ? { value: buf[0] as number, used: 1 } : undefined))
  if (b === 0x53) return 'SSLRequest answered S'
  if (b === 0x4e) return 'SSLRequest answered N'
  throw new ProbeFailure(`expected S or N to the SSLRequest, got "${snippet(Buffer.concat([Buffer.from([b]), c.pending]))}"`)
}
