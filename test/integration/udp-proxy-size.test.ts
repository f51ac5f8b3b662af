import t from 'tap'
import { createSocket } from 'node:dgram'
import { startDaemon } from '../helpers/daemon.js'
import { eventually } from '../helpers/net.js'
import { udpBackend } from '../helpers/udp.js'
import { parseProxyHeader } from '../../src/proxy/proxy-protocol.js'

t.test('PROXY v2 on UDP: a datagram the header would push past 65,507 bytes is dropped, counted and logged, not relayed', async (t) => {
  const be = await udpBackend(t, 'be', { mode: 'echo' })
  const run = await startDaemon(t, `
listeners: [{ name: dns, protocol: udp, listen: 127.0.0.1:0, pool: p, udp: { responses: 0 } }]
pools:
  p: { backends: ["${be.address}"], proxy_protocol: v2 }
`)
  const client = createSocket('udp4')
  await new Promise<void>((r) => client.bind(0, '127.0.0.1', r))
  t.teardown(() => client.close())
  const port = run.port('dns')
  const fits = Buffer.alloc(65_507 - 28, 0x61)
  const over = Buffer.alloc(fits.length + 1, 0x62)
  // The largest that fits arrives whole, after its 28-byte header.
  client.send(fits, port, '127.0.0.1')
  await eventually(() => be.received.length === 1, 'the datagram that fits to reach the backend')
  const got = be.received[0]!
  const parsed = parseProxyHeader(got)
  t.equal(parsed.kind, 'ok', 'it carries a PROXY v2 header')
  if (parsed.kind === 'ok') t.equal(got.length - parsed.length, fits.length, `all ${fits.length} bytes of data after the header`)
  // One byte more cannot be sent with the header: dropped with its own reason.
  client.send(over, port, '127.0.0.1')
  client.send(over, port, '127.0.0.1')
  const warn = await run.logs.waitFor((l) => l.code === 'SLUICE_ERR_UDP_TOO_LARGE')
  t.equal(warn.bytes, over.length, 'the warning gives the size')
  t.equal(warn.max_bytes, fits.length, 'and how much fits')
  // A datagram after them still flows: the session was not ended by the drops.
  client.send(Buffer.from('small'), port, '127.0.0.1')
  await eventually(() => be.received.length === 2, 'the next small datagram to reach the backend')
  t.equal(be.received.length, 2, 'the oversized datagrams never reached the backend')
  await eventually(async () => /reason="datagram_too_large"\} 2/.test(await run.metrics()), 'both drops to be counted')
  const m = await run.metrics()
  t.match(m, /sluice_udp_datagrams_total\{listener="dns",direction="in"\} 2\b/, 'only the relayed datagrams count as received and relayed')
  t.equal(run.logs.lines.filter((l) => l.code === 'SLUICE_ERR_UDP_TOO_LARGE').length, 1, 'logged once, not once per datagram')
})
