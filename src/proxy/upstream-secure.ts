import { isIP, type Socket } from 'node:net'
import { connect as tlsConnect, type TLSSocket } from 'node:tls'
import type { PoolConfig, PoolTlsConfig } from '../config/types.js'
import type { Backend } from '../upstream/backend.js'
import type { PickContext } from '../balancer/types.js'
import type { Opened } from './proxy-opening.js'
import { encodeProxyHeader } from './proxy-header-out.js'
import { tlsTlvs } from './proxy-tlv.js'

/** Whether connections of this pool need nothing between connect and splice (no header, no TLS). */
export function isPlainPool(pc: PoolConfig): boolean {
  return (pc.proxyProtocol === undefined || pc.proxyProtocol === 'off') && pc.tls === undefined
}

/**
 * The PROXY protocol header a pool wants before any byte of data, or undefined. It carries the
 * client's address as the session knows it (from a PROXY header in, if one was read); a v2
 * header after TLS ended here also carries the ALPN, AUTHORITY and SSL TLVs (proxy-tlv.ts),
 * so the backend knows the client used TLS.
 */
export function proxyHeaderFor(pc: PoolConfig, ctx: PickContext, opened: Opened | undefined, client: Socket): Buffer | undefined {
  const version = pc.proxyProtocol
  if (version === undefined || version === 'off') return undefined
  const tls = version === 'v2' ? opened?.tls : undefined
  return encodeProxyHeader(
    version,
    {
      sourceAddress: ctx.remoteAddress,
      sourcePort: ctx.remotePort,
      destAddress: opened?.destAddress ?? client.localAddress ?? '',
      destPort: opened?.destPort ?? client.localPort ?? 0,
    },
    'stream',
    tls === undefined ? undefined : tlsTlvs(tls),
  )
}

/**
 * TLS towards a backend over an established TCP connection (after any PROXY header, which
 * goes in clear). Verification is on unless the pool turns it off; the server name defaults
 * to the backend's host name when it is not an IP literal.
 */
export function secureUpstream(up: Socket, b: Backend, tls: PoolTlsConfig): TLSSocket {
  const servername = tls.servername ?? (isIP(b.host) === 0 ? b.host : undefined)
  return tlsConnect({
    socket: up,
    host: b.host,
    ...(servername !== undefined ? { servername } : {}),
    ...(tls.ca !== undefined ? { ca: tls.ca.pem } : {}),
    rejectUnauthorized: tls.verify,
  })
}
