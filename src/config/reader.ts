import { isMap, isScalar, isSeq, type LineCounter, type Node, type Pair, type YAMLMap } from 'yaml'
import type { ConfigIssue } from '../errors.js'
import { parseDuration } from './duration.js'
import { parseAddress, type HostPort } from './address.js'

/**
 * Reads a parsed YAML document node by node, collecting every problem with its line and
 * column instead of stopping at the first. Each reader returns `undefined` for a value it
 * could not accept, after recording why.
 */
export class ConfigReader {
  readonly issues: ConfigIssue[] = []

  constructor(
    readonly file: string,
    private readonly lines: LineCounter,
    private readonly env: NodeJS.ProcessEnv,
  ) {}

  report(at: Located, message: string): void {
    const offset = at.node?.range?.[0] ?? at.fallbackOffset
    const pos = this.lines.linePos(offset)
    this.issues.push({ file: this.file, line: pos.line, col: pos.col, path: at.path, message })
  }

  /** A value node, or the place where a missing one would go. */
  at(node: Node | null | undefined, path: string, fallbackOffset = 0): Located {
    return { node: node ?? undefined, path, fallbackOffset }
  }

  /**
   * Reads a mapping, reporting every key that is not in `allowed` (with a suggestion).
   * `allowed` null: the keys are names chosen by the operator (e.g. pool names).
   */
  map(at: Located, allowed: readonly string[] | null, context: string): MapView | undefined {
    if (!isMap(at.node)) {
      this.report(at, `${context} must be a mapping of keys to values, not ${describe(at.node)}`)
      return undefined
    }
    const view = new MapView(this, at.node, at.path)
    for (const pair of at.node.items) {
      const key = keyText(pair)
      const keyAt = this.at(pair.key as Node | null, joinPath(at.path, key ?? '?'), at.node.range?.[0] ?? 0)
      if (key === undefined) {
        this.report(keyAt, `keys in ${context} must be plain strings`)
      } else if (allowed !== null && !allowed.includes(key)) {
        const near = closest(key, allowed)
        const hint = near ? `; did you mean "${near}"?` : `; known keys: ${allowed.join(', ')}`
        this.report(keyAt, `unknown key "${key}" in ${context}${hint}`)
      }
    }
    return view
  }

  /** The items of a sequence, each with its own location. */
  seq(at: Located, context: string): Located[] | undefined {
    if (!isSeq(at.node)) {
      this.report(at, `${context} must be a list, not ${describe(at.node)}`)
      return undefined
    }
    return at.node.items.map((item, i) => this.at(item as Node | null, `${at.path}[${i}]`, at.node?.range?.[0] ?? 0))
  }

  /** A scalar's text after `${VAR}` / `${VAR:-default}` expansion from the environment. */
  text(at: Located, context: string): string | undefined {
    if (!isScalar(at.node) || at.node.value === null) {
      this.report(at, `${context} must be a single value, not ${describe(at.node)}`)
      return undefined
    }
    const raw = at.node.value
    if (typeof raw !== 'string') return String(raw)
    let missing: string | undefined
    const expanded = raw.replace(/\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g, (_m, name: string, dflt?: string) => {
      const v = this.env[name]
      if (v !== undefined && v !== '') return v
      if (dflt !== undefined) return dflt
      missing ??= name
      return ''
    })
    if (missing !== undefined) {
      this.report(at, `environment variable ${missing} is not set (used in ${context}); set it, or write \${${missing}:-default}`)
      return undefined
    }
    return expanded
  }

  string(at: Located, context: string, opts: { nonEmpty?: boolean; pattern?: RegExp; patternHint?: string } = {}): string | undefined {
    const t = this.text(at, context)
    if (t === undefined) return undefined
    if (opts.nonEmpty && t.trim() === '') {
      this.report(at, `${context} must not be empty`)
      return undefined
    }
    if (opts.pattern && !opts.pattern.test(t)) {
      this.report(at, `${context} "${t}" ${opts.patternHint ?? 'has the wrong form'}`)
      return undefined
    }
    return t
  }

  int(at: Located, context: string, min: number, max: number): number | undefined {
    const t = this.text(at, context)
    if (t === undefined) return undefined
    if (!/^-?\d+$/.test(t.trim())) {
      this.report(at, `${context} must be a whole number, not "${t}"`)
      return undefined
    }
    return this.inRange(at, context, Number(t), String(Number(t)), min, max)
  }

  /** A decimal number such as 1.25, from `min` to `max`. */
  decimal(at: Located, context: string, min: number, max: number): number | undefined {
    const t = this.text(at, context)
    if (t === undefined) return undefined
    if (!/^\d+(\.\d+)?$/.test(t.trim())) {
      this.report(at, `${context} must be a number such as 1.25, not "${t}"`)
      return undefined
    }
    return this.inRange(at, context, Number(t), t, min, max)
  }

