// The 30-line Node pipe proxy that BENCH.md measures sluice against: what Node's streams
// give with no features at all. TCP: pipe() both ways. UDP: one upstream socket per client
// address:port, kept for 5 s of silence.
//   node bench/pipe-proxy.mjs tcp|udp LISTEN_PORT TARGET_HOST TARGET_PORT
import { createServer, connect } from 'node:net'
import { createSocket } from 'node:dgram'

const [mode, listenPort, host, targetPort] = process.argv.slice(2)
if (mode === 'tcp') {
  createServer({ allowHalfOpen: true }, (c) => {
    const up = connect({ host, port: Number(targetPort), allowHalfOpen: true })
    c.on('error', () => up.destroy())
    up.on('error', () => c.destroy())
    c.pipe(up)
    up.pipe(c)
  }).listen(Number(listenPort), '127.0.0.1')
} else {
  const front = createSocket('udp4')
  const sessions = new Map()
  front.on('message', (msg, r) => {
    const key = `${r.address}:${r.port}`
    let s = sessions.get(key)
    if (s === undefined) {
      const up = createSocket('udp4')
      s = { up, queue: [], timer: undefined }
      up.on('message', (reply) => front.send(reply, r.port, r.address))
      up.connect(Number(targetPort), host, () => {
        for (const m of s.queue) up.send(m)
        s.queue = undefined
      })
      sessions.set(key, s)
    }
    clearTimeout(s.timer)
    s.timer = setTimeout(() => (s.up.close(), sessions.delete(key)), 5000)
    if (s.queue !== undefined) s.queue.push(msg)
    else s.up.send(msg)
  })
  front.bind(Number(listenPort), '127.0.0.1')
}
