import t from 'tap'
import { IDLE_UPSTREAM_MS, MAX_AGE_MS, MAX_AGE_NAMED_MS, UdpUpstreams, type UdpUpstream, type UpstreamUser } from '../../src/proxy/udp-upstream.js'
import { UdpStats } from '../../src/proxy/udp-stats.js'
import { eventually } from '../helpers/net.js'
import { udpBackend } from '../helpers/udp.js'

/** A session stand-in: records what its socket reports. */
function user(): UpstreamUser & { replies: string[]; connects: (string | undefined)[]; errors: string[] } {
  const u = {
    replies: [] as string[],
    connects: [] as (string | undefined)[],
    errors: [] as string[],
    onUpstreamReply: (m: Buffer) => void u.replies.push(m.toString()),
    onUpstreamConnect: (err: Error | undefined) => void u.connects.push(err?.message),
    onUpstreamError: (err: Error) => void u.errors.push(err.message),
  }
  return u
}

async function connected(up: UdpUpstream): Promise<void> {
  await eventually(() => up.connected, 'the upstream socket to connect')
}

t.test('idle sockets are handed out newest first, bounded per backend, and swept after the idle time', async (t) => {
  const be = await udpBackend(t, 'be')
  const late: string[] = []
  const stats = new UdpStats()
  const set = new UdpUpstreams({ lateReply: (b) => void late.push(b) }, stats, 2)
  t.teardown(() => set.closeIdle())
  const ups = [0, 1, 2].map(() => set.take(be.address, '127.0.0.1', be.port, user()))
  for (const up of ups) await connected(up)
  t.equal(stats.upstreamCreated, 3)
  const now = Date.now()
  ups.forEach((up, i) => set.give(up, now + i))
  t.equal(stats.upstreamIdle, 2, 'two kept (reuse_sockets: 2)')
  t.ok(ups[2]!.closed, 'the third, beyond the bound, closed')
  const u = user()
  const again = set.take(be.address, '127.0.0.1', be.port, u)
  t.equal(again, ups[1], 'the most recently idled of those kept comes back')
  t.equal(stats.upstreamReused, 1)
  again.socket.send(Buffer.from('x'))
  await eventually(() => u.replies.length === 1, 'the reply to reach the new user')
  t.same(u.replies, ['be:x'])
  const other = set.take(`127.0.0.1:${be.port + 1}`, '127.0.0.1', be.port + 1, user())
  t.not(other, ups[0], 'another backend port does not get it')
  other.close()
  set.give(again, now + 5_000)
  set.sweep(now + IDLE_UPSTREAM_MS - 1)
  t.equal(stats.upstreamIdle, 2, 'nothing is swept before its idle time')
  set.sweep(now + IDLE_UPSTREAM_MS + 1)
  t.equal(stats.upstreamIdle, 1, 'the one idle since `now` is closed')
  t.ok(ups[0]!.closed)
  t.notOk(again.closed, 'the one idled later stays')
  set.closeIdle()
  t.equal(stats.upstreamIdle, 0)
  t.ok(again.closed)
  t.same(late, [])
})

t.test('a socket not yet connected, or with reuse off, is closed instead of kept', async (t) => {
  const be = await udpBackend(t, 'be')
  const stats = new UdpStats()
  const set = new UdpUpstreams({ lateReply: () => undefined }, stats, 0)
  const up = set.take(be.address, '127.0.0.1', be.port, user())
  await connected(up)
  set.give(up, Date.now())
  t.ok(up.closed, 'reuse_sockets: 0 keeps nothing')
  set.max = 4
  const fresh = set.take(be.address, '127.0.0.1', be.port, user())
  set.give(fresh, Date.now())
  t.ok(fresh.closed, 'given back before its connect finished: closed')
  t.equal(stats.upstreamIdle, 0)
})

t.test('a datagram on an idle socket is a late reply: reported, counted, the socket closed', async (t) => {
  const be = await udpBackend(t, 'be', { mode: 'silent' })
  const late: [string, number][] = []
  const stats = new UdpStats()
  const set = new UdpUpstreams({ lateReply: (b, n) => void late.push([b, n]) }, stats, 4)
  t.teardown(() => set.closeIdle())
  const u = user()
  const up = set.take(be.address, '127.0.0.1', be.port, u)
  await connected(up)
  up.socket.send(Buffer.from('q'))
  await eventually(() => be.sources.length === 1, 'the query to reach the backend')
  set.give(up, Date.now())
  t.equal(stats.upstreamIdle, 1)
  const [host, port] = be.sources[0]!.split(':')
  be.socket.send(Buffer.from('late!'), Number(port), host)
  await eventually(() => late.length === 1, 'the late reply to be reported')
  t.same(late, [[`127.0.0.1:${be.port}`, 5]])
  t.equal(stats.lateReplies, 1)
  t.equal(stats.upstreamIdle, 0)
  t.ok(up.closed)
  t.same(u.replies, [], 'the session that left the socket heard nothing of it')
})

t.test('a socket past its age limit is closed instead of kept: 60 s to an address, 5 s to a host name', async (t) => {
  const be = await udpBackend(t, 'be')
  const stats = new UdpStats()
  const set = new UdpUpstreams({ lateReply: () => undefined }, stats, 4)
  t.teardown(() => set.closeIdle())
  const ip = set.take(be.address, '127.0.0.1', be.port, user())
  const named = set.take(`localhost:${be.port}`, 'localhost', be.port, user())
  await connected(ip)
  await connected(named)
  t.equal(ip.retireAt - Date.now() > MAX_AGE_NAMED_MS, true, 'an address gets the longer limit')
  t.ok(named.retireAt - Date.now() <= MAX_AGE_NAMED_MS, 'a host name the shorter one')
  set.give(named, named.retireAt)
  t.ok(named.closed, 'given back at its limit: closed')
  set.give(ip, ip.retireAt - 1)
  t.notOk(ip.closed, 'given back before it: kept')
  t.equal(stats.upstreamIdle, 1)
  t.equal(MAX_AGE_MS, 60_000)
})
