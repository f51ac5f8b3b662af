import t from 'tap'
import { Counter, Gauge, Histogram, Registry } from 'prom-client'
import { mergeExposition } from '../../src/control/metrics-merge.js'

t.test('the same series from several registries add up; label values are escaped; histograms merge by bucket', async (t) => {
  const regs = [new Registry(), new Registry()]
  for (const [i, r] of regs.entries()) {
    const c = new Counter({ name: 'x_total', help: 'x', labelNames: ['listener'], registers: [r] })
    c.inc({ listener: 'a' }, i + 1)
    c.inc({ listener: 'q"uote\\\\' }, 10)
    new Gauge({ name: 'g', help: 'g\nline', registers: [r] }).set(i === 0 ? 5 : 7)
    new Histogram({ name: 'h', help: 'h', buckets: [1, 10], registers: [r] }).observe(i === 0 ? 0.5 : 5)
  }
  const only = new Registry()
  new Counter({ name: 'only_here_total', help: 'o', registers: [only] }).inc(3)
  const text = await mergeExposition(await Promise.all([...regs, only].map((r) => r.getMetricsAsJSON())))
  t.match(text, /^x_total\{listener="a"\} 3$/m, 'counters add up')
  t.match(text, /^x_total\{listener="q\\"uote\\\\\\\\"\} 20$/m, 'label values escaped')
  t.match(text, /^g 12$/m, 'gauges add up')
  t.match(text, /^# HELP g g\\nline$/m, 'help escaped')
  t.match(text, /^h_bucket\{le="1"\} 1$/m)
  t.match(text, /^h_bucket\{le="10"\} 2$/m)
  t.match(text, /^h_bucket\{le="\+Inf"\} 2$/m)
  t.match(text, /^h_count 2$/m)
  t.match(text, /^only_here_total 3$/m, 'a metric of one source only')
  t.equal((text.match(/^# TYPE x_total counter$/gm) ?? []).length, 1, 'one HELP/TYPE per metric')
})

t.test('a large exposition yields to the event loop while it is built', async (t) => {
  const r = new Registry()
  const g = new Gauge({ name: 'big', help: 'b', labelNames: ['backend'], registers: [r] })
  for (let i = 0; i < 50_000; i++) g.set({ backend: `10.0.${i >> 8}.${i & 255}:5432` }, i)
  const json = await r.getMetricsAsJSON()
  // The gaps between turns of a timer that asks to run as often as it can. The merge works in
  // slices of about a millisecond, so most gaps are that short; a garbage collection or the
  // scheduler on a busy machine can still stretch any single one, so the figures asserted are
  // the number of turns, the typical (median) gap and the longest gap's share of the whole
  // merge, which noise on a few turns cannot move, but a merge that keeps the loop in long
  // slices (or in one piece) does.
  const gaps: number[] = []
  let last = performance.now()
  const timer = setInterval(() => {
    const now = performance.now()
    gaps.push(now - last)
    last = now
  }, 0)
  const started = performance.now()
  last = started
  const text = await mergeExposition([json, json])
  const took = performance.now() - started
  gaps.push(performance.now() - last)
  clearInterval(timer)
  t.equal(text.split('\n').filter((l) => l.startsWith('big{')).length, 50_000)
  t.match(text, /^big\{backend="10\.0\.0\.7:5432"\} 14$/m, 'two sources of the same series summed')
  const sorted = [...gaps].sort((a, b) => a - b)
  const median = sorted[Math.floor(sorted.length / 2)] ?? Infinity
  const longest = sorted.at(-1) ?? Infinity
  t.ok(gaps.length > 50, `timers ran ${gaps.length} times in the ${took.toFixed(0)} ms it worked`)
  t.ok(median < 10, `the median gap between timer turns was ${median.toFixed(1)} ms`)
  t.ok(longest < took / 2, `the longest gap, ${longest.toFixed(1)} ms, is under half of the ${took.toFixed(0)} ms the merge took`)
})
