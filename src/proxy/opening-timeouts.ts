import type { ConfigReader, MapView } from '../config/reader.js'

/**
 * `timeouts.proxy_header`: how long the PROXY header alone may take, within the whole
 * opening's timeouts.handshake. Only meaningful with proxy_protocol_accept: true (an error
 * otherwise). Undefined when absent; false after an error.
 */
export function readProxyHeaderTimeout(reader: ConfigReader, listener: MapView, timeouts: MapView, context: string): number | undefined | false {
  if (!timeouts.has('proxy_header')) return undefined
  // Read as written (its own checks report a bad value of proxy_protocol_accept).
  const node = listener.has('proxy_protocol_accept') ? listener.get('proxy_protocol_accept').node : undefined
  const accept = node !== undefined && 'value' in node && node.value === true
  if (!accept) {
    reader.report(timeouts.keyAt('proxy_header'), `${context} timeouts.proxy_header bounds the PROXY header, which only a listener with proxy_protocol_accept: true reads; remove it or add proxy_protocol_accept: true`)
    return false
  }
  const ms = reader.duration(timeouts.get('proxy_header'), `${context} timeouts.proxy_header`)
  return ms === undefined ? false : ms
}
