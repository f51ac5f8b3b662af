import { createServer, type Server, type Socket } from 'node:net'
import type { DemoBackendConfig } from '../config/types.js'
import { bindError } from '../listener/bind-error.js'
import { DemoDns } from './demo-dns.js'

/** A demo server of either kind, as the daemon starts and stops it. */
export interface DemoServer {
  readonly config: DemoBackendConfig
  listen(): Promise<number>
  close(): void
}

export function createDemoBackend(config: DemoBackendConfig): DemoServer {
  return config.protocol === 'udp' ? new DemoDns(config) : new DemoBackend(config)
}

/**
 * A tiny TCP server for trying sluice on a bare machine: it greets each connection with its
 * name, then echoes what it receives. `nc 127.0.0.1 4000` through the default configuration
 * shows the greeting change from one connection to the next as sluice balances them.
 */
export class DemoBackend implements DemoServer {
  private readonly server: Server
  private readonly sockets = new Set<Socket>()

  constructor(readonly config: DemoBackendConfig) {
    this.server = createServer((socket) => {
      this.sockets.add(socket)
      socket.on('close', () => this.sockets.delete(socket))
      socket.on('error', () => socket.destroy())
      socket.write(`hello from ${config.name} (${config.listen})\n`)
      socket.pipe(socket)
    })
  }

  listen(): Promise<number> {
    const { host, port, name, listen } = this.config
    return new Promise((resolve, reject) => {
      this.server.once('error', (err) => {
        reject(bindError('SLUICE_ERR_DEMO_BACKEND', `demo backend "${name}"`, listen, err))
      })
      this.server.listen({ host, port }, () => {
        const a = this.server.address()
        resolve(a !== null && typeof a === 'object' ? a.port : port)
      })
    })
  }

  close(): void {
    this.server.close()
    for (const s of this.sockets) s.destroy()
  }
}
