import type { ConfigReader, MapView } from '../config/reader.js'
import type { PickContext } from './types.js'
import { hashInt, hashString } from './murmur3.js'

/** What a hashing algorithm keeps a client on its backend by. */
export type HashKey = 'source-ip' | 'source-ip-port' | 'sni'

export const HASH_KEYS: readonly HashKey[] = ['source-ip', 'source-ip-port', 'sni']
export const DEFAULT_HASH_KEY: HashKey = 'source-ip'

/** Seed of connection-key hashes; backends' points use other seeds, so the two are independent. */
const KEY_SEED = 0x5bd1e995

const MAPPED_V4 = '::ffff:'

/** Reads `hash_key` of a pool (default source-ip). */
export function parseHashKey(pool: MapView, reader: ConfigReader, context: string): HashKey | undefined {
  if (!pool.has('hash_key')) return DEFAULT_HASH_KEY
  return reader.oneOf(pool.get('hash_key'), `${context} hash_key`, HASH_KEYS)
}

/**
 * The 32-bit hash of a connection's key. An IPv4 client seen through a dual-stack socket
 * (`::ffff:10.0.0.1`) hashes as `10.0.0.1`, so it lands on the same backend whichever
 * listener it came in on. `sni` without a server name (plain TCP, or a ClientHello without
 * SNI) falls back to the source address. Allocates nothing.
 */
export function keyHash(ctx: PickContext, key: HashKey): number {
  if (key === 'sni') {
    const sni = ctx.sni
    if (sni !== undefined && sni !== '') return hashString(sni, KEY_SEED)
  }
  const addr = ctx.remoteAddress
  const start = addr.length > MAPPED_V4.length && addr.startsWith(MAPPED_V4) && addr.includes('.', MAPPED_V4.length) ? MAPPED_V4.length : 0
  const h = hashString(addr, KEY_SEED, start)
  return key === 'source-ip-port' ? hashInt(ctx.remotePort, h) : h
}
