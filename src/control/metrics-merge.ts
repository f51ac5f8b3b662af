import type { MetricObjectWithValues, MetricValue } from 'prom-client'
import type { BackendShares } from './messages.js'

type Metric = MetricObjectWithValues<MetricValue<string>>

/**
 * A worker's sluice_backend_connections_total, from the per-backend counts in its stats
 * snapshot, as the series its own registry would have held (`template`: the metric as the
 * control plane's registry describes it, with no values of its own).
 */
export function establishedMetric(template: Metric, shares: readonly BackendShares[]): Metric {
  const values: MetricValue<string>[] = []
  for (const share of shares) {
    share.backends.forEach((backend, i) => {
      const n = share.established[i] ?? 0
      if (n > 0) values.push({ labels: { pool: share.pool, backend }, value: n })
    })
  }
  return { ...template, values }
}

/** How long the merge may hold the event loop before it yields (ms). */
const SLICE_MS = 1

/**
 * Sums the metrics of several registries (the control plane's and each worker's) into one
 * Prometheus text exposition: the same series from several sources add up (counters, gauges
 * and histogram buckets alike). Works in slices of about a millisecond and yields between
 * them, so a scrape of tens of thousands of series never holds up the event loop it shares
 * with a data plane.
 */
export async function mergeExposition(sources: readonly (readonly Metric[])[]): Promise<string> {
  const order: string[] = []
  const byName = new Map<string, { help: string; type: string; series: Map<string, { line: string; value: number }> }>()
  let sliceStart = performance.now()
  const maybeYield = async (): Promise<void> => {
    if (performance.now() - sliceStart < SLICE_MS) return
    await new Promise((resolve) => setImmediate(resolve))
    sliceStart = performance.now()
  }
  for (const metrics of sources) {
    for (const m of metrics) {
      let entry = byName.get(m.name)
      if (entry === undefined) {
        entry = { help: m.help, type: String(m.type), series: new Map() }
        byName.set(m.name, entry)
        order.push(m.name)
      }
      for (const v of m.values) {
        // Histogram buckets, sums and counts carry their own series name.
        const own: unknown = Reflect.get(v, 'metricName')
        const line = `${typeof own === 'string' ? own : m.name}${formatLabels(v.labels)}`
        const s = entry.series.get(line)
        if (s === undefined) entry.series.set(line, { line, value: v.value })
        else s.value += v.value
        if (performance.now() - sliceStart >= SLICE_MS) await maybeYield()
      }
    }
  }
  // Joined a slice at a time, so no single join of the whole text holds the loop.
  const parts: string[] = []
  let lines: string[] = []
  for (const name of order) {
    const e = byName.get(name)!
    lines.push(`# HELP ${name} ${escapeHelp(e.help)}`, `# TYPE ${name} ${e.type}`)
    for (const s of e.series.values()) {
      lines.push(`${s.line} ${formatValue(s.value)}`)
      if (performance.now() - sliceStart >= SLICE_MS) {
        parts.push(lines.join('\n'))
        lines = []
        await maybeYield()
      }
    }
  }
  if (lines.length > 0) parts.push(lines.join('\n'))
  return `${parts.join('\n')}\n`
}

function formatLabels(labels: Partial<Record<string, string | number>>): string {
  const keys = Object.keys(labels)
  if (keys.length === 0) return ''
  const parts: string[] = []
  for (const k of keys) {
    const v = labels[k]
    if (v === undefined) continue
    parts.push(`${k}="${escapeLabel(String(v))}"`)
  }
  return parts.length === 0 ? '' : `{${parts.join(',')}}`
}

function escapeLabel(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"')
}

function escapeHelp(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN'
  if (v === Infinity) return '+Inf'
  if (v === -Infinity) return '-Inf'
  return String(v)
}
