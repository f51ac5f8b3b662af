import { isIP } from 'node:net'

/**
 * The PROXY protocol (HAProxy's spec, versions 1 and 2), parsed strictly. The parser is pure:
 * it looks at the bytes received so far and says "need more", "here is the header and its
 * length", or "this is not a valid header" — it never throws, on any input.
 */

/** Longest v1 line the spec allows, CRLF included. */
export const V1_MAX = 107
/** The 12 bytes every v2 header starts with. */
export const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a])
/**
 * Largest v2 address-and-TLV block accepted. The spec allows 65535; real senders (HAProxy,
 * AWS NLB, GCP) send a few hundred bytes at most, and every byte is held per connection.
 */
export const V2_MAX_PAYLOAD = 4096

const V1_PREFIX = Buffer.from('PROXY ', 'latin1')

export interface ProxyAddresses {
  /** The original client. */
  sourceAddress: string
  sourcePort: number
  /** The address the client connected to. */
  destAddress: string
  destPort: number
}

/** One v2 TLV (type-length-value) as it is on the wire, without its 3-byte type and length. */
export interface ProxyTlv {
  type: number
  value: Buffer
}

export interface ProxyHeader {
  version: 1 | 2
  /** `local`: a health check or the proxy itself speaking; use the real connection's address. */
  command: 'proxy' | 'local'
  /** `unknown`: v1 UNKNOWN, v2 AF_UNSPEC or AF_UNIX: no usable address; use the connection's. */
  transport: 'stream' | 'dgram' | 'unknown'
  /** Present for IPv4/IPv6 PROXY headers. */
  addresses?: ProxyAddresses
  /**
   * v2 TLVs in order (type, value), as received, unknown types included: a reader takes the
   * types it knows (readTlvs in proxy-tlv.ts) and skips the rest, as the spec asks.
   */
  tlvs: ProxyTlv[]
}

export type ProxyParse =
  | { kind: 'need-more' }
  | { kind: 'ok'; header: ProxyHeader; length: number }
  | { kind: 'error'; message: string }

const NEED_MORE: ProxyParse = { kind: 'need-more' }

function fail(message: string): ProxyParse {
  return { kind: 'error', message }
}

/** Parses the header at the start of `buf` (the bytes received so far). */
export function parseProxyHeader(buf: Buffer): ProxyParse {
  if (buf.length === 0) return NEED_MORE
  if (buf[0] === 0x50) return parseV1(buf)
  if (buf[0] === 0x0d) return parseV2(buf)
  return fail('the connection did not start with a PROXY protocol header (v1 "PROXY " or the v2 signature)')
}

function prefixMatches(buf: Buffer, want: Buffer): boolean {
  const n = Math.min(buf.length, want.length)
  for (let i = 0; i < n; i++) if (buf[i] !== want[i]) return false
  return true
}

function parseV1(buf: Buffer): ProxyParse {
  if (!prefixMatches(buf, V1_PREFIX)) return fail('not a PROXY protocol v1 header: it must start with "PROXY "')
  const limit = Math.min(buf.length, V1_MAX)
  let cr = -1
  for (let i = V1_PREFIX.length; i < limit; i++) {
    const c = buf[i] as number
    if (c === 0x0d) {
      cr = i
      break
    }
    if (c < 0x20 || c > 0x7e) return fail('a PROXY v1 header may only hold printable ASCII')
  }
  if (cr < 0) return buf.length >= V1_MAX ? fail(`a PROXY v1 header must end with CRLF within ${V1_MAX} bytes`) : NEED_MORE
  if (cr + 1 >= buf.length) return NEED_MORE
  if (buf[cr + 1] !== 0x0a) return fail('a PROXY v1 header must end with CRLF')
  const line = buf.toString('latin1', V1_PREFIX.length, cr)
  const length = cr + 2
  const parts = line.split(' ')
  const proto = parts[0]
  if (proto === 'UNKNOWN') return { kind: 'ok', length, header: { version: 1, command: 'proxy', transport: 'unknown', tlvs: [] } }
  if (proto !== 'TCP4' && proto !== 'TCP6') return fail(`PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN, not "${proto ?? ''}"`)
  if (parts.length !== 5) return fail('PROXY v1 needs exactly: protocol, source and destination address, source and destination port, single spaces apart')
  const family = proto === 'TCP4' ? 4 : 6
  const [, src, dst, sport, dport] = parts as [string, string, string, string, string]
  if (isIP(src) !== family || isIP(dst) !== family) return fail(`PROXY v1 ${proto} addresses must both be IPv${family} addresses`)
  if (family === 4 && (!canonicalV4(src) || !canonicalV4(dst))) return fail('PROXY v1 IPv4 addresses must be in dotted-quad form without leading zeros')
  const sp = parsePort(sport)
  const dp = parsePort(dport)
  if (sp === undefined || dp === undefined) return fail('PROXY v1 ports must be decimal numbers from 0 to 65535 without leading zeros')
  return {
    kind: 'ok',
    length,
    header: { version: 1, command: 'proxy', transport: 'stream', tlvs: [], addresses: { sourceAddress: src, sourcePort: sp, destAddress: dst, destPort: dp } },
  }
}

