import { createSocket } from 'node:dgram'
import { isIP } from 'node:net'
import { randomInt } from 'node:crypto'
import { errnoCode } from '../../errors.js'
import { formatDuration } from '../../config/duration.js'
import { encodeV2 } from '../../proxy/proxy-header-out.js'
import { ProbeFailure, type ProbeFactory, type ProbeResult, type ProbeTarget } from '../probe.js'
import { converse } from './conversation.js'

export const QUERY_TYPES: Readonly<Record<string, number>> = { A: 1, NS: 2, CNAME: 5, SOA: 6, PTR: 12, MX: 15, TXT: 16, AAAA: 28, SRV: 33, ANY: 255 }
export const RCODES = ['NOERROR', 'FORMERR', 'SERVFAIL', 'NXDOMAIN', 'NOTIMP', 'REFUSED'] as const

export interface DnsProbeOptions {
  query: string
  queryType: number
  /** Accepted response codes (numbers 0-15). */
  expectRcodes: readonly number[]
  transport: 'udp' | 'tcp'
}

/**
 * `dns`: one query (`query`, `query_type`, default A, recursion desired) over UDP (default)
 * or TCP (`transport: tcp`, length-prefixed); the answer's id must match and its rcode be in
 * `expect_rcode` (a name such as NOERROR or NXDOMAIN, or a list; default NOERROR).
 */
export const dnsProbe: ProbeFactory<DnsProbeOptions> = {
  type: 'dns',
  optionKeys: ['query', 'query_type', 'expect_rcode', 'transport'],
  parseOptions(m, reader, context) {
    if (!m.require('query', `${context} (type dns)`)) return undefined
    const query = reader.string(m.get('query'), `${context} query`, { pattern: /^(\.|([A-Za-z0-9_*-]{1,63}\.)*[A-Za-z0-9_*-]{1,63}\.?)$/, patternHint: 'must be a domain name such as example.com (labels of 1-63 letters, digits, "-" or "_")' })
    const typeName = m.has('query_type') ? reader.oneOf(m.get('query_type'), `${context} query_type`, Object.keys(QUERY_TYPES)) : 'A'
    const transport = m.has('transport') ? reader.oneOf(m.get('transport'), `${context} transport`, ['udp', 'tcp'] as const) : 'udp'
    let expectRcodes: number[] | undefined = [0]
    if (m.has('expect_rcode')) {
      const at = m.get('expect_rcode')
      const items = at.node !== undefined && 'items' in at.node ? reader.seq(at, `${context} expect_rcode`) : [at]
      expectRcodes = []
      for (const item of items ?? []) {
        const name = reader.oneOf(item, `${context} expect_rcode`, RCODES)
        if (name === undefined) expectRcodes = undefined
        else expectRcodes?.push(RCODES.indexOf(name))
      }
      if (items === undefined || (expectRcodes !== undefined && expectRcodes.length === 0)) {
        if (items !== undefined) reader.report(at, `${context} expect_rcode is an empty list; give at least one rcode`)
        expectRcodes = undefined
      }
    }
    if (query === undefined || typeName === undefined || transport === undefined || expectRcodes === undefined) return undefined
    if (query.length > 253) {
      reader.report(m.get('query'), `${context} query is longer than 253 characters`)
      return undefined
    }
    return { query, queryType: QUERY_TYPES[typeName] ?? 1, expectRcodes, transport }
  },
  create: (o) => ({
    check: (target) => (o.transport === 'udp' ? udpQuery(target, o) : tcpQuery(target, o)),
  }),
  datagram: (o) => o.transport === 'udp',
}

