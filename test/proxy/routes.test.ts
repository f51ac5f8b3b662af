import t from 'tap'
import { Router, isSniPattern, sniMatches } from '../../src/proxy/routes.js'
import { CidrSet, parseCidr, plainAddress } from '../../src/config/cidr.js'

t.test('sni patterns and matching', async (t) => {
  for (const p of ['a.example.com', '*.example.com', 'localhost', 'x_y.test']) t.ok(isSniPattern(p), p)
  for (const p of ['', '*', '*.', 'a..b', 'a.*.com', 'ex ample.com', '-a.com', '**.a.com', 'A.com']) t.notOk(isSniPattern(p), p)
  t.ok(sniMatches('a.example.com', 'a.example.com'))
  t.notOk(sniMatches('a.example.com', 'b.example.com'))
  t.ok(sniMatches('*.example.com', 'a.example.com'))
  t.ok(sniMatches('*.example.com', 'a.b.example.com'))
  t.notOk(sniMatches('*.example.com', 'example.com'))
  t.notOk(sniMatches('*.example.com', 'badexample.com'))
})

t.test('CIDRs: v4, v6, mapped addresses, bad input', async (t) => {
  const set = new CidrSet(['10.0.0.0/8', '2001:db8::/32', '192.0.2.7'])
  t.ok(set.has('10.1.2.3'))
  t.ok(set.has('::ffff:10.1.2.3'), 'IPv4-mapped IPv6 matches the IPv4 block')
  t.ok(set.has('2001:db8:1::5'))
  t.ok(set.has('192.0.2.7'))
  t.notOk(set.has('192.0.2.8'))
  t.notOk(set.has('11.0.0.1'))
  t.notOk(set.has('not an address'))
  t.equal(plainAddress('::ffff:127.0.0.1'), '127.0.0.1')
  t.equal(plainAddress('::1'), '::1')
  for (const bad of ['10.0.0.0/33', '::/129', '10.0.0.0/x', 'example.com/8', '10.0.0/8', '']) t.type(parseCidr(bad), 'string', bad)
  t.same(parseCidr('10.0.0.0/8'), { text: '10.0.0.0/8', family: 'ipv4', address: '10.0.0.0', prefix: 8 })
})

t.test('routes: first match wins, every condition must hold, default otherwise', async (t) => {
  const r = new Router([
    { sni: 'a.example.com', pool: 'a' },
    { sni: '*.example.com', source: '10.0.0.0/8', pool: 'internal' },
    { sni: '*.example.com', pool: 'wild' },
    { source: '192.0.2.0/24', pool: 'geo' },
  ])
  t.equal(r.pick('a.example.com', '10.1.1.1'), 'a')
  t.equal(r.pick('b.example.com', '10.1.1.1'), 'internal')
  t.equal(r.pick('b.example.com', '172.16.0.1'), 'wild')
  t.equal(r.pick(undefined, '192.0.2.9'), 'geo', 'sni routes never match without a name')
  t.equal(r.pick('other.test', '172.16.0.1'), undefined)
  t.ok(r.usesSni)
})
