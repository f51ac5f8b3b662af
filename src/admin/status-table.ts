import type { StatusDocument } from './admin-status.js'

/**
 * `sluice status` as an aligned table: one row per backend, with the listeners that send to
 * its pool. Numbers are right-aligned; every other column is left-aligned.
 */
export function formatStatus(s: StatusDocument): string {
  const head = ['LISTENER', 'LISTEN', 'POOL', 'BACKEND', 'STATE', 'ACTIVE', 'TOTAL']
  const rows: string[][] = []
  const byName = new Map(s.listeners.map((l) => [l.name, l]))
  for (const p of s.pools) {
    const ls = p.listeners.map((n) => byName.get(n)).filter((l) => l !== undefined)
    const names = ls.length > 0 ? ls.map((l) => `${l.name}/${l.protocol}`).join(',') : '-'
    const listens = ls.length > 0 ? ls.map((l) => l.listen).join(',') : '-'
    for (const b of p.backends) {
      const flags = [b.backup ? 'backup' : '', b.weight !== 1 ? `w=${b.weight}` : ''].filter((f) => f !== '').join(' ')
      rows.push([names, listens, p.name, flags === '' ? b.address : `${b.address} (${flags})`, b.state, String(b.active_connections), String(b.total_connections)])
    }
  }
  const numeric = new Set([5, 6])
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)))
  const line = (cells: readonly string[]): string =>
    cells
      .map((c, i) => (numeric.has(i) ? c.padStart(widths[i] ?? 0) : c.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd()
  const t = s.totals
  const summary = `sluice ${s.version} (pid ${s.pid}), up ${formatUptime(s.uptime_seconds)}, ${s.config_file}; ${t.listeners} listener${t.listeners === 1 ? '' : 's'}, ${t.backends_up}/${t.backends} backends up, ${t.active_connections} active connection${t.active_connections === 1 ? '' : 's'}${s.relay !== undefined ? `, ${s.relay} relay` : ''}${s.ready ? '' : ' (NOT READY)'}`
  const out = [summary, '', line(head), ...rows.map(line)]
  // With several workers, each one's share (a single in-process data plane needs no table).
  const workers = s.workers ?? []
  if (workers.length > 1) {
    out.push('', 'WORKER  ACTIVE  TOTAL')
    const wa = Math.max(6, ...workers.map((w) => String(w.active_connections).length))
    const wt = Math.max(5, ...workers.map((w) => String(w.connections_total).length))
    for (const w of workers) out.push(`${String(w.id).padEnd(6)}  ${String(w.active_connections).padStart(wa)}  ${String(w.connections_total).padStart(wt)}`)
  }
  return out.join('\n')
}

function formatUptime(s: number): string {
  if (s < 60) return `${s}s`
  if (s < 3600) return `${Math.floor(s / 60)}m${s % 60}s`
  if (s < 86400) return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`
  return `${Math.floor(s / 86400)}d${Math.floor((s % 86400) / 3600)}h`
}
