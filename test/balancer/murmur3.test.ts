import t from 'tap'
import { fmix32, hashInt, hashString } from '../../src/balancer/murmur3.js'

/** Plain byte-wise MurmurHash3 x86_32, as published, to check the string version against. */
function murmur3Bytes(data: Uint8Array, seed: number): number {
  let h = seed | 0
  const blocks = data.length >> 2
  for (let i = 0; i < blocks; i++) {
    let k = (data[i * 4] as number) | ((data[i * 4 + 1] as number) << 8) | ((data[i * 4 + 2] as number) << 16) | ((data[i * 4 + 3] as number) << 24)
    k = Math.imul(k, 0xcc9e2d51)
    k = (k << 15) | (k >>> 17)
    k = Math.imul(k, 0x1b873593)
    h ^= k
    h = (h << 13) | (h >>> 19)
    h = (Math.imul(h, 5) + 0xe6546b64) | 0
  }
  const tail = blocks * 4
  const rest = data.length & 3
  if (rest > 0) {
    let k = 0
    if (rest >= 3) k ^= (data[tail + 2] as number) << 16
    if (rest >= 2) k ^= (data[tail + 1] as number) << 8
    k ^= data[tail] as number
    k = Math.imul(k, 0xcc9e2d51)
    k = (k << 15) | (k >>> 17)
    k = Math.imul(k, 0x1b873593)
    h ^= k
  }
  h ^= data.length
  return fmix32(h)
}

t.test('the reference implementation matches published MurmurHash3 x86_32 vectors', async (t) => {
  const enc = new TextEncoder()
  t.equal(murmur3Bytes(enc.encode(''), 0), 0)
  t.equal(murmur3Bytes(enc.encode(''), 1), 0x514e28b7)
  t.equal(murmur3Bytes(enc.encode('test'), 0), 0xba6bd213)
  t.equal(murmur3Bytes(enc.encode('Hello, world!'), 1234), 0xfaf6cdb3)
  t.equal(murmur3Bytes(enc.encode('The quick brown fox jumps over the lazy dog'), 0), 0x2e4ff723)
})

t.test('hashString is MurmurHash3 over the UTF-16LE bytes of the string', async (t) => {
  const samples = ['', 'a', 'ab', 'abc', '10.0.0.1:5432', '[2001:db8::1]:443', 'api.example.com', 'é€😀', 'x'.repeat(101)]
  for (const s of samples) {
    for (const seed of [0, 1, 0x5bd1e995, -1]) {
      t.equal(hashString(s, seed), murmur3Bytes(Buffer.from(s, 'utf16le'), seed), `"${s.slice(0, 20)}" seed ${seed}`)
    }
  }
})

t.test('hashString with a start offset hashes the rest of the string', async (t) => {
  t.equal(hashString('::ffff:10.0.0.1', 7, 7), hashString('10.0.0.1', 7))
  t.equal(hashString('abcdef', 3, 1), hashString('bcdef', 3))
})

t.test('hashInt is MurmurHash3 of the integer as 4 little-endian bytes', async (t) => {
  for (const n of [0, 1, 443, 65535, 0x7fffffff, -1]) {
    const bytes = Buffer.alloc(4)
    bytes.writeInt32LE(n | 0)
    t.equal(hashInt(n, 99), murmur3Bytes(bytes, 99), `n=${n}`)
  }
})

t.test('results are unsigned 32-bit integers', async (t) => {
  for (let i = 0; i < 1000; i++) {
    const h = hashString(`k${i}`, i)
    t.ok(Number.isInteger(h) && h >= 0 && h < 2 ** 32, `k${i}`, { diagnostic: false })
  }
})
