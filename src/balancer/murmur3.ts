/**
 * MurmurHash3 (x86, 32-bit) over a string's UTF-16 code units, read as little-endian bytes:
 * `hashString(s, seed)` equals murmur3_32(Buffer.from(s, 'utf16le'), seed). It reads the
 * string in place (no encoding, no allocation), so hashing a client address on every new
 * connection costs a few nanoseconds. Not cryptographic: a client can aim at one backend by
 * choosing its address, which a load balancer's hash cannot prevent anyway.
 *
 * `start` skips a prefix without slicing (e.g. "::ffff:" of an IPv4-mapped address).
 */
export function hashString(s: string, seed: number, start = 0): number {
  let h = seed | 0
  const end = s.length
  let i = start
  for (; i + 1 < end; i += 2) {
    let k = (s.charCodeAt(i) & 0xffff) | (s.charCodeAt(i + 1) << 16)
    k = Math.imul(k, 0xcc9e2d51)
    k = (k << 15) | (k >>> 17)
    k = Math.imul(k, 0x1b873593)
    h ^= k
    h = (h << 13) | (h >>> 19)
    h = (Math.imul(h, 5) + 0xe6546b64) | 0
  }
  if (i < end) {
    let k = s.charCodeAt(i) & 0xffff
    k = Math.imul(k, 0xcc9e2d51)
    k = (k << 15) | (k >>> 17)
    k = Math.imul(k, 0x1b873593)
    h ^= k
  }
  h ^= (end - start) * 2
  return fmix32(h)
}

/** Mixes a 32-bit integer into another seed-dependent 32-bit value (for ports, indexes). */
export function hashInt(n: number, seed: number): number {
  let k = Math.imul(n | 0, 0xcc9e2d51)
  k = (k << 15) | (k >>> 17)
  k = Math.imul(k, 0x1b873593)
  let h = (seed | 0) ^ k
  h = (h << 13) | (h >>> 19)
  h = (Math.imul(h, 5) + 0xe6546b64) | 0
  return fmix32(h ^ 4)
}

/** Murmur3's finalizer: every input bit affects every output bit. Returns an unsigned 32-bit value. */
export function fmix32(h: number): number {
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}
