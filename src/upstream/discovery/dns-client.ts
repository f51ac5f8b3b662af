import { createSocket } from 'node:dgram'
import { connect } from 'node:net'
import { isIP } from 'node:net'
import { buildQuery } from '../../health/probes/dns.js'

/**
 * A small DNS stub client for discovery: one question to one server over UDP (TCP when the
 * answer comes back truncated), returning every record of the answer and additional
 * sections with its TTL. Node's own resolver gives no TTL for SRV and hides the additional
 * section, which carries the addresses of SRV targets (Consul and CoreDNS send them).
 */

export const TYPE = { A: 1, CNAME: 5, AAAA: 28, SRV: 33 } as const
export const RCODE_NAMES = ['NOERROR', 'FORMERR', 'SERVFAIL', 'NXDOMAIN', 'NOTIMP', 'REFUSED']

export type RecordData =
  | { type: 'A' | 'AAAA'; address: string }
  | { type: 'SRV'; priority: number; weight: number; port: number; target: string }
  | { type: 'CNAME'; target: string }
  | { type: 'other'; code: number }

export interface DnsRecord {
  /** Lower case, without the final dot. */
  name: string
  ttl: number
  data: RecordData
}

export interface DnsAnswer {
  rcode: number
  answers: DnsRecord[]
  additionals: DnsRecord[]
}

/** Why a query got no usable answer (timeout, refused, malformed). */
export class DnsQueryError extends Error {}

/** Asks `server` one question; rejects with DnsQueryError on a timeout or a malformed answer. */
export async function dnsQuery(server: { host: string; port: number }, name: string, type: number, timeoutMs: number): Promise<DnsAnswer> {
  const { id, msg } = buildQuery(name, type)
  const udp = await udpExchange(server, msg, id, timeoutMs)
  const flags = udp.readUInt16BE(2)
  // TC: the answer did not fit in a datagram; ask again over TCP for all of it.
  const whole = (flags & 0x0200) !== 0 ? await tcpExchange(server, msg, id, timeoutMs) : udp
  return parseAnswer(whole)
}

function udpExchange(server: { host: string; port: number }, msg: Buffer, id: number, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const sock = createSocket(isIP(server.host) === 6 ? 'udp6' : 'udp4')
    const timer = setTimeout(() => done(new DnsQueryError(`no answer from ${server.host}:${server.port} within ${timeoutMs}ms`)), timeoutMs)
    const done = (err: Error | undefined, m?: Buffer): void => {
      clearTimeout(timer)
      sock.close()
      if (err !== undefined) reject(err)
      else resolve(m as Buffer)
    }
    sock.on('error', (err) => done(new DnsQueryError(`${server.host}:${server.port}: ${err.message}`)))
    sock.on('message', (m, rinfo) => {
      // Only the server's answer to this very question counts (no spoofed or stale datagram).
      if (rinfo.port !== server.port || m.length < 12 || m.readUInt16BE(0) !== id || (m.readUInt16BE(2) & 0x8000) === 0) return
      done(undefined, m)
    })
    sock.send(msg, server.port, server.host, (err) => {
      if (err) done(new DnsQueryError(`${server.host}:${server.port}: ${err.message}`))
    })
  })
}

function tcpExchange(server: { host: string; port: number }, msg: Buffer, id: number, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const sock = connect({ host: server.host, port: server.port })
    let buf = Buffer.alloc(0)
    const timer = setTimeout(() => done(new DnsQueryError(`no answer over TCP from ${server.host}:${server.port} within ${timeoutMs}ms`)), timeoutMs)
    const done = (err: Error | undefined, m?: Buffer): void => {
      clearTimeout(timer)
      sock.destroy()
      if (err !== undefined) reject(err)
      else resolve(m as Buffer)
    }
    sock.on('error', (err) => done(new DnsQueryError(`${server.host}:${server.port} (TCP): ${err.message}`)))
    sock.on('connect', () => {
      const len = Buffer.alloc(2)
      len.writeUInt16BE(msg.length)
      sock.write(Buffer.concat([len, msg]))
    })
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d])
      if (buf.length < 2) return
      const n = buf.readUInt16BE(0)
      if (buf.length < 2 + n) return
      const m = buf.subarray(2, 2 + n)
      if (m.length < 12 || m.readUInt16BE(0) !== id) done(new DnsQueryError(`${server.host}:${server.port} (TCP): an answer with the wrong id`))
      else done(undefined, m)
    })
    sock.on('end', () => done(new DnsQueryError(`${server.host}:${server.port} (TCP) closed before answering`)))
  })
}

