import { isIP } from 'node:net'

export interface HostPort {
  /** IPv4/IPv6 literal or host name, without brackets. Empty for `:port` (all addresses). */
  host: string
  port: number
}

/**
 * Parses `host:port`, `[v6]:port` or `:port`. Returns a string describing the problem when
 * the text is not an address. Listeners may use the `:port` form (all addresses) and port 0
 * (the system picks a free port, for tests); backends need both a host and a port.
 */
export function parseAddress(text: string, forListener: boolean): HostPort | string {
  const t = text.trim()
  let host: string
  let portText: string
  if (t.startsWith('[')) {
    const close = t.indexOf(']')
    if (close < 0 || t[close + 1] !== ':') {
      return `"${text}" is not an address; write an IPv6 address as [::1]:5432`
    }
    host = t.slice(1, close)
    portText = t.slice(close + 2)
    if (isIP(host) !== 6) return `"${host}" in "${text}" is not an IPv6 address`
  } else {
    const colon = t.lastIndexOf(':')
    if (colon < 0) return `"${text}" has no port; write host:port, e.g. 127.0.0.1:5432`
    host = t.slice(0, colon)
    portText = t.slice(colon + 1)
    if (host.includes(':')) {
      return `"${text}" looks like a bare IPv6 address; put it in brackets: [${host}]:${portText}`
    }
    if (host !== '' && isIP(host) === 0 && !/^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?$/.test(host)) {
      return `"${host}" in "${text}" is neither an IP address nor a host name`
    }
  }
  if (!/^\d{1,5}$/.test(portText)) return `port "${portText}" in "${text}" is not a number from 1 to 65535`
  const port = Number(portText)
  if (port > 65535 || (port === 0 && !forListener)) return `port ${port} in "${text}" is out of range; use 1 to 65535`
  if (host === '' && !forListener) return `"${text}" needs a host; write host:port, e.g. 10.0.0.11:${port}`
  return { host, port }
}

/** `host:port`, with brackets around IPv6 literals: the stable id of a backend. */
export function formatAddress(host: string, port: number): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`
}
