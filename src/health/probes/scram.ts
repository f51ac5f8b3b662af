import { createHash, createHmac, pbkdf2, randomBytes, timingSafeEqual } from 'node:crypto'
import { ProbeFailure } from '../probe.js'

/** Servers asking for more PBKDF2 rounds than this are refused: a probe must stay cheap. */
export const MAX_SCRAM_ITERATIONS = 100_000

/** The keys derived from a password and a server's salt: what PBKDF2 costs, kept between probes. */
interface DerivedKeys {
  clientKey: Buffer
  storedKey: Buffer
  serverKey: Buffer
}

/**
 * Derived keys per salt and iteration count, for one password. A server keeps a user's salt,
 * so after the first login a probe costs two HMACs instead of 4,096 rounds of PBKDF2.
 */
export class ScramKeyCache {
  private readonly keys = new Map<string, Promise<DerivedKeys>>()

  constructor(private readonly password: string) {}

  get(salt: Buffer, iterations: number): Promise<DerivedKeys> {
    const id = `${iterations}:${salt.toString('base64')}`
    let k = this.keys.get(id)
    if (k === undefined) {
      if (this.keys.size >= 16) this.keys.clear()
      k = derive(saslPrep(this.password), salt, iterations)
      this.keys.set(id, k)
      k.catch(() => this.keys.delete(id))
    }
    return k
  }
}

function derive(password: string, salt: Buffer, iterations: number): Promise<DerivedKeys> {
  return new Promise((resolve, reject) => {
    pbkdf2(password, salt, iterations, 32, 'sha256', (err, salted) => {
      if (err !== null) {
        reject(err)
        return
      }
      const clientKey = hmac(salted, 'Client Key')
      resolve({ clientKey, storedKey: createHash('sha256').update(clientKey).digest(), serverKey: hmac(salted, 'Server Key') })
    })
  })
}

/**
 * The client side of SCRAM-SHA-256 (RFC 5802, RFC 7677) without channel binding. PostgreSQL
 * takes the user name from the start-up message, so `n=` is empty unless `user` is given.
 */
export class ScramClient {
  private readonly nonce: string
  private readonly clientFirstBare: string
  private serverSignature: Buffer | undefined

  constructor(
    private readonly keys: ScramKeyCache,
    nonce = randomBytes(18).toString('base64'),
    user = '',
  ) {
    this.nonce = nonce
    this.clientFirstBare = `n=${user.replace(/=/g, '=3D').replace(/,/g, '=2C')},r=${nonce}`
  }

  /** The client-first-message: GS2 header `n,,` (no channel binding) and the bare part. */
  first(): string {
    return `n,,${this.clientFirstBare}`
  }

  /** The client-final-message for the server-first-message `serverFirst`. */
  async final(serverFirst: string): Promise<string> {
    const attrs = attributes(serverFirst)
    const nonce = attrs.get('r')
    const salt = attrs.get('s')
    const iterations = Number(attrs.get('i'))
    if (attrs.has('m')) throw new ProbeFailure('SCRAM: the server asks for an extension this check does not know')
    if (nonce === undefined || salt === undefined || !Number.isInteger(iterations) || iterations < 1) throw new ProbeFailure('SCRAM: a malformed server-first-message')
    if (!nonce.startsWith(this.nonce) || nonce.length === this.nonce.length) throw new ProbeFailure('SCRAM: the server nonce does not extend ours')
    if (iterations > MAX_SCRAM_ITERATIONS) throw new ProbeFailure(`SCRAM: the server asks for ${iterations} iterations, above the ${MAX_SCRAM_ITERATIONS} a check does`)
    const k = await this.keys.get(Buffer.from(salt, 'base64'), iterations)
    const withoutProof = `c=biws,r=${nonce}`
    const authMessage = `${this.clientFirstBare},${serverFirst},${withoutProof}`
    const signature = hmac(k.storedKey, authMessage)
    const proof = Buffer.alloc(signature.length)
    for (let i = 0; i < proof.length; i++) proof[i] = (k.clientKey[i] ?? 0) ^ (signature[i] ?? 0)
    this.serverSignature = hmac(k.serverKey, authMessage)
    return `${withoutProof},p=${proof.toString('base64')}`
  }

  /** Whether the server-final-message proves the server knew the password too. */
  verify(serverFinal: string): boolean {
    const attrs = attributes(serverFinal)
    const v = attrs.get('v')
    if (v === undefined || this.serverSignature === undefined) return false
    const got = Buffer.from(v, 'base64')
    return got.length === this.serverSignature.length && timingSafeEqual(got, this.serverSignature)
  }
}

function hmac(key: Buffer, text: string): Buffer {
  return createHmac('sha256', key).update(text).digest()
}

function attributes(message: string): Map<string, string> {
  const out = new Map<string, string>()
  for (const part of message.split(',')) {
    if (part.length >= 2 && part[1] === '=') out.set(part[0] as string, part.slice(2))
  }
  return out
}

/** Non-ASCII spaces (RFC 3454 C.1.2), mapped to a space by SASLprep. */
const NON_ASCII_SPACE = /[\u00a0\u1680\u2000-\u200b\u202f\u205f\u3000]/g
/** Characters SASLprep maps to nothing (RFC 3454 B.1). */
const MAPPED_TO_NOTHING = /[\u00ad\u034f\u1806\u180b-\u180d\u200b-\u200d\u2060\ufe00-\ufe0f\ufeff]/g

/**
 * SASLprep (RFC 4013) of a password, the mapping and normalisation steps PostgreSQL applies
 * too; an ASCII password is unchanged (as in PostgreSQL).
 */
export function saslPrep(password: string): string {
  // eslint-disable-next-line no-control-regex
  if (/^[\x00-\x7f]*$/.test(password)) return password
  return password.replace(NON_ASCII_SPACE, ' ').replace(MAPPED_TO_NOTHING, '').normalize('NFKC')
}
