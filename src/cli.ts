import { Command, CommanderError } from 'commander'
import pino from 'pino'
import { loadConfig } from './config/load.js'
import { ConfigError, SluiceError, errorMessage } from './errors.js'
import { createLogger, finishableDestination } from './log.js'
import { Daemon } from './daemon.js'
import type { Config } from './config/types.js'
import { reloadFromFile } from './reload.js'
import { addAdminCommands } from './admin/admin-commands.js'

export const DEFAULT_CONFIG = '/etc/sluice/sluice.yaml'

/** Exit codes from CONTRACT.md. */
export const EXIT_OK = 0
export const EXIT_FAILURE = 1
export const EXIT_USAGE = 2

interface Io {
  out: (line: string) => void
  err: (line: string) => void
}

const stdio: Io = {
  out: (line) => process.stdout.write(line + '\n'),
  err: (line) => process.stderr.write(line + '\n'),
}

/** Runs the command line; resolves with the exit code for commands that finish. */
export async function main(argv: readonly string[], io: Io = stdio): Promise<number> {
  let code: number | undefined
  const program = new Command()
    .name('sluice')
    .description('A layer-4 TCP/UDP load balancer configured by one YAML file.')
    .version(await packageVersion(), '-V, --version')
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.out(s.trimEnd()), writeErr: (s) => io.err(s.trimEnd()) })
    .showSuggestionAfterError(true)

  program
    .command('run')
    .description('run the load balancer in the foreground')
    .option('-c, --config <file>', 'configuration file', DEFAULT_CONFIG)
    .action(async (opts: { config: string }) => {
      code = await run(opts.config, io)
    })

  program
    .command('check')
    .description('validate a configuration file without running it')
    .option('-c, --config <file>', 'configuration file', DEFAULT_CONFIG)
    .action((opts: { config: string }) => {
      code = check(opts.config, io)
    })

  addAdminCommands(program, io, (c) => (code = c))

  if (argv.length === 0) {
    program.outputHelp({ error: true })
    return EXIT_USAGE
  }
  try {
    await program.parseAsync([...argv], { from: 'user' })
  } catch (err) {
    if (err instanceof CommanderError) {
      const okCodes = ['commander.helpDisplayed', 'commander.version', 'commander.help']
      return okCodes.includes(err.code) ? EXIT_OK : EXIT_USAGE
    }
    throw err
  }
  return code ?? EXIT_USAGE
}

function check(file: string, io: Io): number {
  const config = readConfig(file, io)
  if (config === undefined) return EXIT_FAILURE
  const backends = [...config.pools.values()].reduce((n, p) => n + p.backends.length, 0)
  io.out(`${file}: OK (${plural(config.listeners.length, 'listener')}, ${plural(config.pools.size, 'pool')}, ${plural(backends, 'backend')})`)
  return EXIT_OK
}

function readConfig(file: string, io: Io): Config | undefined {
  try {
    return loadConfig(file)
  } catch (err) {
    if (err instanceof ConfigError) {
      io.err(err.format())
      io.err(`${file}: ${plural(err.issues.length, 'problem')}; nothing was started`)
      return undefined
    }
    if (err instanceof SluiceError) {
      io.err(`sluice: ${err.message}`)
      return undefined
    }
    throw err
  }
}

/**
 * Under `npm start`, a repeat of the first stop signal within this long is npm passing on the
 * signal the terminal also sent to sluice (Ctrl-C goes to the whole foreground job).
 */
const NPM_REPEAT_MS = 500

/** Runs the daemon until a signal stops it. Resolves with the exit code. */
async function run(file: string, io: Io): Promise<number> {
  const config = readConfig(file, io)
  if (config === undefined) return EXIT_FAILURE
  const stdout = finishableDestination(pino.destination({ dest: 1, sync: false }))
  const log = createLogger(config.log.level, stdout)
  let daemon: Daemon
  try {
    daemon = await Daemon.start(config, { log, threads: true, workerLines: (lines) => stdout.write(`${lines}\n`) })
  } catch (err) {
    const msg = err instanceof SluiceError ? err.message : errorMessage(err)
    log.error({ code: err instanceof SluiceError ? err.code : undefined }, msg)
    await stdout.finish()
    io.err(`sluice: ${msg}`)
    return EXIT_FAILURE
  }
  const underNpm = process.env.npm_lifecycle_event === 'start'
  if (underNpm) {
    // `npm start` stays the parent: it passes SIGINT and SIGTERM on, but a SIGHUP stops npm.
    log.info(
      { npm_pid: process.ppid },
      `started by npm start: send signals to this process (pid ${process.pid}), not to npm (pid ${process.ppid}); or reload with "sluice reload"`,
    )
  }
  return new Promise<number>((resolve) => {
    let first: { signal: NodeJS.Signals; at: number } | undefined
    const onStop = (signal: NodeJS.Signals): void => {
      if (first !== undefined) {
        if (underNpm && signal === first.signal && performance.now() - first.at < NPM_REPEAT_MS) {
          // A Ctrl-C reaches every process of the terminal's job, npm and sluice, and npm
          // passes its copy on: the same request, not a second one.
          first.at = -Infinity
          log.info({ signal }, `${signal} again from npm, which passes on the signal the terminal sent to both: the graceful stop goes on; send it again to exit now`)
          return
        }
        log.warn({ signal }, 'second stop signal: exiting now')
        daemon.destroy()
        resolve(EXIT_OK)
        return
      }
      first = { signal, at: performance.now() }
      log.info({ signal }, 'stop signal received')
      void daemon.stop().then(() => resolve(EXIT_OK))
    }
    process.on('SIGTERM', onStop)
    process.on('SIGINT', onStop)
    process.on('SIGHUP', () => void reloadFromFile(daemon, file, 'signal'))
  }).finally(() => stdout.finish())
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`
}

async function packageVersion(): Promise<string> {
  const { readFile } = await import('node:fs/promises')
  const pkg = JSON.parse(await readFile(new URL('../package.json', import.meta.url), 'utf8')) as { version?: string }
  return pkg.version ?? '0.0.0'
}
