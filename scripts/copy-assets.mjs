// Copies the non-TypeScript files the daemon reads at run time (the dashboard page) from
// src/ to dist/, keeping their paths. Run by `npm run build` after tsc.
import { copyFileSync, mkdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const ASSETS = ['admin/dashboard.html']

for (const rel of ASSETS) {
  const to = join(root, 'dist', rel)
  mkdirSync(dirname(to), { recursive: true })
  copyFileSync(join(root, 'src', rel), to)
}
