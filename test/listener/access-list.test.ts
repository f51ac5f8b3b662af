import t from 'tap'
import { BlockList } from 'node:net'
import { AccessList, addressBytes, sourceKey } from '../../src/listener/access-list.js'

t.test('allow and deny: a missing allow allows all, a missing deny denies none, deny wins', async (t) => {
  const open = new AccessList(undefined, undefined)
  t.ok(open.allows('203.0.113.9'))
  const allowOnly = new AccessList(['10.0.0.0/8', '2001:db8::/32'], undefined)
  t.ok(allowOnly.allows('10.1.2.3'))
  t.ok(allowOnly.allows('::ffff:10.1.2.3'), 'an IPv4-mapped address matches its IPv4 block')
  t.ok(allowOnly.allows('2001:db8:ffff::1'))
  t.notOk(allowOnly.allows('11.0.0.1'))
  t.notOk(allowOnly.allows('2001:db9::1'))
  const both = new AccessList(['10.0.0.0/8'], ['10.9.0.0/16'])
  t.ok(both.allows('10.8.255.255'))
  t.notOk(both.allows('10.9.0.1'), 'deny wins over a wider allow')
  const denyOnly = new AccessList(undefined, ['192.0.2.1', '0.0.0.0/0'])
  t.notOk(denyOnly.allows('8.8.8.8'), '/0 denies every IPv4 address')
  t.ok(denyOnly.allows('2001:db8::1'), 'and no IPv6 one')
  t.notOk(both.allows('not an address'), 'what does not parse is refused when a list is set')
})

t.test('the trie agrees with node BlockList on random blocks and addresses', async (t) => {
  // mulberry32: a small seeded generator, so a failure can be replayed.
  let seed = 7
  const rnd = (n: number): number => {
    seed = (seed + 0x6d2b79f5) | 0
    let x = Math.imul(seed ^ (seed >>> 15), 1 | seed)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return ((x ^ (x >>> 14)) >>> 0) % n
  }
  const v4 = (): string => [rnd(4), rnd(256), rnd(256), rnd(256)].join('.')
  const v6 = (): string => `2001:db8:${rnd(4).toString(16)}:${rnd(65536).toString(16)}::${rnd(65536).toString(16)}`
  const rules: string[] = []
  const bl = new BlockList()
  for (let i = 0; i < 300; i++) {
    const six = rnd(2) === 0
    const a = six ? v6() : v4()
    const p = six ? 44 + rnd(85) : 12 + rnd(21)
    rules.push(`${a}/${p}`)
    bl.addSubnet(a, p, six ? 'ipv6' : 'ipv4')
  }
  const list = new AccessList(undefined, rules)
  let mismatches = 0
  let denied = 0
  for (let i = 0; i < 5000; i++) {
    const six = rnd(2) === 0
    const a = six ? v6() : v4()
    const want = bl.check(a, six ? 'ipv6' : 'ipv4')
    if (want) denied++
    if (list.allows(a) === want) mismatches++
  }
  t.equal(mismatches, 0, 'no address judged differently')
  t.ok(denied > 100 && denied < 4900, `a mix of both outcomes (${denied} denied)`)
})

t.test('addresses parse in every spelling; IPv6 sources group per /64', async (t) => {
  const b = new Uint8Array(16)
  t.equal(addressBytes('1.2.3.4', b), 4)
  t.same([...b.subarray(0, 4)], [1, 2, 3, 4])
  t.equal(addressBytes('::ffff:1.2.3.4', b), 4)
  t.equal(addressBytes('::ffff:102:304', b), 4, 'the hex spelling of a mapped address too')
  t.same([...b.subarray(0, 4)], [1, 2, 3, 4])
  t.equal(addressBytes('::1', b), 6)
  t.equal(b[15], 1)
  t.equal(addressBytes('fe80::1%eth0', b), 6, 'a zone is ignored')
  for (const bad of ['1.2.3', '1.2.3.256', '1::2::3', '12345::', 'x', '', '1:2:3:4:5:6:7']) t.equal(addressBytes(bad, b), 0, `"${bad}" is not an address`)
  t.equal(sourceKey('10.0.0.1', b), '10.0.0.1')
  t.equal(sourceKey('::ffff:10.0.0.1', b), '10.0.0.1')
  t.equal(sourceKey('2001:db8:1:2::1', b), sourceKey('2001:0db8:0001:0002:ffff::9', b), 'one /64, one key')
  t.not(sourceKey('2001:db8:1:2::1', b), sourceKey('2001:db8:1:3::1', b))
})
