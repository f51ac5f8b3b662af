import t from 'tap'
import { execFileSync } from 'node:child_process'
import { startDaemon } from '../helpers/daemon.js'
import { dial, namedBackend, readUntil } from '../helpers/net.js'
import { loadNativeRelay } from '../../src/proxy/native-relay.js'

/** `ss` lines of established TCP sockets matching `filter`, or undefined without ss. */
function ss(filter: string): string[] | undefined {
  try {
    return execFileSync('ss', ['-tnoH', 'state', 'established', filter], { encoding: 'utf8' }).split('\n').filter((l) => l.trim() !== '')
  } catch {
    return undefined
  }
}

const noSs = ss('( sport = :1 )') === undefined ? 'ss (iproute2) is not installed' : false
const nativeMissing = loadNativeRelay().addon === undefined ? 'the native relay is not built (npm run build:native)' : false

for (const relay of ['js', 'native'] as const) {
  t.test(`relay ${relay}: both sides of a proxied connection have TCP keepalive armed (first probe after 60 s)`, { skip: noSs || (relay === 'native' && nativeMissing) }, async (t) => {
    const b = await namedBackend(t, 'b')
    const run = await startDaemon(t, `
relay: ${relay}
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p }]
pools: { p: { backends: [${b.address}] } }
`)
    const port = run.port('l')
    const c = await dial(port)
    t.teardown(() => c.destroy())
    t.equal((await readUntil(c, 'line')).toString().trim(), 'b', 'the connection is relayed')
    const accepted = ss(`( sport = :${port} and dport = :${c.localPort} )`)!
    t.equal(accepted.length, 1, 'the accepted socket is listed')
    t.match(accepted[0], /timer:\(keepalive,(59|60)sec,0\)/, `the accepted socket: ${accepted[0]}`)
    const upstream = ss(`( dport = :${b.port} )`)!
    t.equal(upstream.length, 1, 'the socket to the backend is listed')
    t.match(upstream[0], /timer:\(keepalive,(59|60)sec,0\)/, `the backend socket: ${upstream[0]}`)
  })
}