/** A DNS query message with a random id. */
export function buildQuery(name: string, type: number): { id: number; msg: Buffer } {
  const id = randomInt(0, 0x10000)
  const labels = name.split('.').filter((l) => l !== '')
  const q = Buffer.alloc(12 + labels.reduce((n, l) => n + 1 + l.length, 0) + 1 + 4)
  q.writeUInt16BE(id, 0)
  q.writeUInt16BE(0x0100, 2) // standard query, recursion desired
  q.writeUInt16BE(1, 4) // one question
  let off = 12
  for (const l of labels) {
    q[off++] = l.length
    off += q.write(l, off, 'ascii')
  }
  q[off++] = 0
  q.writeUInt16BE(type, off)
  q.writeUInt16BE(1, off + 2) // class IN
  return { id, msg: q }
}

/** The rcode of an answer to query `id`, or a failure detail. */
export function answerRcode(msg: Buffer, id: number): number | string {
  if (msg.length < 12) return `a ${msg.length}-byte answer (shorter than a DNS header)`
  if (msg.readUInt16BE(0) !== id) return 'an answer with the wrong id'
  const flags = msg.readUInt16BE(2)
  if ((flags & 0x8000) === 0) return 'a query instead of an answer'
  return flags & 0x0f
}

function judge(rcode: number | string, o: DnsProbeOptions): ProbeResult {
  if (typeof rcode === 'string') return { ok: false, detail: `got ${rcode}` }
  const name = RCODES[rcode] ?? `rcode ${rcode}`
  if (o.expectRcodes.includes(rcode)) return { ok: true, detail: name }
  return { ok: false, detail: `answered ${name}, expected ${o.expectRcodes.map((r) => RCODES[r] ?? String(r)).join(' or ')}` }
}

function tcpQuery(target: ProbeTarget, o: DnsProbeOptions): Promise<ProbeResult> {
  return converse(target, async (c) => {
    const { id, msg } = buildQuery(o.query, o.queryType)
    const len = Buffer.alloc(2)
    len.writeUInt16BE(msg.length)
    c.send(Buffer.concat([len, msg]))
    const answer = await c.read('the DNS answer', (buf) => {
      if (buf.length < 2) return undefined
      const n = buf.readUInt16BE(0)
      return buf.length < 2 + n ? undefined : { value: buf.subarray(2, 2 + n), used: 2 + n }
    })
    const result = judge(answerRcode(answer, id), o)
    if (!result.ok) throw new ProbeFailure(result.detail)
    return result.detail
  })
}

/**
 * One UDP query (sent again once at half the timeout, for a lost datagram); the socket is
 * always closed. With `target.proxy` v2 each datagram starts with a LOCAL header (v1 has no
 * datagram form; the configuration refuses it).
 */
function udpQuery(target: ProbeTarget, o: DnsProbeOptions): Promise<ProbeResult> {
  return new Promise((resolve) => {
    const sock = createSocket(isIP(target.host) === 6 ? 'udp6' : 'udp4')
    const query = buildQuery(o.query, o.queryType)
    const id = query.id
    // A pool that sends PROXY v2 on each datagram gets it on the probe's too (LOCAL: no client).
    const msg = target.proxy === 'v2' ? Buffer.concat([encodeV2(undefined, 'dgram'), query.msg]) : query.msg
    let done = false
    const finish = (r: ProbeResult): void => {
      if (done) return
      done = true
      clearTimeout(timer)
      clearTimeout(resend)
      sock.close()
      resolve(r)
    }
    const timer = setTimeout(() => finish({ ok: false, detail: `timeout after ${formatDuration(target.timeoutMs)} waiting for the DNS answer` }), target.timeoutMs)
    let connected = false
    const resend = setTimeout(() => connected && !done && sock.send(msg), Math.max(1, Math.floor(target.timeoutMs / 2)))
    sock.on('error', (err) => finish({ ok: false, detail: `${errnoCode(err) ?? err.message} (udp)` }))
    sock.on('message', (answer) => {
      const rcode = answerRcode(answer, id)
      if (rcode === 'an answer with the wrong id') return // a late answer to an earlier probe
      finish(judge(rcode, o))
    })
    sock.connect(target.port, target.host, () => {
      connected = true
      if (!done) sock.send(msg)
    })
  })
}
