import { isIP } from 'node:net'
import { V2_SIGNATURE, type ProxyAddresses, type ProxyTlv } from './proxy-protocol.js'
import { encodeTlvs } from './proxy-tlv.js'
import { plainAddress } from '../config/cidr.js'

/**
 * Builds the PROXY protocol header sluice sends to a backend: v1 (text) or v2 (binary, STREAM
 * for TCP, DGRAM for UDP). When the two addresses are of different families (an IPv6 client
 * on an IPv4 listener address, say) the IPv4 one is written IPv4-mapped, as the spec asks;
 * when an address is not an IP at all the header says UNKNOWN / LOCAL-less AF_UNSPEC.
 */

export type HeaderVersion = 'v1' | 'v2'

/**
 * The header for a connection from `a.source` to `a.dest`. `tlvs` (v2 only; v1 has no room
 * for them) go after the addresses, in order: see proxy-tlv.ts for the TLS ones.
 */
export function encodeProxyHeader(version: HeaderVersion, a: ProxyAddresses, transport: 'stream' | 'dgram' = 'stream', tlvs?: readonly ProxyTlv[]): Buffer {
  return version === 'v1' ? encodeV1(a) : encodeV2(a, transport, tlvs)
}

/** PROXY v1: `PROXY TCP4 src dst sport dport\r\n` (TCP only). */
export function encodeV1(a: ProxyAddresses): Buffer {
  const fam = families(a)
  if (fam === undefined) return Buffer.from('PROXY UNKNOWN\r\n', 'latin1')
  const [src, dst] = fam.v6 ? [asV6(a.sourceAddress), asV6(a.destAddress)] : [plainAddress(a.sourceAddress), plainAddress(a.destAddress)]
  return Buffer.from(`PROXY ${fam.v6 ? 'TCP6' : 'TCP4'} ${src} ${dst} ${a.sourcePort} ${a.destPort}\r\n`, 'latin1')
}

/**
 * PROXY v2 with the PROXY command, or the LOCAL command when `a` is undefined; `tlvs` after
 * the address block. A TLV block that would not fit the header's 16-bit length is a
 * programmer error (TypeError): the TLS TLVs sluice writes take a few hundred bytes at most.
 */
export function encodeV2(a: ProxyAddresses | undefined, transport: 'stream' | 'dgram' = 'stream', tlvs?: readonly ProxyTlv[]): Buffer {
  const fam = a === undefined ? undefined : families(a)
  const extra = tlvs === undefined || tlvs.length === 0 ? undefined : encodeTlvs(tlvs)
  const extraLen = extra?.length ?? 0
  if (a === undefined || fam === undefined) {
    if (extraLen > 0xffff) throw new TypeError(`PROXY v2 TLVs of ${extraLen} bytes do not fit in a header`)
    const out = Buffer.alloc(16 + extraLen)
    V2_SIGNATURE.copy(out, 0)
    out[12] = a === undefined ? 0x20 : 0x21
    out[13] = 0x00
    out.writeUInt16BE(extraLen, 14)
    extra?.copy(out, 16)
    return out
  }
  const proto = transport === 'stream' ? 1 : 2
  const step = fam.v6 ? 16 : 4
  const addrLen = 2 * step + 4
  if (addrLen + extraLen > 0xffff) throw new TypeError(`PROXY v2 TLVs of ${extraLen} bytes do not fit in a header`)
  const out = Buffer.alloc(16 + addrLen + extraLen)
  V2_SIGNATURE.copy(out, 0)
  out[12] = 0x21
  out[13] = ((fam.v6 ? 2 : 1) << 4) | proto
  out.writeUInt16BE(addrLen + extraLen, 14)
  writeIp(out, 16, fam.v6 ? asV6(a.sourceAddress) : plainAddress(a.sourceAddress), step)
  writeIp(out, 16 + step, fam.v6 ? asV6(a.destAddress) : plainAddress(a.destAddress), step)
  out.writeUInt16BE(a.sourcePort & 0xffff, 16 + 2 * step)
  out.writeUInt16BE(a.destPort & 0xffff, 18 + 2 * step)
  extra?.copy(out, 16 + addrLen)
  return out
}

/** Whether the header is IPv6 (either side is a real IPv6 address); undefined when either is not an IP. */
function families(a: ProxyAddresses): { v6: boolean } | undefined {
  const s = isIP(plainAddress(a.sourceAddress))
  const d = isIP(plainAddress(a.destAddress))
  if (s === 0 || d === 0) return undefined
  return { v6: s === 6 || d === 6 }
}

function asV6(address: string): string {
  const p = plainAddress(address)
  return isIP(p) === 4 ? `::ffff:${p}` : p
}

function writeIp(out: Buffer, at: number, address: string, bytes: number): void {
  if (bytes === 4) {
    const o = address.split('.')
    for (let i = 0; i < 4; i++) out[at + i] = Number(o[i])
    return
  }
  const groups = expandV6(address)
  for (let i = 0; i < 8; i++) out.writeUInt16BE(groups[i] ?? 0, at + 2 * i)
}

/** The eight 16-bit groups of an IPv6 address (with `::` and an embedded IPv4 tail). */
function expandV6(address: string): number[] {
  let text = address
  const pct = text.indexOf('%')
  if (pct >= 0) text = text.slice(0, pct)
  let tail: number[] = []
  const lastColon = text.lastIndexOf(':')
  const last = text.slice(lastColon + 1)
  if (last.includes('.')) {
    const o = last.split('.').map(Number)
    tail = [((o[0] ?? 0) << 8) | (o[1] ?? 0), ((o[2] ?? 0) << 8) | (o[3] ?? 0)]
    text = `${text.slice(0, lastColon + 1)}${tail.length > 0 ? '0:0' : ''}`
  }
  const [head, rest] = text.split('::') as [string, string | undefined]
  const h = head === '' ? [] : head.split(':')
  const r = rest === undefined || rest === '' ? [] : rest.split(':')
  const zeros = rest === undefined ? 0 : 8 - h.length - r.length
  const groups = [...h, ...Array<string>(Math.max(0, zeros)).fill('0'), ...r].map((g) => parseInt(g, 16) || 0)
  if (tail.length === 2) {
    groups[6] = tail[0] ?? 0
    groups[7] = tail[1] ?? 0
  }
  return groups.slice(0, 8)
}
