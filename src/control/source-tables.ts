import { SharedKeyTable } from './shared-key-table.js'
import { SharedRateTable } from './shared-rate-table.js'

/**
 * Entries of each per-source table: 131,072 (1 MiB each). A table holds one entry per source
 * and listener that has a connection open (connections) or a bucket not yet full again
 * (rates); see docs/operations.md for what happens when one is full.
 */
export const SOURCE_TABLE_ENTRIES = 131_072

/**
 * The per-source tables of the whole daemon, in SharedArrayBuffers that every data-plane
 * worker counts in: open connections (UDP: live sessions) per source, and the token buckets
 * of per_source_rate and per_source_datagrams. Created once by the control plane and handed
 * to each worker, so every limit is for the whole daemon.
 */
export class SourceTables {
  readonly connections: SharedKeyTable
  readonly rates: SharedRateTable
  private sweptAt = Date.now()

  constructor(buffers: { connections: SharedArrayBuffer; rates: SharedArrayBuffer }) {
    this.connections = new SharedKeyTable(buffers.connections)
    this.rates = new SharedRateTable(buffers.rates)
  }

  static create(entries = SOURCE_TABLE_ENTRIES): SourceTables {
    return new SourceTables({
      connections: SharedKeyTable.create(entries).buffer,
      rates: SharedRateTable.create(entries).buffer,
    })
  }

  get buffers(): { connections: SharedArrayBuffer; rates: SharedArrayBuffer } {
    return { connections: this.connections.buffer, rates: this.rates.buffer }
  }

  /**
   * Clears rate entries whose buckets are full again, a slice a second while limits are in
   * use and the whole table after a quiet minute (called from the admission path, no timer).
   */
  tick(now: number): void {
    const gap = now - this.sweptAt
    if (gap < 1000) return
    this.sweptAt = now
    this.rates.sweep(gap > 60_000 ? this.rates.capacity : 4096)
  }
}
