import { createSocket, type Socket } from 'node:dgram'
import type { AddressInfo } from 'node:net'
import type { Test } from 'tap'

export interface SrvRecord {
  priority: number
  weight: number
  port: number
  target: string
}

/**
 * A tiny authoritative DNS server on 127.0.0.1 for tests: A and SRV records from tables the
 * test rewrites, SRV answers with the targets' A records in the additional section (unless
 * `glue` is off), `servfail` to answer SERVFAIL, and `stop()` to stop answering at all.
 */
export class TinyDns {
  readonly a = new Map<string, string[]>()
  readonly srv = new Map<string, SrvRecord[]>()
  ttl = 1
  glue = true
  servfail = false
  queries = 0
  private silent = false

  private constructor(
    private readonly sock: Socket,
    readonly port: number,
  ) {}

  static async start(t: Test): Promise<TinyDns> {
    const sock = createSocket('udp4')
    await new Promise<void>((resolve) => sock.bind(0, '127.0.0.1', resolve))
    const d = new TinyDns(sock, (sock.address() as AddressInfo).port)
    sock.on('message', (m, r) => d.answer(m, r.port, r.address))
    t.teardown(() => sock.close())
    return d
  }

  /** Stops answering (queries time out), or answers again. */
  mute(on: boolean): void {
    this.silent = on
  }

  private answer(q: Buffer, port: number, host: string): void {
    this.queries++
    if (this.silent || q.length < 17) return
    let off = 12
    const labels: string[] = []
    while (q[off] !== 0) {
      const n = q[off] as number
      labels.push(q.toString('latin1', off + 1, off + 1 + n))
      off += 1 + n
    }
    const name = labels.join('.').toLowerCase()
    const type = q.readUInt16BE(off + 1)
    const question = q.subarray(12, off + 5)
    const answers: Buffer[] = []
    const extra: Buffer[] = []
    if (type === 1) for (const ip of this.a.get(name) ?? []) answers.push(rr(name, 1, this.ttl, Buffer.from(ip.split('.').map(Number))))
    if (type === 33) {
      for (const s of this.srv.get(name) ?? []) {
        const rd = Buffer.concat([u16(s.priority), u16(s.weight), u16(s.port), encodeName(s.target)])
        answers.push(rr(name, 33, this.ttl, rd))
        if (this.glue) for (const ip of this.a.get(s.target) ?? []) extra.push(rr(s.target, 1, this.ttl, Buffer.from(ip.split('.').map(Number))))
      }
    }
    const known = this.a.has(name) || this.srv.has(name)
    const rcode = this.servfail ? 2 : known ? 0 : 3
    const h = Buffer.alloc(12)
    h.writeUInt16BE(q.readUInt16BE(0), 0)
    h.writeUInt16BE(0x8400 | 0x0100 | rcode, 2)
    h.writeUInt16BE(1, 4)
    h.writeUInt16BE(this.servfail ? 0 : answers.length, 6)
    h.writeUInt16BE(this.servfail ? 0 : extra.length, 10)
    const body = this.servfail ? [] : [...answers, ...extra]
    this.sock.send(Buffer.concat([h, question, ...body]), port, host)
  }
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2)
  b.writeUInt16BE(n)
  return b
}

function encodeName(name: string): Buffer {
  const parts = name.split('.').filter((l) => l !== '')
  return Buffer.concat([...parts.map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l, 'latin1')])), Buffer.from([0])])
}

function rr(name: string, type: number, ttl: number, rd: Buffer): Buffer {
  const fixed = Buffer.alloc(10)
  fixed.writeUInt16BE(type, 0)
  fixed.writeUInt16BE(1, 2)
  fixed.writeUInt32BE(ttl, 4)
  fixed.writeUInt16BE(rd.length, 8)
  return Buffer.concat([encodeName(name), fixed, rd])
}
