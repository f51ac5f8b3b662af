import t from 'tap'
import { createSocket } from 'node:dgram'
import { readFileSync } from 'node:fs'
import { startDaemon } from '../helpers/daemon.js'
import { deadPort, dial, greeting, readUntil } from '../helpers/net.js'
import { startSluice, tempFile } from '../helpers/spawn.js'
import { answer } from '../../src/demo/demo-dns.js'

/** A DNS query for `name` of type `qtype` (16 = TXT, 1 = A). */
function query(id: number, name: string, qtype: number): Buffer {
  const labels = name.split('.').flatMap((l) => [Buffer.from([l.length]), Buffer.from(l)])
  const header = Buffer.from([id >> 8, id & 0xff, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0])
  return Buffer.concat([header, ...labels, Buffer.from([0, 0, qtype, 0, 1])])
}

function ask(port: number, q: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const s = createSocket('udp4')
    const timer = setTimeout(() => {
      s.close()
      reject(new Error('no DNS answer within 5s'))
    }, 5000)
    s.on('message', (m) => {
      clearTimeout(timer)
      s.close()
      resolve(m)
    })
    s.send(q, port, '127.0.0.1')
  })
}

t.test('the demo DNS server answers A and TXT, and ignores what is not a query', async (t) => {
  const txt = answer(query(7, 'demo', 16), 'dns-a')!
  t.equal(txt.readUInt16BE(0), 7, 'same id')
  t.equal(txt[2]! & 0x80, 0x80, 'a response')
  t.equal(txt.readUInt16BE(6), 1, 'one answer')
  t.equal(txt.subarray(-5).toString(), 'dns-a', 'TXT names the server')
  const a = answer(query(8, 'www.example', 1), 'dns-a')!
  t.same([...a.subarray(-4)], [127, 0, 0, 1], 'A is 127.0.0.1')
  t.equal(answer(Buffer.from('nonsense'), 'x'), undefined, 'too short: dropped')
  t.equal(answer(txt, 'x'), undefined, 'a response is not answered')
})

t.test('the default configuration\'s shape: TCP greetings and DNS answers rotate over demo backends', async (t) => {
  const [b1, b2, d1, d2] = [await deadPort(), await deadPort(), await deadPort(), await deadPort()]
  // config/sluice.yaml with free ports instead of the fixed ones, so the test never collides.
  const yaml = readFileSync('config/sluice.yaml', 'utf8')
    .replace('127.0.0.1:4000', '127.0.0.1:0')
    .replace('127.0.0.1:4053', '127.0.0.1:0')
    .replace('127.0.0.1:9090', '127.0.0.1:0')
    .replaceAll('127.0.0.1:4101', `127.0.0.1:${b1}`)
    .replaceAll('127.0.0.1:4102', `127.0.0.1:${b2}`)
    .replace(/.*4103.*\n/g, '')
    .replaceAll('127.0.0.1:4151', `127.0.0.1:${d1}`)
    .replaceAll('127.0.0.1:4152', `127.0.0.1:${d2}`)
  const run = await startDaemon(t, yaml)
  const seen = [await greeting(run.port('demo')), await greeting(run.port('demo'))]
  t.same(seen.sort(), [`hello from demo-backend-1 (127.0.0.1:${b1})`, `hello from demo-backend-2 (127.0.0.1:${b2})`])
  const names: string[] = []
  for (let i = 0; i < 4; i++) {
    const reply = await ask(run.port('demo-dns'), query(100 + i, 'demo', 16))
    t.equal(reply.readUInt16BE(0), 100 + i, `answer ${i} has the query's id`)
    names.push(reply.subarray(-10).toString())
  }
  t.same(names, ['demo-dns-1', 'demo-dns-2', 'demo-dns-1', 'demo-dns-2'], 'DNS answers alternate between the two demo servers')
})

t.test('the README\'s access-log sample has the fields of the real line, in order', async (t) => {
  const sample = readFileSync('README.md', 'utf8').split('\n').find((l) => l.startsWith('{') && l.includes('"access":true'))
  if (sample === undefined) throw new Error('no access-log sample in README.md')
  const want = JSON.parse(sample) as Record<string, unknown>
  const [b1, d1, d2] = [await deadPort(), await deadPort(), await deadPort()]
  // The tour's first step, on free ports: sluice run on the default configuration, one
  // backend, `nc 127.0.0.1 4000` typing "hello".
  const yaml = readFileSync('config/sluice.yaml', 'utf8')
    .replace('127.0.0.1:4000', '127.0.0.1:0')
    .replace('127.0.0.1:4053', '127.0.0.1:0')
    .replace('127.0.0.1:9090', '127.0.0.1:0')
    .replaceAll('127.0.0.1:4101', `127.0.0.1:${b1}`)
    .replace(/.*410[23].*\n/g, '')
    .replaceAll('127.0.0.1:4151', `127.0.0.1:${d1}`)
    .replaceAll('127.0.0.1:4152', `127.0.0.1:${d2}`)
  const sluice = startSluice(t, tempFile('demo.yaml', yaml))
  const s = await dial(await sluice.port('demo'))
  const hello = (await readUntil(s, 'line')).toString()
  t.equal(hello, `hello from demo-backend-1 (127.0.0.1:${b1})\n`, 'the greeting the README shows')
  s.write('hello\n')
  t.equal((await readUntil(s, 'line')).toString(), 'hello\n', 'then the echo')
  s.end()
  const got = await sluice.waitFor((l) => l.access === true, 'the access line')
  t.same(Object.keys(got), Object.keys(want), `the sample's fields, in the order sluice writes them: ${Object.keys(got).join(', ')}`)
  for (const k of Object.keys(want)) t.equal(typeof got[k], typeof want[k], `${k}: a ${typeof want[k]}`)
  t.match(got, { listener: 'demo', pool: 'demo', backend: `127.0.0.1:${b1}`, bytes_in: 6, bytes_out: hello.length + 6, attempts: 1, close_reason: 'client_closed', msg: want.msg })
})

