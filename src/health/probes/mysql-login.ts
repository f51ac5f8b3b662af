import { constants, createHash, publicEncrypt } from 'node:crypto'
import { ProbeFailure, snippet } from '../probe.js'
import { MAX_PROBE_BYTES, type Conversation } from './conversation.js'
import type { LoginOptions } from './login-options.js'

// Capability flags (MySQL client/server protocol).
const CLIENT_LONG_PASSWORD = 0x1
const CLIENT_LONG_FLAG = 0x4
const CLIENT_CONNECT_WITH_DB = 0x8
const CLIENT_PROTOCOL_41 = 0x200
const CLIENT_TRANSACTIONS = 0x2000
const CLIENT_SECURE_CONNECTION = 0x8000
const CLIENT_PLUGIN_AUTH = 0x80000

/** COM_QUIT, sequence 0: the polite goodbye, so the server logs no aborted connection. */
const COM_QUIT = Buffer.from([1, 0, 0, 0, 0x01])
/** A login ends within this many server packets (auth switch, more data, key, OK). */
const MAX_PACKETS = 10

const NATIVE = 'mysql_native_password'
const CACHING_SHA2 = 'caching_sha2_password'

export interface Packet {
  seq: number
  payload: Buffer
}

export interface Greeting {
  version: string
  capabilities: number
  charset: number
  /** The 20-byte nonce the password is hashed with. */
  scramble: Buffer
  plugin: string
}

/** One packet: a 3-byte little-endian length, a sequence number, the payload. */
export function readPacket(c: Conversation, what: string): Promise<Packet> {
  return c.read(what, (buf) => {
    if (buf.length < 4) return undefined
    const len = buf.readUIntLE(0, 3)
    if (len > MAX_PROBE_BYTES) throw new ProbeFailure(`a ${len}-byte packet while waiting for ${what}`)
    if (buf.length < 4 + len) return undefined
    return { value: { seq: buf[3] as number, payload: buf.subarray(4, 4 + len) }, used: 4 + len }
  })
}

/** "ERROR 1040 (08004): Too many connections" from an ERR packet. */
export function serverError(payload: Buffer): string {
  if (payload.length < 3) return 'an error packet'
  const code = payload.readUInt16LE(1)
  const hasState = payload.length >= 9 && payload[3] === 0x23
  const state = hasState ? ` (${payload.toString('latin1', 4, 9)})` : ''
  return snippet(`ERROR ${code}${state}: ${payload.toString('utf8', hasState ? 9 : 3)}`, 200)
}

/** The fields of a protocol 10 Handshake packet that a login needs. */
export function parseGreeting(p: Buffer): Greeting {
  const nul = p.indexOf(0, 1)
  if (nul < 0 || p.length < nul + 1 + 4 + 8 + 1 + 2) throw new ProbeFailure('a truncated server greeting')
  const version = p.toString('latin1', 1, nul)
  let at = nul + 1 + 4
  const part1 = p.subarray(at, at + 8)
  at += 9
  let capabilities = p.readUInt16LE(at)
  at += 2
  let charset = 0x21
  let part2: Buffer = Buffer.alloc(0)
  let plugin = NATIVE
  if (p.length >= at + 16) {
    charset = p[at] as number
    capabilities |= p.readUInt16LE(at + 3) << 16
    const authLen = p[at + 5] as number
    at += 16
    if ((capabilities & CLIENT_SECURE_CONNECTION) !== 0) {
      const n = Math.max(13, authLen - 8)
      part2 = p.subarray(at, Math.min(p.length, at + n))
      at += n
    }
    if ((capabilities & CLIENT_PLUGIN_AUTH) !== 0 && at < p.length) {
      const end = p.indexOf(0, at)
      plugin = p.toString('latin1', at, end < 0 ? p.length : end)
    }
  }
  const scramble = Buffer.concat([part1, part2])
  return { version, capabilities: capabilities >>> 0, charset, scramble: stripNul(scramble), plugin }
}

/**
 * A MySQL / MariaDB login as `o.user`: the greeting, a HandshakeResponse41 with
 * mysql_native_password or caching_sha2_password (its fast path, or the full one with the
 * server's RSA key over a plain connection), an auth switch if the server asks for the other;
 * the OK packet passes, then COM_QUIT. An ERR packet fails with its message.
 */
