import { watch, type FSWatcher } from 'node:fs'
import { readFile, stat } from 'node:fs/promises'
import { basename, dirname } from 'node:path'
import { LineCounter, parseDocument } from 'yaml'
import { ConfigReader } from '../../config/reader.js'
import { readBackends } from '../../config/validate.js'
import type { BackendConfig, FileDiscoveryConfig } from '../../config/types.js'
import { errnoCode, errorMessage } from '../../errors.js'
import type { DiscoverySource, SourceEvents } from './source.js'

/** How often the file is also looked at without a change event (a watch can miss one on some file systems). */
const POLL_MS = 2_000
/** Events of one write or rename come in bursts: read once they settle. */
const SETTLE_MS = 25

/**
 * `discovery.file`: a YAML or JSON list of backends in the shape of `backends`, watched. The
 * directory is watched (not the file), so a new file renamed over the old one is seen, and
 * the file is read whole each time: write the new list beside it and rename it into place.
 * A file that does not parse or is not a list of backends keeps the last good set; its
 * problems are reported as FILE:LINE:COL like the configuration's.
 */
export class FileSource implements DiscoverySource {
  readonly kind = 'file' as const
  private watcher: FSWatcher | undefined
  private poll: NodeJS.Timeout | undefined
  private settle: NodeJS.Timeout | undefined
  private closed = false
  private lastSeen = ''
  private reading: Promise<void> | undefined
  private again = false

  constructor(
    private readonly cfg: FileDiscoveryConfig,
    private readonly events: SourceEvents,
  ) {}

  async start(): Promise<void> {
    const dir = dirname(this.cfg.path)
    const name = basename(this.cfg.path)
    try {
      this.watcher = watch(dir, { persistent: false }, (_event, file) => {
        if (file === null || file === name) this.soon()
      })
      this.watcher.on('error', () => undefined)
    } catch {
      // A missing directory: polling still finds the file once it appears.
      this.watcher = undefined
    }
    this.poll = setInterval(() => void this.check(), POLL_MS)
    this.poll.unref()
    await this.read()
  }

  close(): void {
    this.closed = true
    this.watcher?.close()
    clearInterval(this.poll)
    clearTimeout(this.settle)
  }

  private soon(): void {
    if (this.closed) return
    clearTimeout(this.settle)
    this.settle = setTimeout(() => void this.read(), SETTLE_MS)
    this.settle.unref()
  }

  /** Reads the file again only when it looks different (inode, size, mtime). */
  private async check(): Promise<void> {
    try {
      const s = await stat(this.cfg.path)
      if (`${s.ino}:${s.size}:${s.mtimeMs}` !== this.lastSeen) await this.read()
    } catch {
      if (this.lastSeen !== 'missing') await this.read()
    }
  }

  /** One read at a time; a change seen during a read reads again after it. */
  private read(): Promise<void> {
    if (this.reading !== undefined) {
      this.again = true
      return this.reading
    }
    this.reading = this.readOnce().finally(() => {
      this.reading = undefined
      if (this.again && !this.closed) {
        this.again = false
        void this.read()
      }
    })
    return this.reading
  }

  private async readOnce(): Promise<void> {
    const path = this.cfg.path
    let text: string
    try {
      const s = await stat(path)
      this.lastSeen = `${s.ino}:${s.size}:${s.mtimeMs}`
      text = await readFile(path, 'utf8')
    } catch (err) {
      this.lastSeen = 'missing'
      if (this.closed) return
      const code = errnoCode(err)
      const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : code === 'EISDIR' ? 'it is a directory' : errorMessage(err)
      this.events.failed(`${path}: cannot read the backends file: ${why}`, 'SLUICE_ERR_DISCOVERY_FILE')
      return
    }
    if (this.closed) return
    const parsed = parseBackendsFile(text, path)
    if (typeof parsed === 'string') this.events.failed(parsed, 'SLUICE_ERR_DISCOVERY_FILE')
    else this.events.set(parsed)
  }
}

/**
 * A backends file's text: the list, or every problem as `FILE:LINE:COL: message` lines (JSON
 * is YAML, so both parse here, with the configuration's own messages).
 */
export function parseBackendsFile(text: string, file: string): BackendConfig[] | string {
  const lines = new LineCounter()
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true, strict: true })
  if (doc.errors.length > 0) {
    return doc.errors
      .map((e) => {
        const pos = e.linePos?.[0] ?? lines.linePos(e.pos[0])
        return `${file}:${pos.line}:${pos.col}: YAML syntax: ${(e.message.split('\n')[0] ?? e.message).replace(/ at line \d+, column \d+:?$/, '')}`
      })
      .join('\n')
  }
  const reader = new ConfigReader(file, lines, process.env)
  const at = reader.at(doc.contents ?? undefined, '')
  if (at.node === undefined) return `${file}:1:1: the backends file is empty; it must be a list of backends (address strings or mappings with address, weight, backup, max_connections)`
  const list = readBackends(reader, at, 'the backends file')
  if (list === undefined || reader.issues.length > 0) return reader.issues.map((i) => `${i.file}:${i.line}:${i.col}: ${i.message.replace('the backends file backends', 'the backends file')}`).join('\n')
  return list
}