/** Parses a whole DNS answer; throws DnsQueryError when it is malformed. */
export function parseAnswer(m: Buffer): DnsAnswer {
  if (m.length < 12) throw new DnsQueryError(`a ${m.length}-byte answer (shorter than a DNS header)`)
  const rcode = m.readUInt16BE(2) & 0x0f
  const qd = m.readUInt16BE(4)
  const an = m.readUInt16BE(6)
  const ns = m.readUInt16BE(8)
  const ar = m.readUInt16BE(10)
  let off = 12
  for (let i = 0; i < qd; i++) {
    off = readName(m, off).next + 4
    if (off > m.length) throw new DnsQueryError('a truncated question section')
  }
  const read = (count: number): DnsRecord[] => {
    const out: DnsRecord[] = []
    for (let i = 0; i < count; i++) {
      const { name, next } = readName(m, off)
      if (next + 10 > m.length) throw new DnsQueryError('a truncated record')
      const type = m.readUInt16BE(next)
      const ttl = m.readUInt32BE(next + 4)
      const rdlen = m.readUInt16BE(next + 8)
      const rd = next + 10
      if (rd + rdlen > m.length) throw new DnsQueryError('a record longer than the answer')
      out.push({ name, ttl, data: readData(m, type, rd, rdlen) })
      off = rd + rdlen
    }
    return out
  }
  const answers = read(an)
  read(ns)
  const additionals = read(ar)
  return { rcode, answers, additionals }
}

function readData(m: Buffer, type: number, at: number, len: number): RecordData {
  if (type === TYPE.A && len === 4) return { type: 'A', address: `${m[at]}.${m[at + 1]}.${m[at + 2]}.${m[at + 3]}` }
  if (type === TYPE.AAAA && len === 16) {
    const parts: string[] = []
    for (let i = 0; i < 16; i += 2) parts.push(m.readUInt16BE(at + i).toString(16))
    return { type: 'AAAA', address: compressV6(parts) }
  }
  if (type === TYPE.SRV && len >= 7) {
    return { type: 'SRV', priority: m.readUInt16BE(at), weight: m.readUInt16BE(at + 2), port: m.readUInt16BE(at + 4), target: readName(m, at + 6).name }
  }
  if (type === TYPE.CNAME) return { type: 'CNAME', target: readName(m, at).name }
  return { type: 'other', code: type }
}

/** A possibly compressed name at `at`: the name and where the bytes after it start. */
function readName(m: Buffer, at: number): { name: string; next: number } {
  const labels: string[] = []
  let off = at
  let next = -1
  for (let hops = 0; hops < 64; hops++) {
    if (off >= m.length) throw new DnsQueryError('a name running past the end of the answer')
    const len = m[off] as number
    if (len === 0) {
      if (next < 0) next = off + 1
      return { name: labels.join('.').toLowerCase(), next }
    }
    if ((len & 0xc0) === 0xc0) {
      if (off + 1 >= m.length) throw new DnsQueryError('a truncated name pointer')
      if (next < 0) next = off + 2
      off = ((len & 0x3f) << 8) | (m[off + 1] as number)
      continue
    }
    if (off + 1 + len > m.length) throw new DnsQueryError('a label running past the end of the answer')
    labels.push(m.toString('latin1', off + 1, off + 1 + len))
    off += 1 + len
  }
  throw new DnsQueryError('a name with too many compression pointers')
}

function compressV6(parts: string[]): string {
  // The longest run of zero groups becomes "::" (RFC 5952).
  let best = -1
  let bestLen = 0
  for (let i = 0; i < parts.length; ) {
    if (parts[i] !== '0') {
      i++
      continue
    }
    let j = i
    while (j < parts.length && parts[j] === '0') j++
    if (j - i > bestLen && j - i > 1) {
      best = i
      bestLen = j - i
    }
    i = j
  }
  if (best < 0) return parts.join(':')
  return `${parts.slice(0, best).join(':')}::${parts.slice(best + bestLen).join(':')}`
}
