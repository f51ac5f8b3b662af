const UNITS: Readonly<Record<string, number>> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
}

/**
 * Parses a duration such as `250ms`, `5s`, `2m`, `1h`, `1d` or `1m30s` into milliseconds.
 * Returns a string describing the problem when the text is not a duration.
 */
export function parseDuration(text: string): number | string {
  const trimmed = text.trim()
  if (trimmed === '') return 'empty duration; write a number with a unit, e.g. 5s'
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/y
  let total = 0
  let pos = 0
  while (pos < trimmed.length) {
    re.lastIndex = pos
    const m = re.exec(trimmed)
    if (!m) {
      if (/^\d+(\.\d+)?$/.test(trimmed)) {
        return `duration "${text}" has no unit; write e.g. ${trimmed}s or ${trimmed}ms`
      }
      return `"${text}" is not a duration; use a number with a unit: ms, s, m, h or d (e.g. 250ms, 5s, 2m, 1h)`
    }
    total += Number(m[1]) * (UNITS[m[2] as string] ?? 0)
    pos = re.lastIndex
  }
  return Math.round(total)
}

/** Formats milliseconds the way an operator would write them (`1h`, `30s`, `250ms`). */
export function formatDuration(ms: number): string {
  if (ms === 0) return '0'
  for (const [unit, size] of [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1000]] as const) {
    if (ms % size === 0) return `${ms / size}${unit}`
  }
  return `${ms}ms`
}
