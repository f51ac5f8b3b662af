import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { Test } from 'tap'
import { freePorts, processServer, type ProcessServer } from './servers.js'
import { which } from './tools.js'

/** etcd's server (Debian package etcd-server). */
export const etcdBin = which('etcd', ['/usr/bin', '/usr/sbin'])

export interface Etcd extends ProcessServer {
  /** http://127.0.0.1:PORT of its client port (the v3 JSON gateway is on it too). */
  url: string
  put(key: string, value: string): Promise<void>
  del(key: string): Promise<void>
  /** Compacts the history up to the current revision. */
  compact(): Promise<void>
}

/** A one-member etcd on loopback ephemeral ports with a temp data dir, started (and stopped at teardown). */
export async function startEtcd(t: Test): Promise<Etcd> {
  const [client, peer] = await freePorts(2)
  const dir = mkdtempSync(join(tmpdir(), 'sluice-etcd-'))
  const url = `http://127.0.0.1:${client}`
  const peerUrl = `http://127.0.0.1:${peer}`
  const server = processServer(t, [client as number], etcdBin as string, [
    '--name', 'sluice-test', '--data-dir', dir,
    '--listen-client-urls', url, '--advertise-client-urls', url,
    '--listen-peer-urls', peerUrl, '--initial-advertise-peer-urls', peerUrl,
    '--initial-cluster', `sluice-test=${peerUrl}`, '--log-level', 'error',
  ])
  await server.start()
  const call = async (path: string, body: unknown): Promise<Record<string, unknown>> => {
    const r = await fetch(url + path, { method: 'POST', body: JSON.stringify(body) })
    if (!r.ok) throw new Error(`etcd ${path}: HTTP ${r.status} ${await r.text()}`)
    return (await r.json()) as Record<string, unknown>
  }
  const b64 = (s: string): string => Buffer.from(s).toString('base64')
  return {
    ...server,
    url,
    put: async (key, value) => void (await call('/v3/kv/put', { key: b64(key), value: b64(value) })),
    del: async (key) => void (await call('/v3/kv/deleterange', { key: b64(key) })),
    compact: async () => {
      const r = await call('/v3/kv/range', { key: b64('\0'), limit: 1 })
      const rev = (r.header as { revision: string }).revision
      await call('/v3/kv/compaction', { revision: rev, physical: true })
    },
  }
}
