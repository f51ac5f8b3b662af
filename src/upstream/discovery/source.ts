import type { BackendConfig } from '../../config/types.js'
import type { DiscoverySourceKind } from './discovery-config.js'

/**
 * What a discovery source tells its pool: a new good set, or why this attempt failed (the
 * last good set then stays). `detail` is one line for the log; `where` locates a bad file.
 */
export interface SourceEvents {
  set(backends: BackendConfig[]): void
  failed(detail: string, code: DiscoveryErrorCode): void
}

export type DiscoveryErrorCode = 'SLUICE_ERR_DISCOVERY_DNS' | 'SLUICE_ERR_DISCOVERY_FILE' | 'SLUICE_ERR_DISCOVERY_ETCD'

/** One running source of backends for one pool (dns, file or etcd). */
export interface DiscoverySource {
  readonly kind: DiscoverySourceKind
  /** Starts it; resolves once the first attempt has succeeded or failed. */
  start(): Promise<void>
  close(): void
}
