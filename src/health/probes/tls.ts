import { readFileSync } from 'node:fs'
import { isIP } from 'node:net'
import type { ConnectionOptions, TLSSocket } from 'node:tls'
import { errnoCode, errorMessage } from '../../errors.js'
import type { ProbeFactory } from '../probe.js'
import { converse } from './conversation.js'

export interface TlsProbeOptions {
  /** Check the backend's certificate chain and name; off by default (a check only asks "is it alive"). */
  verify: boolean
  /** SNI name sent, and the name verified; defaults to the backend's host when it is a name. */
  servername: string | undefined
  /** PEM text of the CAs to trust when verifying (default: Node's bundled roots). */
  ca: string | undefined
  caFile: string | undefined
}

/** The TLS options of a probe towards `host` (shared with probes that speak TLS). */
export function tlsOptions(o: TlsProbeOptions, host: string): ConnectionOptions {
  const servername = o.servername ?? (isIP(host) === 0 ? host : undefined)
  return { rejectUnauthorized: o.verify, ...(servername !== undefined ? { servername } : {}), ...(o.ca !== undefined ? { ca: o.ca } : {}) }
}

/** `tls`: the TLS handshake completes (and, with `verify: true`, the certificate is valid). */
export const tlsProbe: ProbeFactory<TlsProbeOptions> = {
  type: 'tls',
  optionKeys: ['verify', 'servername', 'ca'],
  parseOptions(m, reader, context) {
    const verify = m.has('verify') ? reader.bool(m.get('verify'), `${context} verify`) : false
    const servername = m.has('servername') ? reader.string(m.get('servername'), `${context} servername`, { nonEmpty: true }) : undefined
    let ca: string | undefined
    let caFile: string | undefined
    if (m.has('ca')) {
      caFile = reader.string(m.get('ca'), `${context} ca`, { nonEmpty: true })
      if (caFile === undefined) return undefined
      try {
        ca = readFileSync(caFile, 'utf8')
      } catch (err) {
        reader.report(m.get('ca'), `${context} ca: cannot read ${caFile}: ${errnoCode(err) ?? errorMessage(err)}`)
        return undefined
      }
      if (!ca.includes('-----BEGIN CERTIFICATE-----')) {
        reader.report(m.get('ca'), `${context} ca: ${caFile} holds no PEM certificate`)
        return undefined
      }
    }
    if (verify === undefined || (m.has('servername') && servername === undefined)) return undefined
    return { verify, servername, ca, caFile }
  },
  create: (o) => ({
    check: (target) =>
      converse(target, async (c) => (c.socket as TLSSocket).getProtocol() ?? 'handshake complete', tlsOptions(o, target.host)),
  }),
}
