import { createSocket } from 'node:dgram'
import type { AddressInfo, Socket } from 'node:net'
import type { Test } from 'tap'
import { backend, eventually } from '../helpers/net.js'
import { findProbe } from '../../src/health/registry.js'
import type { ProbeResult } from '../../src/health/probe.js'

/** Runs one probe of `type` with `options` against 127.0.0.1:port. */
export function probe(type: string, options: unknown, port: number, timeoutMs = 2000): Promise<ProbeResult> {
  const f = findProbe(type)
  if (f === undefined) throw new Error(`no probe ${type}`)
  return f.create(options).check({ host: '127.0.0.1', port, timeoutMs })
}

/**
 * A TCP server that runs `script` on each connection; resolves its port and a check that every
 * connection a probe made has been closed (the probe never leaves a socket open).
 */
export async function scripted(t: Test, script: (s: Socket) => void): Promise<{ port: number; allClosed: () => Promise<void>; accepted: () => number }> {
  let accepted = 0
  const b = await backend(t, (s) => {
    accepted++
    script(s)
    // A script that never reads would never see the probe's FIN; read (and drop) so it does.
    if (s.listenerCount('data') === 0) s.resume()
  })
  return {
    port: b.port,
    accepted: () => accepted,
    allClosed: () => eventually(() => b.sockets.size === 0, 'the probe to close its connection', 5000),
  }
}

/** Calls `onLine` for every CRLF- or LF-terminated line the client sends. */
export function lines(s: Socket, onLine: (line: string) => void): void {
  let buf = ''
  s.setEncoding('latin1')
  s.on('data', (d: string) => {
    buf += d
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      onLine(buf.slice(0, nl).replace(/\r$/, ''))
      buf = buf.slice(nl + 1)
    }
  })
}

/** A UDP DNS server on 127.0.0.1 that answers each query with `rcode` (or not at all when null). */
export async function udpDns(t: Test, rcode: number | null, tweak: (answer: Buffer) => void = () => {}): Promise<number> {
  const sock = createSocket('udp4')
  sock.on('message', (msg, rinfo) => {
    if (rcode === null) return
    sock.send(dnsAnswer(msg, rcode, tweak), rinfo.port, rinfo.address)
  })
  await new Promise<void>((resolve) => sock.bind(0, '127.0.0.1', resolve))
  t.teardown(() => sock.close())
  return (sock.address() as AddressInfo).port
}

/** The query echoed back as a response with `rcode`. */
export function dnsAnswer(query: Buffer, rcode: number, tweak: (answer: Buffer) => void = () => {}): Buffer {
  const a = Buffer.from(query)
  a.writeUInt16BE(0x8180 | rcode, 2)
  tweak(a)
  return a
}