function canonicalV4(a: string): boolean {
  return a.split('.').every((o) => o === '0' || !o.startsWith('0'))
}

function parsePort(s: string): number | undefined {
  if (!/^(0|[1-9]\d{0,4})$/.test(s)) return undefined
  const n = Number(s)
  return n <= 65535 ? n : undefined
}

function parseV2(buf: Buffer): ProxyParse {
  if (!prefixMatches(buf, V2_SIGNATURE)) return fail('not a PROXY protocol v2 header: the 12-byte signature does not match')
  if (buf.length < 16) return NEED_MORE
  const verCmd = buf[12] as number
  if (verCmd >> 4 !== 2) return fail(`PROXY v2 version nibble must be 2, not ${verCmd >> 4}`)
  const cmd = verCmd & 0x0f
  if (cmd > 1) return fail(`PROXY v2 command must be LOCAL (0) or PROXY (1), not ${cmd}`)
  const famProto = buf[13] as number
  const fam = famProto >> 4
  const proto = famProto & 0x0f
  if (fam > 3 || proto > 2) return fail(`PROXY v2 address family/protocol byte 0x${famProto.toString(16)} is not defined`)
  const len = buf.readUInt16BE(14)
  if (len > V2_MAX_PAYLOAD) return fail(`PROXY v2 header announces ${len} bytes of addresses and TLVs; at most ${V2_MAX_PAYLOAD} are accepted`)
  if (buf.length < 16 + len) return NEED_MORE
  const length = 16 + len
  const command = cmd === 0 ? 'local' : 'proxy'
  // AF_INET 12 bytes, AF_INET6 36, AF_UNIX 216, AF_UNSPEC 0.
  const addrLen = fam === 1 ? 12 : fam === 2 ? 36 : fam === 3 ? 216 : 0
  if (command === 'proxy' && fam !== 0 && proto === 0) return fail('PROXY v2 PROXY command with an address family must name STREAM or DGRAM')
  if (len < addrLen) return fail(`PROXY v2 address block is ${len} bytes; family ${fam} needs ${addrLen}`)
  const tlvs = parseTlvs(buf, 16 + addrLen, length)
  if (tlvs === undefined) return fail('PROXY v2 TLVs are malformed (a TLV runs past the end of the header)')
  const transport = fam === 0 || fam === 3 || proto === 0 ? 'unknown' : proto === 1 ? 'stream' : 'dgram'
  const header: ProxyHeader = { version: 2, command, transport, tlvs }
  if (fam === 1 || fam === 2) {
    const a = 16
    const step = fam === 1 ? 4 : 16
    header.addresses = {
      sourceAddress: ipText(buf, a, step),
      destAddress: ipText(buf, a + step, step),
      sourcePort: buf.readUInt16BE(a + 2 * step),
      destPort: buf.readUInt16BE(a + 2 * step + 2),
    }
    if (command === 'local' || transport === 'unknown') delete header.addresses
  }
  return { kind: 'ok', header, length }
}

function parseTlvs(buf: Buffer, start: number, end: number): ProxyTlv[] | undefined {
  const out: ProxyTlv[] = []
  let i = start
  // Every TLV takes at least 3 bytes, so this loop ends within (end - start) / 3 turns.
  while (i < end) {
    if (i + 3 > end) return undefined
    const type = buf[i] as number
    const n = buf.readUInt16BE(i + 1)
    if (i + 3 + n > end) return undefined
    out.push({ type, value: Buffer.from(buf.subarray(i + 3, i + 3 + n)) })
    i += 3 + n
  }
  return out
}

function ipText(buf: Buffer, at: number, bytes: number): string {
  if (bytes === 4) return `${buf[at]}.${buf[at + 1]}.${buf[at + 2]}.${buf[at + 3]}`
  const groups: string[] = []
  for (let i = 0; i < 8; i++) groups.push(buf.readUInt16BE(at + 2 * i).toString(16))
  return compressV6(groups)
}

/** RFC 5952 text: the longest run (2+) of zero groups becomes `::`. */
function compressV6(groups: string[]): string {
  let bestAt = -1
  let bestLen = 1
  for (let i = 0; i < 8; ) {
    if (groups[i] !== '0') {
      i++
      continue
    }
    let j = i
    while (j < 8 && groups[j] === '0') j++
    if (j - i > bestLen) {
      bestAt = i
      bestLen = j - i
    }
    i = j
  }
  if (bestAt < 0) return groups.join(':')
  return `${groups.slice(0, bestAt).join(':')}::${groups.slice(bestAt + bestLen).join(':')}`
}
