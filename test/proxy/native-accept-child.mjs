// Run by native-accept.test.ts under a low descriptor limit: a native relay accepting on a
// loopback port that holds what it accepts until told to free it ("free" on stdin).
import { createServer } from 'node:net'
import { loadNativeRelay } from '../../dist/proxy/native-relay.js'

const { addon, reason } = loadNativeRelay()
if (addon === undefined) throw new Error(reason)
let total = 0
let freeing = false
const held = []
const relay = addon.create({
  onEnd() {},
  onAccept(a) {
    total++
    if (freeing) relay.destroy(a.id)
    else held.push(a.id)
    process.stdout.write(`held ${total}\n`)
  },
  onAcceptError(e) {
    process.stdout.write(`accept-error ${e.code} ${e.pauseMs}\n`)
  },
})
const server = createServer()
server.listen(0, '127.0.0.1', () => {
  const port = server.address().port
  relay.listen(server._handle.fd, 0)
  server.close()
  process.stdout.write(`port ${port}\n`)
})
process.stdin.setEncoding('utf8')
process.stdin.on('data', (d) => {
  if (!d.includes('free')) return
  freeing = true
  for (const id of held.splice(0)) relay.destroy(id)
})
