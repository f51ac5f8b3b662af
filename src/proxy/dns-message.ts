/**
 * The little of a DNS message (RFC 1035 section 4.1) that relaying by query ID needs: the
 * ID, the QR bit, and the question, hashed so an answer can be matched to its query without
 * keeping the query. Reads in place, allocates nothing.
 */

/** Header length: ID, flags, QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT. */
export const DNS_HEADER_BYTES = 12
/** A name is at most 255 bytes on the wire (RFC 1035 section 2.3.4). */
const MAX_NAME_BYTES = 255

/** The query ID of a message at least DNS_HEADER_BYTES long. */
export function dnsId(msg: Buffer): number {
  return (msg[0]! << 8) | msg[1]!
}

export function setDnsId(msg: Buffer, id: number): void {
  msg[0] = (id >>> 8) & 0xff
  msg[1] = id & 0xff
}

/** Whether the QR bit says response. */
export function isResponse(msg: Buffer): boolean {
  return (msg[2]! & 0x80) !== 0
}

/**
 * A hash of the first question (name case-folded, type and class), or -1 when the message
 * has no well-formed question: shorter than a header, QDCOUNT 0, a compressed or oversized
 * name, or cut short. FNV-1a, 32 bits.
 */
export function questionHash(msg: Buffer): number {
  const len = msg.length
  if (len < DNS_HEADER_BYTES + 5) return -1
  if (((msg[4]! << 8) | msg[5]!) === 0) return -1
  let h = 0x811c9dc5
  let i = DNS_HEADER_BYTES
  for (;;) {
    if (i >= len) return -1
    const label = msg[i]!
    // A question's name is never compressed in a query; a pointer (0xc0) or the reserved
    // label types make it malformed here.
    if (label > 63) return -1
    h = Math.imul(h ^ label, 0x01000193)
    i++
    if (label === 0) break
    if (i + label > len || i - DNS_HEADER_BYTES > MAX_NAME_BYTES) return -1
    for (const end = i + label; i < end; i++) {
      let c = msg[i]!
      if (c >= 0x41 && c <= 0x5a) c |= 0x20
      h = Math.imul(h ^ c, 0x01000193)
    }
  }
  if (i + 4 > len) return -1
  for (const end = i + 4; i < end; i++) h = Math.imul(h ^ msg[i]!, 0x01000193)
  return h >>> 0
}
