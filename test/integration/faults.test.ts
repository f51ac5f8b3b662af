import { spawn } from 'node:child_process'
import { createServer, type Server, type Socket } from 'node:net'
import t, { type Test } from 'tap'
import { startDaemon } from '../helpers/daemon.js'
import { backend, closed, deadPort, dial, eventually, flood, namedBackend, readUntil, stalled } from '../helpers/net.js'
import { metricValue } from '../helpers/udp.js'
import { loadNativeRelay } from '../../src/proxy/native-relay.js'

/**
 * Backends and clients misbehaving: killed mid-stream, reset, silent, flapping under load, and
 * a client that never reads. Each runs with both relays (the native one and the JS relay),
 * whatever SLUICE_TEST_RELAY says, since each carries established connections its own way.
 */

const nativeMissing = loadNativeRelay().addon === undefined ? 'the native relay is not built (npm run build:native)' : false
const RELAYS = [
  { relay: 'native', skip: nativeMissing },
  { relay: 'js', skip: false as const },
]

const config = (relay: string, backends: string[], extra = '', pool = ''): string => `
relay: ${relay}
listeners: [{ name: l, listen: 127.0.0.1:0, pool: p ${extra} }]
pools:
  p:
    backends: [${backends.join(', ')}]
${pool}`

/** Writes to `s` and reads the echo back. */
async function echo(s: Socket, text: string): Promise<string> {
  s.write(text)
  return (await readUntil(s, 'line')).toString()
}

/** A backend in its own process that greets, then echoes; killed with SIGKILL by the test. */
async function processBackend(t: Test): Promise<{ port: number; kill: () => Promise<void> }> {
  const script = `
    const s = require('node:net').createServer((c) => { c.write('hello\\n'); c.pipe(c) })
    s.listen(0, '127.0.0.1', () => console.log(s.address().port))`
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout.once('data', (d: Buffer) => resolve(Number(d.toString().trim())))
    child.once('exit', () => reject(new Error('the backend process exited before it listened')))
  })
  return {
    port,
    kill: () =>
      new Promise<void>((resolve) => {
        child.once('exit', () => resolve())
        child.kill('SIGKILL')
      }),
  }
}

