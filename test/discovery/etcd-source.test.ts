import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import t, { type Test } from 'tap'
import { EtcdSource, parseValue, prefixEnd } from '../../src/upstream/discovery/etcd-source.js'
import type { BackendConfig } from '../../src/config/types.js'
import { eventually } from '../helpers/net.js'

const b64 = (s: string): string => Buffer.from(s).toString('base64')

/**
 * A stand-in for etcd's JSON gateway, enough to drive the source through what a real etcd
 * does rarely and on its own time: a watch cut mid-stream, and a watch refused because its
 * revision was compacted. (The e2e test runs against a real etcd.)
 */
async function fakeEtcd(t: Test): Promise<{ url: string; kv: Map<string, string>; rev: { n: number }; watches: { start: number; res: ServerResponse }[]; ranges: number[]; compactBelow: { n: number } }> {
  const kv = new Map<string, string>()
  const rev = { n: 10 }
  const compactBelow = { n: 0 }
  const watches: { start: number; res: ServerResponse }[] = []
  const ranges: number[] = []
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    let body = ''
    req.on('data', (d: Buffer) => (body += d.toString()))
    req.on('end', () => {
      const j = JSON.parse(body) as { create_request?: { start_revision: string } }
      if (req.url === '/v3/kv/range') {
        ranges.push(rev.n)
        res.end(JSON.stringify({ header: { revision: String(rev.n) }, kvs: [...kv].map(([k, v]) => ({ key: b64(k), value: b64(v), mod_revision: String(rev.n) })) }))
        return
      }
      const start = Number(j.create_request?.start_revision ?? 0)
      res.writeHead(200, { 'content-type': 'application/json' })
      if (start < compactBelow.n) {
        res.end(`${JSON.stringify({ result: { header: { revision: String(rev.n) }, compact_revision: String(compactBelow.n), canceled: true } })}\n`)
        return
      }
      res.write(`${JSON.stringify({ result: { header: { revision: String(rev.n) }, created: true } })}\n`)
      watches.push({ start, res })
    })
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  t.teardown(() => {
    server.closeAllConnections()
    server.close()
  })
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, kv, rev, watches, ranges, compactBelow }
}

function event(type: 'PUT' | 'DELETE', key: string, value: string, rev: number): string {
  return `${JSON.stringify({ result: { header: { revision: String(rev) }, events: [{ ...(type === 'DELETE' ? { type } : {}), kv: { key: b64(key), value: b64(value), mod_revision: String(rev) } }] } })}\n`
}

t.test('etcd source: read, watch from the next revision, resume after a cut, re-read after compaction', async (t) => {
  const e = await fakeEtcd(t)
  const P = '/sluice/p/'
  e.kv.set(`${P}10.0.0.1:80`, '{"address": "10.0.0.1:80", "weight": 3}')
  const sets: string[][] = []
  const failures: string[] = []
  const src = new EtcdSource({ endpoints: [e.url], prefix: P }, { set: (b: BackendConfig[]) => sets.push(b.map((x) => `${x.address}/${x.weight}`)), failed: (d) => failures.push(d) })
  t.teardown(() => src.close())
  await src.start()
  t.same(sets.at(-1), ['10.0.0.1:80/3'], 'the first read')
  await eventually(() => e.watches.length === 1, 'a watch')
  t.equal(e.watches[0]!.start, 11, 'watched from the revision after the read')

  e.watches[0]!.res.write(event('PUT', `${P}10.0.0.2:80`, '{"address": "10.0.0.2:80"}', 12))
  await eventually(() => sets.at(-1)?.length === 2, 'a put arrives')
  e.watches[0]!.res.write(event('PUT', `${P}10.0.0.3:80`, '{"address": "nope"}', 13))
  await eventually(() => failures.some((f) => f.includes('10.0.0.3:80') && f.includes('address')), 'a bad value is reported by key')
  t.same(sets.at(-1), ['10.0.0.1:80/3', '10.0.0.2:80/1'], 'and changes nothing')

  // The stream is cut: the source resumes from the revision after the last one it saw.
  e.watches[0]!.res.destroy()
  await eventually(() => e.watches.length === 2, 'a second watch')
  t.equal(e.watches[1]!.start, 14, 'resumed from the last revision seen + 1')
  t.ok(failures.some((f) => f.includes('resuming from revision 14')), 'the break is reported')
  e.watches[1]!.res.write(event('DELETE', `${P}10.0.0.1:80`, '', 15))
  await eventually(() => sets.at(-1)?.join() === '10.0.0.2:80/1', 'a delete arrives')

  // Cut again, while the history it would resume from is compacted: it reads the prefix again.
  e.compactBelow.n = 20
  e.rev.n = 22
  e.kv.clear()
  e.kv.set(`${P}10.0.0.9:80`, '{"address": "10.0.0.9:80", "backup": true}')
  const rangesBefore = e.ranges.length
  e.watches[1]!.res.destroy()
  await eventually(() => e.ranges.length > rangesBefore, 'a full re-read')
  await eventually(() => sets.at(-1)?.join() === '10.0.0.9:80/1', 'the re-read set')
  await eventually(() => e.watches.length === 3, 'a new watch')
  t.equal(e.watches[2]!.start, 23, 'watched from after the re-read')
  t.ok(failures.some((f) => f.includes('compacted') && f.includes('reading the prefix again')))
})

t.test('etcd values: the contract\'s JSON, checked', async (t) => {
  const P = '/p/'
  t.same(parseValue(P, '/p/10.0.0.1:5432', '{"address": "10.0.0.1:5432", "weight": 2, "backup": true, "max_connections": 5}'), { address: '10.0.0.1:5432', host: '10.0.0.1', port: 5432, weight: 2, backup: true, maxConnections: 5 })
  t.match(parseValue(P, '/p/10.0.0.1:5432', 'hello'), /not JSON/)
  t.match(parseValue(P, '/p/10.0.0.1:5432', '"10.0.0.1:5432"'), /must be a JSON object/)
  t.match(parseValue(P, '/p/10.0.0.1:5432', '{"address": "10.0.0.2:5432"}'), /the key must be the prefix followed by the address 10\.0\.0\.2:5432/)
  t.match(parseValue(P, '/p/10.0.0.1:5432', '{"address": "10.0.0.1:5432", "weight": 0}'), /weight/)
  t.match(parseValue(P, '/p/10.0.0.1:5432', '{"address": "10.0.0.1:5432", "wieght": 2}'), /unknown field "wieght"/)
  t.same([...prefixEnd('/a/')], [...Buffer.from('/a0')], 'the range end of a prefix')
})