export async function mysqlLogin(c: Conversation, o: LoginOptions): Promise<string> {
  const first = await readPacket(c, 'the server greeting')
  if (first.payload[0] === 0xff) throw new ProbeFailure(`server refused: ${serverError(first.payload)}`)
  if (first.payload[0] !== 10) throw new ProbeFailure(`expected a protocol 10 greeting, got protocol ${String(first.payload[0])}`)
  const g = parseGreeting(first.payload)
  if ((g.capabilities & CLIENT_PROTOCOL_41) === 0 || (g.capabilities & CLIENT_SECURE_CONNECTION) === 0) {
    throw new ProbeFailure(`the server (${snippet(g.version)}) does not speak protocol 4.1 authentication`)
  }
  let plugin = g.plugin === CACHING_SHA2 ? CACHING_SHA2 : NATIVE
  let scramble = g.scramble
  let seq = (first.seq + 1) & 0xff
  c.send(packet(seq, handshakeResponse(o, g, plugin, scramblePassword(plugin, o.password, scramble))))
  let askedForKey = false
  for (let i = 0; i < MAX_PACKETS; i++) {
    const reply = await readPacket(c, 'the login result')
    seq = (reply.seq + 1) & 0xff
    const p = reply.payload
    const kind = p[0]
    if (kind === 0x00) {
      c.send(COM_QUIT)
      return `logged in as ${o.user} (${snippet(g.version, 40)})`
    }
    if (kind === 0xff) throw new ProbeFailure(`server refused: ${serverError(p)}`)
    if (kind === 0xfe) {
      // AuthSwitchRequest: the user's account has another plugin than the one we answered with.
      const end = p.indexOf(0, 1)
      if (p.length === 1 || end < 0) throw new ProbeFailure('the server asks for the pre-4.1 password hash, which the check does not send')
      plugin = p.toString('latin1', 1, end)
      if (plugin !== NATIVE && plugin !== CACHING_SHA2) {
        throw new ProbeFailure(`the server asks for authentication plugin ${snippet(plugin)}; the check speaks ${NATIVE} and ${CACHING_SHA2}`)
      }
      scramble = stripNul(p.subarray(end + 1))
      c.send(packet(seq, scramblePassword(plugin, o.password, scramble)))
      continue
    }
    if (kind === 0x01 && plugin === CACHING_SHA2) {
      if (askedForKey) {
        c.send(packet(seq, encryptPassword(o.password ?? '', scramble, p.subarray(1))))
        continue
      }
      if (p[1] === 3) continue // fast authentication: the server's cache knew us; the OK follows
      if (p[1] === 4) {
        // Full authentication over a plain connection: ask for the server's RSA public key.
        askedForKey = true
        c.send(packet(seq, Buffer.from([0x02])))
        continue
      }
    }
    throw new ProbeFailure(`unexpected packet 0x${(kind ?? 0).toString(16)} during the login`)
  }
  throw new ProbeFailure(`more than ${MAX_PACKETS} packets without an OK`)
}

function handshakeResponse(o: LoginOptions, g: Greeting, plugin: string, auth: Buffer): Buffer {
  const wanted = CLIENT_LONG_PASSWORD | CLIENT_LONG_FLAG | CLIENT_PROTOCOL_41 | CLIENT_TRANSACTIONS | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH | (o.database !== undefined ? CLIENT_CONNECT_WITH_DB : 0)
  const flags = (wanted & g.capabilities) >>> 0
  if (o.database !== undefined && (flags & CLIENT_CONNECT_WITH_DB) === 0) throw new ProbeFailure('the server does not take a database at login')
  const head = Buffer.alloc(32)
  head.writeUInt32LE(flags, 0)
  head.writeUInt32LE(0x01000000, 4)
  head[8] = g.charset
  if (auth.length > 255) throw new TypeError('auth response longer than 255 bytes')
  return Buffer.concat([
    head,
    Buffer.from(`${o.user}\0`, 'utf8'),
    Buffer.from([auth.length]),
    auth,
    o.database !== undefined ? Buffer.from(`${o.database}\0`, 'utf8') : Buffer.alloc(0),
    (flags & CLIENT_PLUGIN_AUTH) !== 0 ? Buffer.from(`${plugin}\0`, 'latin1') : Buffer.alloc(0),
  ])
}

/** The auth response of `plugin` for `password` (empty without a password, as clients send). */
export function scramblePassword(plugin: string, password: string | undefined, scramble: Buffer): Buffer {
  if (password === undefined || password === '') return Buffer.alloc(0)
  if (plugin === CACHING_SHA2) {
    // SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) + nonce)
    const h1 = sha('sha256', Buffer.from(password, 'utf8'))
    return xor(h1, sha('sha256', Buffer.concat([sha('sha256', h1), scramble])))
  }
  // SHA1(pw) XOR SHA1(nonce + SHA1(SHA1(pw)))
  const h1 = sha('sha1', Buffer.from(password, 'utf8'))
  return xor(h1, sha('sha1', Buffer.concat([scramble, sha('sha1', h1)])))
}

/** caching_sha2_password's full authentication: (password NUL) XOR nonce, RSA-OAEP with the server's key. */
function encryptPassword(password: string, scramble: Buffer, pem: Buffer): Buffer {
  const clear = Buffer.from(`${password}\0`, 'utf8')
  for (let i = 0; i < clear.length; i++) clear[i] = (clear[i] as number) ^ (scramble[i % scramble.length] as number)
  try {
    return publicEncrypt({ key: pem.toString('latin1'), padding: constants.RSA_PKCS1_OAEP_PADDING }, clear)
  } catch (err) {
    throw new ProbeFailure(`the server's RSA public key is not usable: ${err instanceof Error ? err.message : String(err)}`)
  }
}

function packet(seq: number, payload: Buffer): Buffer {
  const head = Buffer.alloc(4)
  head.writeUIntLE(payload.length, 0, 3)
  head[3] = seq
  return Buffer.concat([head, payload])
}

function sha(algorithm: 'sha1' | 'sha256', data: Buffer): Buffer {
  return createHash(algorithm).update(data).digest()
}

function xor(a: Buffer, b: Buffer): Buffer {
  const out = Buffer.alloc(a.length)
  for (let i = 0; i < a.length; i++) out[i] = (a[i] as number) ^ (b[i] ?? 0)
  return out
}

function stripNul(b: Buffer): Buffer {
  return b.length > 0 && b[b.length - 1] === 0 ? b.subarray(0, b.length - 1) : b
}
