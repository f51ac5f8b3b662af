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
  let ticks = 0
  let longest = 0
  let last = performance.now()
  const timer = setInterval(() => {
    const now = performance.now()
    longest = Math.max(longest, now - last)
    last = now
    ticks++
  }, 0)
  last = performance.now()
  const text = await mergeExposition([json, json])
  clearInterval(timer)
  t.equal(text.split('\n').filter((l) => l.startsWith('big{')).length, 50_000)
  t.match(text, /^big\{backend="10\.0\.0\.7:5432"\} 14$/m, 'two sources of the same series summed')
  t.ok(ticks > 5, `timers ran ${ticks} times while it worked`)
  t.ok(longest < 50, `the longest gap between timer turns was ${longest.toFixed(1)} ms`)
})
