import type { Server } from 'node:net'

/**
 * Sets TCP_NODELAY and TCP keepalive (first probe after `keepAliveMs`) on a listening socket.
 * Linux copies both into every socket accept(2) returns, so the accepted side needs none of
 * the five setsockopt(2) calls Node would otherwise make per connection. True when both took;
 * false elsewhere (another platform, or a Node whose server handle lacks the methods): then
 * each accepted socket must be given them itself.
 */
export function setInheritedOptions(server: Server, keepAliveMs: number): boolean {
  if (process.platform !== 'linux') return false
  const handle: unknown = Reflect.get(server, '_handle')
  if (handle === null || typeof handle !== 'object') return false
  const setNoDelay: unknown = Reflect.get(handle, 'setNoDelay')
  const setKeepAlive: unknown = Reflect.get(handle, 'setKeepAlive')
  if (typeof setNoDelay !== 'function' || typeof setKeepAlive !== 'function') return false
  const noDelay: unknown = Reflect.apply(setNoDelay, handle, [true])
  const keepAlive: unknown = Reflect.apply(setKeepAlive, handle, [true, Math.floor(keepAliveMs / 1000)])
  return noDelay === 0 && keepAlive === 0
}
