import type { TLSSocket } from 'node:tls'
import type { ProxyTlv } from './proxy-protocol.js'

/**
 * The PROXY protocol v2 TLVs that describe a TLS connection ended in sluice (the spec's
 * section 2.2: PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_SSL and its sub-TLVs), what
 * HAProxy's `send-proxy-v2-ssl` sends: written into the header sent to a backend, and read
 * back from a received header. Servers use them to know that the client used TLS (dovecot
 * allows plaintext logins then), which name it asked for and what it negotiated.
 */

export const PP2_TYPE_ALPN = 0x01
export const PP2_TYPE_AUTHORITY = 0x02
export const PP2_TYPE_CRC32C = 0x03
export const PP2_TYPE_NOOP = 0x04
export const PP2_TYPE_UNIQUE_ID = 0x05
export const PP2_TYPE_SSL = 0x20
export const PP2_SUBTYPE_SSL_VERSION = 0x21
export const PP2_SUBTYPE_SSL_CN = 0x22
export const PP2_SUBTYPE_SSL_CIPHER = 0x23
export const PP2_SUBTYPE_SSL_SIG_ALG = 0x24
export const PP2_SUBTYPE_SSL_KEY_ALG = 0x25
export const PP2_TYPE_NETNS = 0x30

/** Bits of the PP2_TYPE_SSL `client` byte. */
export const PP2_CLIENT_SSL = 0x01
export const PP2_CLIENT_CERT_CONN = 0x02
export const PP2_CLIENT_CERT_SESS = 0x04

/** The `client` byte and the 4-byte `verify` field before the SSL sub-TLVs. */
const SSL_FIXED = 5
/**
 * Longest string value written (server name, ALPN protocol, certificate CN). Server names
 * and ALPN names cannot be longer; a longer CN is left out rather than cut.
 */
const MAX_VALUE = 255

/** What a TLS connection that ended in sluice negotiated, as the TLVs carry it. */
export interface TlsFacts {
  /** The negotiated protocol version, as OpenSSL names it: `TLSv1.3`, `TLSv1.2`. */
  version: string
  /** The cipher's OpenSSL name, e.g. `TLS_AES_256_GCM_SHA384`, `ECDHE-RSA-AES128-GCM-SHA256`. */
  cipher: string | undefined
  /** The server name the client asked for (SNI), lower case. */
  sni: string | undefined
  /** The ALPN protocol agreed on. */
  alpn: string | undefined
  /**
   * The client certificate: `none`; `connection`, presented in this handshake and verified;
   * `session`, verified when the TLS session this connection resumed was made.
   */
  clientCert: 'none' | 'connection' | 'session'
  /** The verified client certificate's subject common name. */
  clientCn: string | undefined
}

/**
 * The facts of a finished server-side handshake. `certificatesVerified`: the listener asks
 * for client certificates and refuses any that does not verify (`client_ca`), so an
 * authorized socket carries a verified one. Reads a few fields Node already holds; the peer
 * certificate is only looked at when one was asked for.
 */
export function tlsFacts(ts: TLSSocket, certificatesVerified: boolean): TlsFacts {
  const name: unknown = ts.servername
  const alpn: unknown = ts.alpnProtocol
  let clientCert: TlsFacts['clientCert'] = 'none'
  let clientCn: string | undefined
  if (certificatesVerified && ts.authorized) {
    clientCert = ts.isSessionReused() ? 'session' : 'connection'
    const cn: unknown = ts.getPeerCertificate().subject?.CN
    clientCn = typeof cn === 'string' && cn !== '' ? cn : undefined
  }
  return {
    version: ts.getProtocol() ?? 'unknown',
    cipher: ts.getCipher()?.name,
    sni: typeof name === 'string' && name !== '' ? name.toLowerCase() : undefined,
    alpn: typeof alpn === 'string' && alpn !== '' ? alpn : undefined,
    clientCert,
    clientCn,
  }
}

/**
 * The TLVs for a connection whose TLS ended in sluice: ALPN and AUTHORITY when there was
 * one, and PP2_TYPE_SSL with the client flags, `verify` (0 only for a client certificate
 * that was presented and verified, 1 otherwise, as the spec words it) and the VERSION,
 * CIPHER and CN sub-TLVs.
 */
