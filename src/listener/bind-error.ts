import { SluiceError, errnoCode, errorMessage, type ErrorCode } from '../errors.js'

const WHY: Readonly<Record<string, string>> = {
  EADDRINUSE: 'address already in use; stop what holds the port or change listen',
  EACCES: 'permission denied; ports below 1024 need CAP_NET_BIND_SERVICE (the systemd unit grants it)',
  EADDRNOTAVAIL: 'address not available on this host; use an address of one of its interfaces, or 0.0.0.0',
}

/** A bind failure as one line an operator can act on: what, where, why, and the errno. */
export function bindError(code: ErrorCode, what: string, listen: string, err: Error): SluiceError {
  const errno = errnoCode(err)
  const reason = (errno !== undefined ? WHY[errno] : undefined) ?? errorMessage(err)
  return new SluiceError(code, `${what} cannot listen on ${listen}: ${reason}${errno ? ` (${errno})` : ''}`, { cause: err })
}