  private inRange(at: Located, context: string, n: number, written: string, min: number, max: number): number | undefined {
    if (n >= min && n <= max) return n
    this.report(at, `${context} is ${written}; it must be from ${min} to ${max}`)
    return undefined
  }

  bool(at: Located, context: string): boolean | undefined {
    const node = at.node
    if (isScalar(node) && typeof node.value === 'boolean') return node.value
    const t = this.text(at, context)
    if (t === 'true') return true
    if (t === 'false') return false
    if (t !== undefined) this.report(at, `${context} must be true or false, not "${t}"`)
    return undefined
  }

  oneOf<T extends string>(at: Located, context: string, choices: readonly T[]): T | undefined {
    const t = this.text(at, context)
    if (t === undefined) return undefined
    if ((choices as readonly string[]).includes(t)) return t as T
    const near = closest(t, choices)
    this.report(at, `${context} "${t}" is not one of ${choices.join(', ')}${near ? `; did you mean "${near}"?` : ''}`)
    return undefined
  }

  /** A duration in milliseconds; `allowOff` also accepts `0` and `off` (returned as 0). */
  duration(at: Located, context: string, opts: { allowOff?: boolean; minMs?: number } = {}): number | undefined {
    const t = this.text(at, context)
    if (t === undefined) return undefined
    if (opts.allowOff && (t === '0' || t === 'off')) return 0
    const ms = parseDuration(t)
    if (typeof ms === 'string') {
      this.report(at, `${context}: ${ms}${opts.allowOff ? ' (or off)' : ''}`)
      return undefined
    }
    const min = opts.minMs ?? 1
    if (ms < min) {
      this.report(at, `${context} is ${t}; it must be at least ${min}ms${opts.allowOff ? ' (write off to disable it)' : ''}`)
      return undefined
    }
    return ms
  }

  address(at: Located, context: string, forListener: boolean): HostPort | undefined {
    const t = this.text(at, context)
    if (t === undefined) return undefined
    const a = parseAddress(t, forListener)
    if (typeof a === 'string') {
      this.report(at, `${context}: ${a}`)
      return undefined
    }
    return a
  }
}

export interface Located {
  node: Node | undefined
  path: string
  /** Where to point when the node is missing: the start of the enclosing mapping. */
  fallbackOffset: number
}

/** A YAML mapping whose keys were checked; `get` locates a child or the map itself. */
export class MapView {
  constructor(
    private readonly reader: ConfigReader,
    readonly node: YAMLMap,
    readonly path: string,
  ) {}

  has(key: string): boolean {
    return this.pair(key) !== undefined
  }

  get(key: string): Located {
    const pair = this.pair(key)
    const value = pair?.value as Node | null | undefined
    const start = this.node.range?.[0] ?? 0
    // A key written with no value (`key:`) points at the key itself.
    const fallback = (pair?.key as Node | undefined)?.range?.[0] ?? start
    return this.reader.at(value, joinPath(this.path, key), fallback)
  }

  /** Reports a missing key at the start of this mapping. Returns false when absent. */
  require(key: string, context: string): boolean {
    if (this.has(key)) return true
    this.reader.report(this.reader.at(this.node, this.path), `${context} is missing the required key "${key}"`)
    return false
  }

  /** The located key node itself, for problems about the key (e.g. a duplicate name). */
  keyAt(key: string): Located {
    const pair = this.pair(key)
    return this.reader.at(pair?.key as Node | undefined, joinPath(this.path, key), this.node.range?.[0] ?? 0)
  }

  keys(): string[] {
    const out: string[] = []
    for (const p of this.node.items) {
      const k = keyText(p)
      if (k !== undefined) out.push(k)
    }
    return out
  }

  private pair(key: string): Pair | undefined {
    return this.node.items.find((p) => keyText(p) === key)
  }
}

function keyText(pair: Pair): string | undefined {
  const k = pair.key
  if (isScalar(k) && (typeof k.value === 'string' || typeof k.value === 'number')) return String(k.value)
  return undefined
}

function joinPath(base: string, key: string): string {
  return base === '' ? key : `${base}.${key}`
}

function describe(node: Node | undefined): string {
  if (node === undefined) return 'nothing'
  if (isMap(node)) return 'a mapping'
  if (isSeq(node)) return 'a list'
  if (isScalar(node)) return node.value === null ? 'an empty value' : `"${String(node.value)}"`
  return 'an alias'
}

/** The allowed word nearest to `word`, if it is a plausible typo (edit distance ≤ 2). */
export function closest(word: string, choices: readonly string[]): string | undefined {
  let best: string | undefined
  let bestD = 3
  for (const c of choices) {
    const d = editDistance(word.toLowerCase(), c.toLowerCase())
    if (d < bestD) {
      bestD = d
      best = c
    }
  }
  return best
}

function editDistance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, i) => i)
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0] as number
    prev[0] = i
    for (let j = 1; j <= b.length; j++) {
      const up = prev[j] as number
      prev[j] = Math.min(up + 1, (prev[j - 1] as number) + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1))
      diag = up
    }
  }
  return prev[b.length] as number
}
