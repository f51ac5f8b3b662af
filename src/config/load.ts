import { readFileSync } from 'node:fs'
import { LineCounter, parseDocument } from 'yaml'
import { ConfigError, SluiceError, errnoCode, errorMessage, type ConfigIssue } from '../errors.js'
import { ConfigReader } from './reader.js'
import { validate } from './validate.js'
import type { Config } from './types.js'

/**
 * Parses and validates configuration text. Throws ConfigError with every problem found, each
 * located at its YAML node; returns a fully normalized Config otherwise.
 */
export function parseConfig(text: string, file: string, env: NodeJS.ProcessEnv = process.env): Config {
  const lines = new LineCounter()
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true, strict: true })
  if (doc.errors.length > 0) {
    const issues: ConfigIssue[] = doc.errors.map((e) => {
      const pos = e.linePos?.[0] ?? lines.linePos(e.pos[0])
      return { file, line: pos.line, col: pos.col, path: '', message: yamlMessage(e.code, e.message) }
    })
    throw new ConfigError(issues)
  }
  const reader = new ConfigReader(file, lines, env)
  const config = validate(doc, reader)
  if (config === undefined || reader.issues.length > 0) {
    const sorted = [...reader.issues].sort((a, b) => a.line - b.line || a.col - b.col)
    throw new ConfigError(sorted)
  }
  config.source = { text, env: usedEnv(text, env) }
  return config
}

/** The variables `text` names (${NAME} or ${NAME:-default}) that `env` has: all a worker needs to expand it the same way. */
function usedEnv(text: string, env: NodeJS.ProcessEnv): Record<string, string> {
  const out: Record<string, string> = {}
  for (const m of text.matchAll(/\$\{([A-Za-z_][A-Za-z0-9_]*)/g)) {
    const name = m[1]!
    const v = env[name]
    if (v !== undefined) out[name] = v
  }
  return out
}

/** Reads FILE and parses it; an unreadable file is SLUICE_ERR_CONFIG_READ. */
export function loadConfig(file: string, env: NodeJS.ProcessEnv = process.env): Config {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    const code = errnoCode(err)
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : code === 'EISDIR' ? 'it is a directory' : errorMessage(err)
    throw new SluiceError('SLUICE_ERR_CONFIG_READ', `${file}: cannot read the configuration: ${why}`, { cause: err })
  }
  return parseConfig(text, file, env)
}

function yamlMessage(code: string, message: string): string {
  // The yaml library appends its own " at line L, column C" and a code excerpt; keep the sentence.
  const first = message.split('\n')[0] ?? message
  const plain = first.replace(/ at line \d+, column \d+:?$/, '')
  if (code === 'DUPLICATE_KEY') return `${plain}: this key appears twice in the same mapping`
  return `YAML syntax: ${plain}`
}
