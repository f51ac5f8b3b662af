#!/usr/bin/env node
import { main } from './cli.js'

process.on('uncaughtException', (err) => {
  // Per-connection errors are handled where they happen; anything here is a bug. Exit so
  // the service manager restarts a clean process rather than run in an unknown state.
  process.stderr.write(`sluice: internal error: ${err.stack ?? String(err)}\n`)
  process.exit(70)
})

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`sluice: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`)
    process.exit(1)
  },
)
