/**
 * A strict, bounded reader of a TLS ClientHello's server_name (RFC 8446 §4.1.2, RFC 6066 §3),
 * for routing without decrypting. Pure: it looks at the bytes received so far and says
 * "need more", "here is the name (or none)", or "this is not a TLS ClientHello" — it never
 * throws, on any input. The handshake message may span several TLS records.
 */

/** Most bytes read while looking for the ClientHello (records and their headers). */
export const CLIENT_HELLO_MAX = 16 * 1024

export type ClientHelloParse =
  | { kind: 'need-more' }
  /** `sni` is lower-cased; undefined when the ClientHello carries no server_name. */
  | { kind: 'ok'; sni: string | undefined; alpn: string[] }
  | { kind: 'error'; message: string }

const NEED_MORE: ClientHelloParse = { kind: 'need-more' }
const HOSTNAME = /^[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_](?:[a-z0-9_-]{0,62}))*\.?$/

function fail(message: string): ClientHelloParse {
  return { kind: 'error', message }
}

/** Parses the ClientHello at the start of `buf` (the bytes received so far). */
export function parseClientHello(buf: Buffer): ClientHelloParse {
  // Gather the handshake bytes from consecutive handshake records.
  const parts: Buffer[] = []
  let have = 0
  let need = -1
  let at = 0
  // Every record takes at least 6 bytes of `buf`, so this ends within buf.length / 6 turns.
  while (need < 0 || have < need) {
    if (at >= buf.length) return buf.length >= CLIENT_HELLO_MAX ? fail(`no complete ClientHello within ${CLIENT_HELLO_MAX} bytes`) : NEED_MORE
    if (buf[at] !== 0x16) return fail(at === 0 ? 'the first bytes are not a TLS handshake record' : 'the ClientHello continues in a record that is not a handshake record')
    if (at + 1 < buf.length && buf[at + 1] !== 0x03) return fail('the TLS record version is not 3.x')
    if (at + 5 > buf.length) return buf.length >= CLIENT_HELLO_MAX ? fail(`no complete ClientHello within ${CLIENT_HELLO_MAX} bytes`) : NEED_MORE
    const len = buf.readUInt16BE(at + 3)
    if (len === 0 || len > 16384) return fail(`a TLS record of ${len} bytes is not allowed`)
    if (at + 5 + len > CLIENT_HELLO_MAX) return fail(`the ClientHello does not fit in ${CLIENT_HELLO_MAX} bytes`)
    if (at + 5 + len > buf.length) return NEED_MORE
    const body = buf.subarray(at + 5, at + 5 + len)
    parts.push(body)
    have += len
    at += 5 + len
    if (need < 0 && have >= 4) {
      const hs = parts.length === 1 ? body : Buffer.concat(parts)
      if (hs[0] !== 0x01) return fail('the first handshake message is not a ClientHello')
      need = 4 + ((hs[1] as number) << 16) + ((hs[2] as number) << 8) + (hs[3] as number)
      if (need > CLIENT_HELLO_MAX) return fail(`a ClientHello of ${need} bytes is larger than ${CLIENT_HELLO_MAX}`)
    }
  }
  const hs = parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts)
  return parseBody(hs.subarray(4, need))
}

/** Reads the ClientHello body (after the 4-byte handshake header). */
function parseBody(b: Buffer): ClientHelloParse {
  let p = 0
  if (b.length < 2 + 32 + 1) return fail('the ClientHello is truncated')
  if (b[0] !== 0x03) return fail('the ClientHello version is not 3.x')
  p = 2 + 32
  const sid = b[p] as number
  if (sid > 32) return fail('the ClientHello session id is longer than 32 bytes')
  p += 1 + sid
  if (p + 2 > b.length) return fail('the ClientHello is truncated before its cipher suites')
  const cs = b.readUInt16BE(p)
  if (cs < 2 || cs % 2 !== 0) return fail('the ClientHello cipher suite list is malformed')
  p += 2 + cs
  if (p + 1 > b.length) return fail('the ClientHello is truncated before its compression methods')
  const cm = b[p] as number
  if (cm < 1) return fail('the ClientHello has no compression method')
  p += 1 + cm
  if (p > b.length) return fail('the ClientHello is truncated in its compression methods')
  if (p === b.length) return { kind: 'ok', sni: undefined, alpn: [] }
  if (p + 2 > b.length) return fail('the ClientHello extensions length is truncated')
  const extEnd = p + 2 + b.readUInt16BE(p)
  if (extEnd !== b.length) return fail('the ClientHello extensions do not fill the message exactly')
  p += 2
  let sni: string | undefined
  let alpn: string[] = []
  const seen = new Set<number>()
  // Every extension takes at least 4 bytes, so this ends within b.length / 4 turns.
  while (p < extEnd) {
    if (p + 4 > extEnd) return fail('a ClientHello extension header is truncated')
    const type = b.readUInt16BE(p)
    const len = b.readUInt16BE(p + 2)
    p += 4
    if (p + len > extEnd) return fail('a ClientHello extension runs past the end of the message')
    if (seen.has(type)) return fail(`the ClientHello repeats extension ${type}`)
    seen.add(type)
    const ext = b.subarray(p, p + len)
    p += len
    if (type === 0) {
      const r = serverName(ext)
      if (typeof r !== 'object') return fail(r)
      sni = r.name
    } else if (type === 16) {
      const r = alpnList(ext)
      if (r === undefined) return fail('the ClientHello ALPN extension is malformed')
      alpn = r
    }
  }
  return { kind: 'ok', sni, alpn }
}

/** The host_name of a server_name extension (RFC 6066: at most one host_name). */
function serverName(ext: Buffer): { name: string | undefined } | string {
  if (ext.length === 0) return { name: undefined } // a server's empty echo; harmless from a client
  if (ext.length < 2 || ext.readUInt16BE(0) !== ext.length - 2) return 'the server_name list length is wrong'
  let p = 2
  let name: string | undefined
  while (p < ext.length) {
    if (p + 3 > ext.length) return 'a server_name entry is truncated'
    const type = ext[p] as number
    const len = ext.readUInt16BE(p + 1)
    p += 3
    if (p + len > ext.length) return 'a server_name entry runs past its list'
    if (type === 0) {
      if (name !== undefined) return 'the server_name list has two host names'
      if (len === 0 || len > 253) return `a server name of ${len} bytes is not a host name`
      const text = ext.toString('latin1', p, p + len).toLowerCase()
      if (!HOSTNAME.test(text)) return 'the server name is not a valid host name'
      name = text.endsWith('.') ? text.slice(0, -1) : text
    }
    p += len
  }
  return { name }
}

function alpnList(ext: Buffer): string[] | undefined {
  if (ext.length < 2 || ext.readUInt16BE(0) !== ext.length - 2) return undefined
  const out: string[] = []
  let p = 2
  while (p < ext.length) {
    const len = ext[p] as number
    if (len === 0 || p + 1 + len > ext.length) return undefined
    out.push(ext.toString('latin1', p + 1, p + 1 + len))
    p += 1 + len
  }
  return out
}