export function tlsTlvs(f: TlsFacts): ProxyTlv[] {
  const out: ProxyTlv[] = []
  if (f.alpn !== undefined) pushText(out, PP2_TYPE_ALPN, f.alpn, 'latin1')
  if (f.sni !== undefined) pushText(out, PP2_TYPE_AUTHORITY, f.sni, 'utf8')
  const subs: ProxyTlv[] = []
  pushText(subs, PP2_SUBTYPE_SSL_VERSION, f.version, 'latin1')
  if (f.cipher !== undefined) pushText(subs, PP2_SUBTYPE_SSL_CIPHER, f.cipher, 'latin1')
  if (f.clientCn !== undefined && f.clientCert !== 'none') pushText(subs, PP2_SUBTYPE_SSL_CN, f.clientCn, 'utf8')
  const fixed = Buffer.alloc(SSL_FIXED)
  fixed[0] = PP2_CLIENT_SSL | (f.clientCert === 'connection' ? PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS : f.clientCert === 'session' ? PP2_CLIENT_CERT_SESS : 0)
  fixed.writeUInt32BE(f.clientCert === 'none' ? 1 : 0, 1)
  out.push({ type: PP2_TYPE_SSL, value: Buffer.concat([fixed, encodeTlvs(subs)]) })
  return out
}

function pushText(out: ProxyTlv[], type: number, text: string, encoding: 'latin1' | 'utf8'): void {
  const value = Buffer.from(text, encoding)
  if (value.length > 0 && value.length <= MAX_VALUE) out.push({ type, value })
}

/** TLVs in wire form: type, 16-bit big-endian length, value, one after the other. */
export function encodeTlvs(tlvs: readonly ProxyTlv[]): Buffer {
  let size = 0
  for (const t of tlvs) size += 3 + t.value.length
  const out = Buffer.alloc(size)
  let at = 0
  for (const t of tlvs) {
    if (!Number.isInteger(t.type) || t.type < 0 || t.type > 0xff) throw new TypeError(`a TLV type is one byte, not ${t.type}`)
    if (t.value.length > 0xffff) throw new TypeError(`a TLV value holds at most 65535 bytes, not ${t.value.length}`)
    out[at] = t.type
    out.writeUInt16BE(t.value.length, at + 1)
    t.value.copy(out, at + 3)
    at += 3 + t.value.length
  }
  return out
}

/** The PP2_TYPE_SSL TLV, read. */
export interface ReceivedSsl {
  /** The `client` bit field (PP2_CLIENT_*). */
  client: number
  /** 0: the client presented a certificate and it was verified. */
  verify: number
  version: string | undefined
  cipher: string | undefined
  cn: string | undefined
}

/** What a received header's TLVs say about the client's TLS (types sluice does not use are skipped). */
export interface ReceivedTlvs {
  alpn: string | undefined
  authority: string | undefined
  /** Undefined when there was no PP2_TYPE_SSL TLV, or a malformed one (ignored, like an unknown TLV). */
  ssl: ReceivedSsl | undefined
}

/**
 * Reads ALPN, AUTHORITY and SSL from the TLVs of a parsed header, skipping every other type
 * (NOOP, CRC32C, UNIQUE_ID, vendor types). Bounded by the header, which the parser already
 * limits: each sub-TLV takes at least 3 bytes, so the loop ends. Never throws.
 */
export function readTlvs(tlvs: readonly ProxyTlv[]): ReceivedTlvs {
  const out: ReceivedTlvs = { alpn: undefined, authority: undefined, ssl: undefined }
  for (const t of tlvs) {
    if (t.type === PP2_TYPE_ALPN) out.alpn = t.value.toString('latin1')
    else if (t.type === PP2_TYPE_AUTHORITY) out.authority = t.value.toString('utf8')
    else if (t.type === PP2_TYPE_SSL) out.ssl = readSsl(t.value)
  }
  return out
}

function readSsl(v: Buffer): ReceivedSsl | undefined {
  if (v.length < SSL_FIXED) return undefined
  const ssl: ReceivedSsl = { client: v[0] as number, verify: v.readUInt32BE(1), version: undefined, cipher: undefined, cn: undefined }
  let i = SSL_FIXED
  while (i < v.length) {
    if (i + 3 > v.length) return undefined
    const type = v[i] as number
    const n = v.readUInt16BE(i + 1)
    if (i + 3 + n > v.length) return undefined
    const text = (encoding: 'latin1' | 'utf8'): string => v.toString(encoding, i + 3, i + 3 + n)
    if (type === PP2_SUBTYPE_SSL_VERSION) ssl.version = text('latin1')
    else if (type === PP2_SUBTYPE_SSL_CIPHER) ssl.cipher = text('latin1')
    else if (type === PP2_SUBTYPE_SSL_CN) ssl.cn = text('utf8')
    i += 3 + n
  }
  return ssl
}
