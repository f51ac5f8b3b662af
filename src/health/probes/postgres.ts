import { ProbeFailure, snippet, type ProbeFactory } from '../probe.js'
import { converse } from './conversation.js'

/** int32 length 8, then the SSLRequest code 80877103 (1234 << 16 | 5679). */
const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])

/**
 * `postgres`: sends an SSLRequest, the first message of every PostgreSQL connection, and
 * expects the one-byte answer `S` (TLS available) or `N` (not). The postmaster answers it
 * itself before any authentication, so no user or password is needed, and a server that
 * is shutting down or not accepting connections answers with an error (`E`) instead.
 */
export const postgresProbe: ProbeFactory<null> = {
  type: 'postgres',
  optionKeys: [],
  parseOptions: () => null,
  create: () => ({
    check: (target) =>
      converse(target, async (c) => {
        c.send(SSL_REQUEST)
        const b = await c.read('the SSLRequest answer', (buf) => (buf.length >= 1 ? { value: buf[0] as number, used: 1 } : undefined))
        if (b === 0x53) return 'SSLRequest answered S'
        if (b === 0x4e) return 'SSLRequest answered N'
        throw new ProbeFailure(`expected S or N to the SSLRequest, got "${snippet(Buffer.concat([Buffer.from([b]), c.pending]))}"`)
      }),
  }),
}
