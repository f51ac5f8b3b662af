import { stat } from 'node:fs/promises'

/**
 * Polls a few files (certificates, keys, CA bundles) every `intervalMs` and calls `onChange`
 * once when any of them changed (modification time, size or inode — so a file replaced by a
 * rename, as certbot and Kubernetes secrets do, counts). Polling rather than fs.watch: a
 * watch on a file is lost when the file is replaced, and certificates change rarely.
 * A change that fails to load is not retried until the files change again.
 */
export class TlsFileWatch {
  private readonly timer: NodeJS.Timeout
  private last: string | undefined
  private busy = false
  private closed = false

  constructor(
    private readonly files: readonly string[],
    intervalMs: number,
    private readonly onChange: () => void,
  ) {
    void this.signature().then((s) => {
      this.last ??= s
    })
    this.timer = setInterval(() => void this.tick(), intervalMs)
    this.timer.unref()
  }

  close(): void {
    this.closed = true
    clearInterval(this.timer)
  }

  private async tick(): Promise<void> {
    if (this.busy || this.closed) return
    this.busy = true
    try {
      const now = await this.signature()
      if (this.closed) return
      if (this.last === undefined) {
        this.last = now
        return
      }
      if (now !== this.last) {
        this.last = now
        this.onChange()
      }
    } finally {
      this.busy = false
    }
  }

  private async signature(): Promise<string> {
    const parts: string[] = []
    for (const f of this.files) {
      try {
        const s = await stat(f)
        parts.push(`${s.ino}:${s.size}:${s.mtimeMs}`)
      } catch {
        parts.push('missing')
      }
    }
    return parts.join('|')
  }
}
