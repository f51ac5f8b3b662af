import { readFileSync } from 'node:fs'
import type { ConfigReader, MapView } from '../../config/reader.js'
import { errnoCode, errorMessage } from '../../errors.js'

/** A database check that logs in (`user`), rather than only reading the server's first answer. */
export interface LoginOptions {
  user: string
  /** The database to connect to; undefined: the server's default (PostgreSQL: the user's name). */
  database: string | undefined
  /** Undefined: no password (the server may still accept, e.g. `trust`). */
  password: string | undefined
  /** Where the password came from, for messages (undefined when written inline or absent). */
  passwordFile: string | undefined
}

/** The keys of a login check, shared by `postgres` and `mysql`. */
export const LOGIN_KEYS = ['user', 'database', 'password', 'password_file'] as const

/**
 * Reads `user`, `database`, `password` (with `${VAR}` expanded by the reader) and
 * `password_file` (read now, at load, one trailing newline dropped). No `user`: null, the
 * anonymous check; then the other keys are errors. Undefined when anything is wrong (reported).
 */
export function readLogin(m: MapView, reader: ConfigReader, context: string, type: string): LoginOptions | null | undefined {
  if (!m.has('user')) {
    let ok = true
    for (const key of ['database', 'password', 'password_file']) {
      if (!m.has(key)) continue
      reader.report(m.keyAt(key), `${context}: "${key}" needs "user" (a ${type} check logs in only when it has a user; without one it does not authenticate)`)
      ok = false
    }
    return ok ? null : undefined
  }
  const user = reader.string(m.get('user'), `${context} user`, { nonEmpty: true })
  const database = m.has('database') ? reader.string(m.get('database'), `${context} database`, { nonEmpty: true }) : undefined
  let password: string | undefined
  let passwordFile: string | undefined
  let ok = user !== undefined && (!m.has('database') || database !== undefined)
  if (m.has('password') && m.has('password_file')) {
    reader.report(m.keyAt('password_file'), `${context}: give either password or password_file, not both`)
    return undefined
  }
  if (m.has('password')) {
    password = reader.text(m.get('password'), `${context} password`)
    if (password === undefined) ok = false
  } else if (m.has('password_file')) {
    passwordFile = reader.string(m.get('password_file'), `${context} password_file`, { nonEmpty: true })
    if (passwordFile === undefined) return undefined
    try {
      password = readFileSync(passwordFile, 'utf8').replace(/\r?\n$/, '')
    } catch (err) {
      reader.report(m.get('password_file'), `${context} password_file: cannot read ${passwordFile}: ${errnoCode(err) ?? errorMessage(err)}`)
      return undefined
    }
    if (password === '') {
      reader.report(m.get('password_file'), `${context} password_file: ${passwordFile} is empty`)
      return undefined
    }
  }
  if (!ok || user === undefined) return undefined
  return { user, database, password, passwordFile }
}
