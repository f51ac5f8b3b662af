import t from 'tap'
import { keyHash } from '../../src/balancer/hash-key.js'
import type { PickContext } from '../../src/balancer/types.js'

const ctx = (remoteAddress: string, remotePort = 40000, sni?: string): PickContext => ({ protocol: 'tcp', remoteAddress, remotePort, ...(sni === undefined ? {} : { sni }) })

t.test('source-ip: the port does not matter, the address does', async (t) => {
  t.equal(keyHash(ctx('10.0.0.1', 1111), 'source-ip'), keyHash(ctx('10.0.0.1', 2222), 'source-ip'))
  t.not(keyHash(ctx('10.0.0.1'), 'source-ip'), keyHash(ctx('10.0.0.2'), 'source-ip'))
})

t.test('an IPv4 client seen on a dual-stack socket hashes as plain IPv4', async (t) => {
  t.equal(keyHash(ctx('::ffff:192.0.2.7'), 'source-ip'), keyHash(ctx('192.0.2.7'), 'source-ip'))
  t.equal(keyHash(ctx('::ffff:192.0.2.7', 5), 'source-ip-port'), keyHash(ctx('192.0.2.7', 5), 'source-ip-port'))
  t.not(keyHash(ctx('::ffff:c000:207'), 'source-ip'), keyHash(ctx('c000:207'), 'source-ip'), 'only the dotted mapped form is unwrapped')
  t.not(keyHash(ctx('2001:db8::1'), 'source-ip'), keyHash(ctx('2001:db8::2'), 'source-ip'))
})

t.test('source-ip-port: each connection of a client hashes on its own', async (t) => {
  const seen = new Set<number>()
  for (let port = 30000; port < 31000; port++) seen.add(keyHash(ctx('10.0.0.1', port), 'source-ip-port'))
  t.equal(seen.size, 1000, '1000 ports, 1000 different hashes')
})

t.test('sni: the server name decides; without one, the source address', async (t) => {
  t.equal(keyHash(ctx('10.0.0.1', 1, 'a.example'), 'sni'), keyHash(ctx('10.0.0.2', 2, 'a.example'), 'sni'))
  t.not(keyHash(ctx('10.0.0.1', 1, 'a.example'), 'sni'), keyHash(ctx('10.0.0.1', 1, 'b.example'), 'sni'))
  t.equal(keyHash(ctx('10.0.0.1'), 'sni'), keyHash(ctx('10.0.0.1'), 'source-ip'), 'no SNI: falls back to source-ip')
  t.equal(keyHash(ctx('10.0.0.1', 1, ''), 'sni'), keyHash(ctx('10.0.0.1'), 'source-ip'), 'empty SNI: same fallback')
})
