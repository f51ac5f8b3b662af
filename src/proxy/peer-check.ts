import type { Socket } from 'node:net'

/** Linux's ENOTCONN, as libuv reports it (negated). */
const UV_ENOTCONN = -107

/**
 * Whether the TCP connection under `socket` has been reset, asked of the kernel.
 *
 * A reset can reach Node as a plain end of stream: when a write (a TLS 1.3 session ticket
 * sent by OpenSSL, or any relayed bytes) meets the RST first, that send() takes the socket's
 * pending error and the next read returns 0. Node then emits 'end' as for a FIN, and on a
 * TLSSocket the failed internal write leaves every later write pending for ever, so no
 * 'error' or 'close' follows. A connection that really half-closed still has its peer
 * (CLOSE_WAIT); a reset one is CLOSED, where getpeername(2) fails with ENOTCONN. One system
 * call per end of stream.
 *
 * Only meaningful while this side has not sent its own FIN (`writer`, the socket that carries
 * this side's bytes, not ended): after both FINs a clean connection is CLOSED too.
 */
export function connectionReset(socket: Socket, writer: Socket = socket): boolean {
  if (writer.writableEnded) return false
  const handle: unknown = Reflect.get(socket, '_handle')
  if (handle === null || typeof handle !== 'object') return socket.destroyed
  const getpeername: unknown = Reflect.get(handle, 'getpeername')
  if (typeof getpeername !== 'function') return false
  const rc: unknown = Reflect.apply(getpeername, handle, [{}])
  return rc === UV_ENOTCONN
}
