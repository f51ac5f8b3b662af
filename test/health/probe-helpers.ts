import { createSocket } from 'node:dgram'
import type { AddressInfo, Socket } from 'node:net'
import type { Test } from 'tap'
import { backend, eventually } from '../helpers/net.js'
import { findProbe } from '../../src/health/registry.js'
import type { ProbeResult } from '../../src/health/probe.js'
import { parseProxyHeader, type ProxyHeader } from '../../src/proxy/proxy-protocol.js'

/** Runs one probe of `type` with `options` against 127.0.0.1:port (sending a PROXY header when `proxy` is set). */
export function probe(type: string, options: unknown, port: number, timeoutMs = 2000, proxy?: 'v1' | 'v2'): Promise<ProbeResult> {
  const f = findProbe(type)
  if (f === undefined) throw new Error(`no probe ${type}`)
  return f.create(options).check({ host: '127.0.0.1', port, timeoutMs, ...(proxy !== undefined ? { proxy } : {}) })
}

/**
 * A server that judges how each probe closes. It runs `script` on each connection; once the
 * probe's FIN arrives it sends 8 MB more, then its own FIN (or, with `onFin`, does that
 * instead; or nothing, when the script closed first). A probe that closes politely (FIN, then reads until the server's FIN) takes them
 * all; one that had closed its socket outright makes its kernel answer with a reset, which
 * the server sees as an error. `resets()` counts the connections that saw one, `fins()`
 * those that got the probe's FIN.
 */
export async function closeJudge(t: Test, script: (s: Socket) => void, onFin?: (s: Socket) => void): Promise<{ port: number; resets: () => number; fins: () => number; closed: () => number; allClosed: () => Promise<void> }> {
  let resets = 0
  let fins = 0
  let closed = 0
  const b = await backend(t, (s) => {
    let reset = false
    s.on('error', () => {
      if (!reset) resets++
      reset = true
    })
    s.on('end', () => {
      fins++
      if (s.writableEnded) return // the server closed first (after QUIT, say): nothing to send
      if (onFin !== undefined) {
        onFin(s)
        return
      }
      s.write(Buffer.alloc(8 << 20, 0x2e))
      s.end()
    })
    s.on('close', () => closed++)
    script(s)
    if (s.listenerCount('data') === 0) s.resume()
  }, '127.0.0.1', { allowHalfOpen: true })
  return {
    port: b.port,
    resets: () => resets,
    fins: () => fins,
    closed: () => closed,
    allClosed: () => eventually(() => b.sockets.size === 0, 'every probe connection to close', 5000),
  }
}

/**
 * Reads a PROXY header from the start of `s`, records it, then hands the connection (with any
 * bytes after the header pushed back) to `then`. A connection without a valid header is ended.
 */
export function afterProxyHeader(s: Socket, seen: ProxyHeader[], then: (s: Socket) => void): void {
  let buf = Buffer.alloc(0)
  const onData = (c: Buffer): void => {
    buf = Buffer.concat([buf, c])
    const r = parseProxyHeader(buf)
    if (r.kind === 'need-more') return
    s.off('data', onData)
    if (r.kind !== 'ok') {
      s.end('no valid PROXY header\r\n')
      return
    }
    seen.push(r.header)
    then(s)
    const rest = buf.subarray(r.length)
    if (rest.length > 0) s.emit('data', rest)
  }
  s.on('data', onData)
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