for (const { relay, skip } of RELAYS) {
  t.test(`relay ${relay}: a backend killed mid-stream: a clean close for its client, nothing else touched`, { skip }, async (t) => {
    const doomed = await processBackend(t)
    const other = await namedBackend(t, 'other')
    const run = await startDaemon(t, config(relay, [`127.0.0.1:${doomed.port}`, other.address], '', '    algorithm: first\n'))
    const c = await dial(run.port('l'))
    t.equal((await readUntil(c, 'line')).toString(), 'hello\n', 'connected to the backend that will die')
    t.equal(await echo(c, 'before\n'), 'before\n')
    // A connection to the other pool member, open throughout.
    const bystander = await dial(run.port('l'))
    t.equal((await readUntil(bystander, 'line')).toString(), 'hello\n')
    const errors: Error[] = []
    c.on('error', (e) => errors.push(e))
    bystander.on('error', (e) => errors.push(e))
    let ended = false
    c.once('end', () => (ended = true))
    await doomed.kill()
    await closed(c)
    t.ok(ended, 'the client saw a FIN (a clean end of stream)')
    t.same(errors, [], 'and no error')
    await eventually(() => run.logs.access.length >= 2, 'both access lines', 10_000)
    const lines = run.logs.access
    t.ok(lines.every((l) => l.close_reason === 'backend_closed'), `close_reason backend_closed (${lines.map((l) => String(l.close_reason)).join(', ')})`)
    const a = lines.find((l) => Number(l.bytes_out) === 'hello\nbefore\n'.length)
    t.ok(a !== undefined, 'the bytes relayed before the kill are in the access line')
    // A new connection is served by the other backend (the first one is gone).
    const next = await dial(run.port('l'))
    t.equal((await readUntil(next, 'line')).toString(), 'other\n', 'new connections go to the backend that is left')
    t.equal(await echo(next, 'after\n'), 'after\n')
    next.destroy()
    const m = await run.metrics()
    t.equal(metricValue(m, 'sluice_connections_total', { listener: 'l' }), 3, 'every connection counted')
    t.ok(metricValue(m, 'sluice_bytes_total', { listener: 'l', direction: 'out' }) >= 2 * 'hello\n'.length + 'before\n'.length, 'and their bytes')
  })

  t.test(`relay ${relay}: a backend that resets mid-stream closes its client only`, { skip }, async (t) => {
    let resetNext = true
    const be = await backend(t, (s) => {
      const reset = resetNext
      resetNext = false
      s.write('hi\n')
      s.on('data', (d: Buffer) => {
        if (reset && d.toString().includes('boom')) s.resetAndDestroy()
        else s.write(d)
      })
    })
    const run = await startDaemon(t, config(relay, [be.address]))
    const victim = await dial(run.port('l'))
    victim.on('error', () => {})
    t.equal((await readUntil(victim, 'line')).toString(), 'hi\n')
    const bystander = await dial(run.port('l'))
    t.equal((await readUntil(bystander, 'line')).toString(), 'hi\n')
    victim.write('boom\n')
    await closed(victim)
    const line = await run.logs.waitFor((l) => l.access === true)
    t.equal(line.close_reason, 'backend_error', 'the reset is the backend\'s error')
    t.equal(await echo(bystander, 'still\n'), 'still\n', 'the other connection carries on')
    bystander.destroy()
    await run.logs.waitForAccess(2)
    t.equal(metricValue(await run.metrics(), 'sluice_connections_active', { listener: 'l' }), 0, 'nothing left open')
  })

  t.test(`relay ${relay}: a backend that accepts and never answers: the idle timeout ends it`, { skip }, async (t) => {
    // Reads (and drops) what it gets, never answers.
    const silent = await backend(t, (s) => s.resume())
    const run = await startDaemon(t, config(relay, [silent.address], ', timeouts: { idle: 300ms }'))
    const c = await dial(run.port('l'))
    c.on('error', () => {})
    c.write('anyone there?\n')
    const started = Date.now()
    await closed(c)
    const took = Date.now() - started
    t.ok(took >= 250, `closed after the idle timeout (${took} ms)`)
    const line = await run.logs.waitFor((l) => l.access === true)
    t.equal(line.close_reason, 'idle_timeout')
    t.equal(line.bytes_in, 'anyone there?\n'.length, 'what the client sent was relayed')
    await eventually(() => silent.sockets.size === 0, 'the backend side to close too')
  })

  t.test(`relay ${relay}: a client that never reads while the backend sends 1 GiB: memory stays bounded`, { skip }, async (t) => {
    const total = 1024 * 1024 * 1024
    const chunk = Buffer.alloc(1024 * 1024, 0x62)
    const pushed = { bytes: 0 }
    let beSock: Socket | undefined
    const be = await backend(t, (s) => {
      beSock = s
      flood(s, chunk, total, pushed)
    })
    const run = await startDaemon(t, config(relay, [be.address]))
    global.gc?.()
    const rssBefore = process.memoryUsage().rss
    const c = await dial(run.port('l'))
    c.pause()
    const last = await stalled(() => pushed.bytes - (beSock?.writableLength ?? 0), 500, 'the backend to stall')
    const rssStalled = process.memoryUsage().rss
    t.ok(last < 64 * 1024 * 1024, `the backend could push ${(last / 1048576).toFixed(1)} MiB of 1 GiB while nobody read`)
    t.ok(rssStalled - rssBefore < 64 * 1024 * 1024, `RSS grew ${((rssStalled - rssBefore) / 1048576).toFixed(1)} MiB while stalled (< 64 MiB)`)
    // Read it all, watching memory: the whole GiB passes without piling up anywhere.
    let got = 0
    let rssMax = rssStalled
    c.on('data', (d: Buffer) => {
      got += d.length
      if ((got & 0x3ffffff) < d.length) rssMax = Math.max(rssMax, process.memoryUsage().rss)
    })
    c.resume()
    await closed(c)
    t.equal(got, total, 'every byte of the GiB arrived once the client read')
    t.ok(rssMax - rssBefore < 128 * 1024 * 1024, `RSS at most ${((rssMax - rssBefore) / 1048576).toFixed(1)} MiB above the start while 1 GiB passed (< 128 MiB)`)
  })

  t.test(`relay ${relay}: a backend flapping every 300 ms under load loses no client that could be served`, { skip }, async (t) => {
    const steady = await namedBackend(t, 'steady')
    // The flapping one stops listening and starts again every 300 ms; connections it holds stay.
    // Its port is below the ephemeral range, so no outgoing connection of this or another test
    // can take it while it is down.
    const port = await deadPort()
    let server: Server | undefined
    const held = new Set<Socket>()
    const up = (): Promise<void> =>
      new Promise((resolve) => {
        const s = createServer((c) => {
          held.add(c)
          c.on('close', () => held.delete(c))
          c.on('error', () => {})
          c.write('flappy\n')
          c.pipe(c)
        })
        s.listen(port, '127.0.0.1', () => {
          server = s
          resolve()
        })
      })
    await up()
    let flaps = 0
    let stopped = false
    const flap = async (): Promise<void> => {
      while (!stopped && flaps < 200) {
        await new Promise((r) => setTimeout(r, 300))
        if (server !== undefined) {
          // The listening socket closes now; the connections it accepted stay open.
          server.close()
          server = undefined
        } else {
          await up()
        }
        flaps++
      }
    }
    t.teardown(() => {
      stopped = true
      server?.close()
      for (const c of held) c.destroy()
    })
    const flappy = `127.0.0.1:${port}`
    const run = await startDaemon(t, config(relay, [flappy, steady.address], '', '    retries: 1\n    connect_timeout: 2s\n'))
    const flapping = flap()
    // Bounded load: at least 400 connections and 4 flaps, at most 4,000 connections or 20 s.
    const N = 400
    const MAX = 4000
    const deadline = Date.now() + 20_000
    let next = 0
    let served = 0
    const lost = new Map<string, string>()
    const worker = async (): Promise<void> => {
      while (next < MAX && (next < N || flaps < 4) && Date.now() < deadline) {
        const i = next++
        let client = ''
        try {
          const c = await dial(run.port('l'))
          client = `127.0.0.1:${c.localPort}`
          c.on('error', () => {})
          const hello = (await readUntil(c, 'line')).toString()
          if (hello !== 'steady\n' && hello !== 'flappy\n') throw new Error(`greeting ${JSON.stringify(hello)}`)
          if ((await echo(c, `req-${i}\n`)) !== `req-${i}\n`) throw new Error('echo mismatch')
          c.end()
          await closed(c)
          served++
        } catch (err) {
          lost.set(client, `${i}: ${err instanceof Error ? err.message : String(err)}`)
        }
      }
    }
    await Promise.all(Array.from({ length: 20 }, worker))
    stopped = true
    await flapping
    t.ok(flaps >= 4, `the backend flapped ${flaps} times during the load`)
    t.ok(served >= N - lost.size && served + lost.size === next, `${served} of ${next} connections served`)
    // The one loss TCP allows: the flapping backend's kernel had completed the handshake, then
    // reset it as its listening socket closed. Every other client must have been served.
    await run.logs.waitForAccess(next)
    const avoidable = [...lost].filter(([client]) => !run.logs.access.some((l) => l.client === client && l.backend === flappy && l.close_reason === 'backend_error'))
    t.same(avoidable, [], `no client lost that could have been served (${lost.size} reset by the backend's closing listener)`)
    const m = await run.metrics()
    t.equal(metricValue(m, 'sluice_rejected_connections_total', { listener: 'l', reason: 'connect_failed' }), 0, 'no connect_failed refusal')
    t.equal(metricValue(m, 'sluice_rejected_connections_total', { listener: 'l', reason: 'no_backend' }), 0, 'no no_backend refusal')
    t.ok(metricValue(m, 'sluice_connect_errors_total', { backend: flappy, reason: 'refused' }) > 0, 'the refused connects to the flapping backend are counted')
  })
}
