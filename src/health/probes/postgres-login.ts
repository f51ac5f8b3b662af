import { createHash } from 'node:crypto'
import { ProbeFailure, snippet } from '../probe.js'
import { MAX_PROBE_BYTES, type Conversation, type Parse } from './conversation.js'
import type { LoginOptions } from './login-options.js'
import { ScramClient, type ScramKeyCache } from './scram.js'

/** Protocol 3.0. */
const PROTOCOL_3 = 196608
/** Terminate: the polite goodbye, so the server logs no "unexpected EOF on client connection". */
const TERMINATE = Buffer.from([0x58, 0, 0, 0, 4])
/** A start-up ends within this many messages (ParameterStatus lines, notices, auth steps). */
const MAX_MESSAGES = 200

interface Message {
  type: string
  body: Buffer
}

/** One backend message: a type byte and an int32 length that counts itself. */
const parseMessage: Parse<Message> = (buf) => {
  if (buf.length < 5) return undefined
  const len = buf.readUInt32BE(1)
  if (len < 4 || len > MAX_PROBE_BYTES) throw new ProbeFailure(`a backend message of ${len} bytes`)
  if (buf.length < 1 + len) return undefined
  return { value: { type: String.fromCharCode(buf[0] as number), body: buf.subarray(5, 1 + len) }, used: 1 + len }
}

/**
 * A whole PostgreSQL start-up as user `o.user`: StartupMessage, then whatever the server asks
 * (AuthenticationOk, cleartext, MD5 or SCRAM-SHA-256, PostgreSQL 14+'s default), then
 * ReadyForQuery, and a Terminate. An ErrorResponse at any point fails with its text.
 */
export async function postgresLogin(c: Conversation, o: LoginOptions, keys: ScramKeyCache): Promise<string> {
  c.send(startupMessage(o))
  let scram: ScramClient | undefined
  let authenticated = false
  let version = ''
  for (let i = 0; i < MAX_MESSAGES; i++) {
    const m = await c.read(authenticated ? 'ReadyForQuery' : 'the authentication request', parseMessage)
    switch (m.type) {
      case 'E':
        throw new ProbeFailure(`server refused: ${errorText(m.body)}`)
      case 'R': {
        const code = m.body.length >= 4 ? m.body.readUInt32BE(0) : -1
        if (code === 0) {
          authenticated = true
        } else if (code === 3) {
          c.send(passwordMessage(needPassword(o, 'a cleartext password')))
        } else if (code === 5) {
          if (m.body.length < 8) throw new ProbeFailure('a malformed MD5 password request')
          c.send(passwordMessage(md5Password(o.user, needPassword(o, 'an MD5 password'), m.body.subarray(4, 8))))
        } else if (code === 10) {
          const mechanisms = m.body.toString('utf8', 4).split('\0').filter((x) => x !== '')
          if (!mechanisms.includes('SCRAM-SHA-256')) throw new ProbeFailure(`the server offers SASL ${mechanisms.join(', ')}; the check speaks SCRAM-SHA-256`)
          needPassword(o, 'a SCRAM-SHA-256 password')
          scram = new ScramClient(keys)
          c.send(saslInitial('SCRAM-SHA-256', scram.first()))
        } else if (code === 11) {
          if (scram === undefined) throw new ProbeFailure('SCRAM continuation without a SCRAM start')
          c.send(saslResponse(await scram.final(m.body.toString('utf8', 4))))
        } else if (code === 12) {
          if (scram === undefined || !scram.verify(m.body.toString('utf8', 4))) throw new ProbeFailure('SCRAM: the server\'s signature is wrong (it does not know the password)')
        } else {
          throw new ProbeFailure(`the server asks for authentication method ${code} (${AUTH_NAMES[code] ?? 'unknown'}), which the check does not speak; use a password method for this user`)
        }
        break
      }
      case 'S': {
        const [name, value] = m.body.toString('utf8').split('\0')
        if (name === 'server_version' && value !== undefined) version = value
        break
      }
      case 'Z':
        c.send(TERMINATE)
        return `logged in as ${o.user}${version === '' ? '' : ` (PostgreSQL ${snippet(version, 30)})`}`
      case 'K':
      case 'N':
      case 'v':
        break
      default:
        throw new ProbeFailure(`unexpected message "${snippet(m.type)}" during the start-up`)
    }
  }
  throw new ProbeFailure(`more than ${MAX_MESSAGES} messages without ReadyForQuery`)
}

const AUTH_NAMES: Readonly<Record<number, string>> = { 2: 'Kerberos V5', 6: 'SCM credentials', 7: 'GSSAPI', 8: 'GSSAPI', 9: 'SSPI' }

function needPassword(o: LoginOptions, what: string): string {
  if (o.password === undefined) throw new ProbeFailure(`the server asks for ${what} and the check has none: set password or password_file`)
  return o.password
}

/** "FATAL 53300 remaining connection slots are ..." from an ErrorResponse's fields. */
export function errorText(body: Buffer): string {
  const fields = new Map<string, string>()
  let at = 0
  while (at < body.length && body[at] !== 0) {
    const end = body.indexOf(0, at + 1)
    if (end < 0) break
    fields.set(String.fromCharCode(body[at] as number), body.toString('utf8', at + 1, end))
    at = end + 1
  }
  const severity = fields.get('V') ?? fields.get('S') ?? 'ERROR'
  const code = fields.get('C')
  return snippet(`${severity}${code === undefined ? '' : ` ${code}`} ${fields.get('M') ?? 'no message'}`, 200)
}

export function startupMessage(o: LoginOptions): Buffer {
  const params = ['user', o.user, ...(o.database !== undefined ? ['database', o.database] : []), 'application_name', 'sluice-health-check']
  const body = Buffer.from(`${params.join('\0')}\0\0`, 'utf8')
  const head = Buffer.alloc(8)
  head.writeUInt32BE(8 + body.length, 0)
  head.writeUInt32BE(PROTOCOL_3, 4)
  return Buffer.concat([head, body])
}

function message(type: string, body: Buffer): Buffer {
  const head = Buffer.alloc(5)
  head.write(type, 0, 'latin1')
  head.writeUInt32BE(4 + body.length, 1)
  return Buffer.concat([head, body])
}

function passwordMessage(text: string): Buffer {
  return message('p', Buffer.from(`${text}\0`, 'utf8'))
}

/** `md5` + md5(md5(password + user) + salt), in hex. */
export function md5Password(user: string, password: string, salt: Buffer): string {
  const inner = createHash('md5').update(password + user, 'utf8').digest('hex')
  return `md5${createHash('md5').update(Buffer.concat([Buffer.from(inner, 'latin1'), salt])).digest('hex')}`
}

function saslInitial(mechanism: string, data: string): Buffer {
  const d = Buffer.from(data, 'utf8')
  const len = Buffer.alloc(4)
  len.writeInt32BE(d.length)
  return message('p', Buffer.concat([Buffer.from(`${mechanism}\0`, 'latin1'), len, d]))
}

function saslResponse(data: string): Buffer {
  return message('p', Buffer.from(data, 'utf8'))
}
