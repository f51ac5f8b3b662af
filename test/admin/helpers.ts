import { writeFileSync } from 'node:fs'
import type { Test } from 'tap'
import { startDaemon, type Running } from '../helpers/daemon.js'
import { tempFile } from '../helpers/spawn.js'

export interface WithAdmin extends Running {
  /** http://127.0.0.1:PORT of the admin API. */
  url: string
  file: string
  /** Rewrites the configuration file (for reloads). */
  write(yaml: string): void
  fetch(path: string, init?: { method?: string; token?: string; headers?: Record<string, string> }): Promise<Response>
}

/**
 * An in-process daemon with the admin API on 127.0.0.1:0, its configuration in a real file
 * (so POST /api/reload can re-read it).
 */
export async function startWithAdmin(t: Test, yaml: string): Promise<WithAdmin> {
  const file = tempFile('sluice.yaml', yaml)
  const running = await startDaemon(t, yaml, file)
  const a = running.daemon.adminAddress()
  if (a === undefined) throw new Error('the configuration has no admin section')
  const url = `http://127.0.0.1:${a.port}`
  return {
    ...running,
    url,
    file,
    write: (text) => writeFileSync(file, text),
    fetch: (path, init = {}) => {
      const headers: Record<string, string> = { ...(init.headers ?? {}) }
      if (init.token !== undefined) headers.authorization = `Bearer ${init.token}`
      return fetch(url + path, { method: init.method ?? 'GET', headers })
    },
  }
}

/** A one-pool configuration with the admin API on an ephemeral loopback port. */
export function adminYaml(backends: readonly string[], admin = '{ listen: "127.0.0.1:0" }', extra = ''): string {
  return `
admin: ${admin}
log: { level: info, access_log: false }
${extra}
listeners: [{ name: l, listen: "127.0.0.1:0", pool: p }]
pools:
  p: { algorithm: round-robin, backends: [${backends.map((b) => JSON.stringify(b)).join(', ')}] }
`
}
