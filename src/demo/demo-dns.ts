import { createSocket, type Socket } from 'node:dgram'
import { isIP } from 'node:net'
import type { DemoBackendConfig } from '../config/types.js'
import { bindError } from '../listener/bind-error.js'

const TYPE_A = 1
const TYPE_TXT = 16
const TYPE_ANY = 255

/**
 * A tiny DNS server for trying sluice's UDP listeners: every name resolves to 127.0.0.1 (A)
 * and to a TXT record naming this demo backend, so `dig @127.0.0.1 -p 4053 demo TXT +short`
 * shows which backend answered. Malformed queries are dropped. Not for production.
 */
export class DemoDns {
  private readonly socket: Socket

  constructor(readonly config: DemoBackendConfig) {
    this.socket = createSocket({ type: isIP(config.host) === 6 ? 'udp6' : 'udp4' })
    this.socket.on('message', (msg, rinfo) => {
      const reply = answer(msg, config.name)
      if (reply !== undefined) this.socket.send(reply, rinfo.port, rinfo.address)
    })
    this.socket.on('error', () => {})
  }

  listen(): Promise<number> {
    const { host, port, name, listen } = this.config
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(bindError('SLUICE_ERR_DEMO_BACKEND', `demo backend "${name}"`, listen, err))
      this.socket.once('error', onError)
      this.socket.bind({ address: host, port }, () => {
        this.socket.off('error', onError)
        resolve(this.socket.address().port)
      })
    })
  }

  close(): void {
    this.socket.close()
  }
}

/** The reply to one DNS query, or undefined when it is not a well-formed query. */
export function answer(query: Buffer, name: string): Buffer | undefined {
  if (query.length < 12 || (query[2]! & 0x80) !== 0 || query.readUInt16BE(4) !== 1) return undefined
  let pos = 12
  while (pos < query.length && query[pos] !== 0) {
    const len = query[pos]!
    if (len > 63) return undefined
    pos += len + 1
  }
  if (pos + 5 > query.length) return undefined
  const qtype = query.readUInt16BE(pos + 1)
  const question = query.subarray(12, pos + 5)
  let rdata: Buffer | undefined
  let rtype = qtype
  if (qtype === TYPE_A) rdata = Buffer.from([127, 0, 0, 1])
  else if (qtype === TYPE_TXT || qtype === TYPE_ANY) {
    const text = Buffer.from(name.slice(0, 255))
    rdata = Buffer.concat([Buffer.from([text.length]), text])
    rtype = TYPE_TXT
  }
  const header = Buffer.alloc(12)
  query.copy(header, 0, 0, 2)
  header[2] = 0x84 | (query[2]! & 0x79) // QR, AA, keep opcode and RD
  header[3] = 0
  header.writeUInt16BE(1, 4)
  header.writeUInt16BE(rdata === undefined ? 0 : 1, 6)
  if (rdata === undefined) return Buffer.concat([header, question])
  const rr = Buffer.alloc(12)
  rr.writeUInt16BE(0xc00c, 0) // pointer to the question's name
  rr.writeUInt16BE(rtype, 2)
  rr.writeUInt16BE(1, 4) // IN
  rr.writeUInt32BE(0, 6) // TTL 0: every query asks again, so the balancing shows
  rr.writeUInt16BE(rdata.length, 10)
  return Buffer.concat([header, question, rr, rdata])
}
