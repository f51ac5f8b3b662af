import { BlockList, isIP } from 'node:net'

/** A parsed CIDR block: `10.0.0.0/8`, `2001:db8::/32`, or a single address (`/32`, `/128`). */
export interface Cidr {
  /** The text as normalized: `address/prefix`. */
  text: string
  family: 'ipv4' | 'ipv6'
  address: string
  prefix: number
}

/** Parses `text` as a CIDR (a bare address means the one host); returns a message when it is not one. */
export function parseCidr(text: string): Cidr | string {
  const t = text.trim()
  const slash = t.indexOf('/')
  const address = slash < 0 ? t : t.slice(0, slash)
  const v = isIP(address)
  if (v === 0) return `"${text}" is not an IP address or CIDR block (e.g. 10.0.0.0/8, 2001:db8::/32)`
  const max = v === 4 ? 32 : 128
  let prefix = max
  if (slash >= 0) {
    const p = t.slice(slash + 1)
    if (!/^\d{1,3}$/.test(p) || Number(p) > max) return `"${text}": the prefix length must be a number from 0 to ${max}`
    prefix = Number(p)
  }
  return { text: `${address}/${prefix}`, family: v === 4 ? 'ipv4' : 'ipv6', address, prefix }
}

/**
 * The bare address of a peer, with an IPv4-mapped IPv6 address (`::ffff:10.1.2.3`, what a
 * dual-stack socket reports) turned back into IPv4 so `10.0.0.0/8` matches it.
 */
export function plainAddress(address: string): string {
  if (address.length > 7 && address.charCodeAt(0) === 58 && address.toLowerCase().startsWith('::ffff:')) {
    const rest = address.slice(7)
    if (isIP(rest) === 4) return rest
  }
  return address
}

/** A set of CIDR blocks to test addresses against (node's BlockList underneath). */
export class CidrSet {
  private readonly list = new BlockList()
  readonly size: number

  constructor(blocks: readonly (Cidr | string)[]) {
    let n = 0
    for (const b of blocks) {
      const c = typeof b === 'string' ? parseCidr(b) : b
      if (typeof c === 'string') throw new TypeError(`CidrSet: ${c}`)
      this.list.addSubnet(c.address, c.prefix, c.family)
      n++
    }
    this.size = n
  }

  /** Whether `address` (IPv4, IPv6 or IPv4-mapped IPv6) lies in one of the blocks. */
  has(address: string): boolean {
    const a = plainAddress(address)
    const v = isIP(a)
    if (v === 0) return false
    return this.list.check(a, v === 4 ? 'ipv4' : 'ipv6')
  }
}
