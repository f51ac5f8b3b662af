import { parseCidr, type Cidr } from '../config/cidr.js'

/**
 * A listener's `access: {allow, deny}`: which client addresses may connect. A missing
 * `allow` allows every address, a missing `deny` denies none, and deny wins.
 *
 * Each list is a binary trie over the address bits (one for IPv4, one for IPv6), so a lookup
 * walks at most 32 or 128 nodes whatever the number of rules: O(prefix length), not
 * O(rules). (Node's net.BlockList checks its rules one by one, and the `blockList` server
 * option acts before a PROXY header could name the real client.) IPv4-mapped IPv6 addresses
 * (`::ffff:10.1.2.3`, what a dual-stack socket reports) are matched as IPv4.
 */
export class AccessList {
  private readonly allow: PrefixTrie | undefined
  private readonly deny: PrefixTrie | undefined
  private readonly bytes = new Uint8Array(16)

  constructor(allow: readonly string[] | undefined, deny: readonly string[] | undefined) {
    this.allow = allow === undefined ? undefined : PrefixTrie.of(allow)
    this.deny = deny === undefined || deny.length === 0 ? undefined : PrefixTrie.of(deny)
  }

  /** Whether `address` may connect. An address that does not parse is refused when any list is set. */
  allows(address: string): boolean {
    if (this.allow === undefined && this.deny === undefined) return true
    const family = addressBytes(address, this.bytes)
    if (family === 0) return false
    if (this.deny !== undefined && this.deny.has(family, this.bytes)) return false
    return this.allow === undefined || this.allow.has(family, this.bytes)
  }
}

/** Node of the trie: children for bit 0 and 1, and whether a rule's prefix ends here. */
interface TrieNode {
  zero: TrieNode | undefined
  one: TrieNode | undefined
  end: boolean
}

const node = (): TrieNode => ({ zero: undefined, one: undefined, end: false })

/** CIDR blocks of both families, each in a trie of its bits. */
export class PrefixTrie {
  private readonly v4 = node()
  private readonly v6 = node()

  static of(blocks: readonly string[]): PrefixTrie {
    const t = new PrefixTrie()
    for (const b of blocks) {
      const c = parseCidr(b)
      if (typeof c === 'string') throw new TypeError(`access list: ${c}`)
      t.add(c)
    }
    return t
  }

  add(c: Cidr): void {
    const bytes = new Uint8Array(16)
    const family = addressBytes(c.address, bytes)
    if (family === 0) throw new TypeError(`access list: ${c.text} is not an address`)
    let n = family === 4 ? this.v4 : this.v6
    for (let i = 0; i < c.prefix && !n.end; i++) {
      const bit = (bytes[i >> 3]! >> (7 - (i & 7))) & 1
      n = bit === 0 ? (n.zero ??= node()) : (n.one ??= node())
    }
    // A shorter prefix already covers everything below it; so does this one now.
    n.end = true
    n.zero = n.one = undefined
  }

  /** Whether the address in `bytes` (4 bytes for family 4, 16 for 6) lies in a block. */
  has(family: 4 | 6, bytes: Uint8Array): boolean {
    let n: TrieNode | undefined = family === 4 ? this.v4 : this.v6
    const bits = family === 4 ? 32 : 128
    for (let i = 0; n !== undefined; i++) {
      if (n.end) return true
      if (i === bits) return false
      n = ((bytes[i >> 3]! >> (7 - (i & 7))) & 1) === 0 ? n.zero : n.one
    }
    return false
  }
}

/**
 * Writes the address into `out` (4 bytes of IPv4, or 16 of IPv6; IPv4-mapped IPv6 is written
 * as its IPv4) and returns its family, or 0 when it is not an IP address.
 */
export function addressBytes(address: string, out: Uint8Array): 0 | 4 | 6 {
  const zone = address.indexOf('%')
  const a = zone < 0 ? address : address.slice(0, zone)
  if (a.indexOf(':') < 0) return ipv4Bytes(a, out, 0) ? 4 : 0
  const dbl = a.indexOf('::')
  if (dbl >= 0 && a.indexOf('::', dbl + 1) >= 0) return 0
  const head = dbl < 0 ? a : a.slice(0, dbl)
  const tail = dbl < 0 ? '' : a.slice(dbl + 2)
  const hs = head === '' ? [] : head.split(':')
  const ts = tail === '' ? [] : tail.split(':')
  // An embedded IPv4 at the end (::ffff:1.2.3.4) counts as two groups.
  const last = ts.length > 0 ? ts[ts.length - 1]! : hs[hs.length - 1]
  const v4tail = last !== undefined && last.indexOf('.') >= 0
  const groups = hs.length + ts.length + (v4tail ? 1 : 0)
  if (groups > 8 || (dbl < 0 && groups !== 8)) return 0
  out.fill(0)
  let o = 0
  const put = (g: string): boolean => {
    if (g.length === 0 || g.length > 4 || !/^[0-9a-fA-F]+$/.test(g)) return false
    const v = parseInt(g, 16)
    out[o++] = v >> 8
    out[o++] = v & 0xff
    return true
  }
  const hsGroups = v4tail && ts.length === 0 ? hs.slice(0, -1) : hs
  for (const g of hsGroups) if (!put(g)) return 0
  if (dbl >= 0) o = 16 - (ts.length + (v4tail ? 1 : 0)) * 2
  const tsGroups = v4tail && ts.length > 0 ? ts.slice(0, -1) : ts
  for (const g of tsGroups) if (!put(g)) return 0
  if (v4tail && !ipv4Bytes(last, out, 12)) return 0
  // ::ffff:a.b.c.d (or ::ffff:XXXX:XXXX) is the IPv4 address a.b.c.d.
  let mapped = out[10] === 0xff && out[11] === 0xff
  for (let i = 0; i < 10 && mapped; i++) if (out[i] !== 0) mapped = false
  if (mapped) {
    out.copyWithin(0, 12, 16)
    return 4
  }
  return 6
}

function ipv4Bytes(a: string, out: Uint8Array, at: number): boolean {
  let part = 0
  let digits = 0
  let n = 0
  for (let i = 0; i <= a.length; i++) {
    const c = i === a.length ? 46 : a.charCodeAt(i)
    if (c === 46) {
      if (digits === 0 || part > 255 || n > 3) return false
      out[at + n++] = part
      part = 0
      digits = 0
    } else if (c >= 48 && c <= 57) {
      part = part * 10 + (c - 48)
      if (++digits > 3) return false
    } else {
      return false
    }
  }
  return n === 4
}

/**
 * What per-source limits count a client under: its IPv4 address, or the /64 of its IPv6
 * address (one host usually holds a whole /64, so counting single IPv6 addresses would let
 * it open as many connections as it likes). The text is short and stable.
 */
export function sourceKey(address: string, scratch: Uint8Array): string {
  const family = addressBytes(address, scratch)
  if (family === 4) return `${scratch[0]}.${scratch[1]}.${scratch[2]}.${scratch[3]}`
  if (family === 0) return address
  let s = ''
  for (let i = 0; i < 8; i += 2) s += ((scratch[i]! << 8) | scratch[i + 1]!).toString(16) + ':'
  return s + ':/64'
}
