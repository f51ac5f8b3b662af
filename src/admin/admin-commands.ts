import { Option, type Command } from 'commander'
import { SluiceError } from '../errors.js'
import { AdminClient, DEFAULT_ADMIN_URL } from './admin-client.js'
import { BACKEND_ACTIONS, type BackendAction } from './backend-actions.js'
import { formatStatus } from './status-table.js'

interface Io {
  out: (line: string) => void
  err: (line: string) => void
}

interface AdminOpts {
  admin: string
  token?: string
}

/**
 * `sluice status`, `sluice backend drain|enable|disable POOL ADDRESS` and `sluice reload`:
 * thin commands over the admin API. `done` receives the exit code: 0 ok, 1 when the API is
 * unreachable or refuses, 2 for a bad --admin URL.
 */
export function addAdminCommands(program: Command, io: Io, done: (code: number) => void, env: NodeJS.ProcessEnv = process.env): void {
  const withAdmin = (c: Command): Command =>
    c
      .option('--admin <url>', 'the admin API of the running sluice', DEFAULT_ADMIN_URL)
      .addOption(new Option('--token <token>', 'bearer token of admin.token (default: $SLUICE_ADMIN_TOKEN)'))

  withAdmin(program.command('status').description('show listeners, pools and backends of a running sluice'))
    .option('--json', 'print the raw JSON of GET /api/status')
    .action(async (opts: AdminOpts & { json?: boolean }) => {
      done(await call(io, opts, env, async (c) => {
        const s = await c.status()
        io.out(opts.json === true ? JSON.stringify(s, null, 2) : formatStatus(s))
        return 0
      }))
    })

  const backend = program.command('backend').description('drain, enable or disable one backend of a pool')
  for (const action of BACKEND_ACTIONS) {
    withAdmin(backend.command(`${action} <pool> <address>`).description(DESCRIBE[action]))
      .action(async (pool: string, address: string, opts: AdminOpts) => {
        done(await call(io, opts, env, async (c) => {
          const r = await c.backend(pool, address, action)
          const change = r.previous_state === r.backend.state ? `was already ${r.backend.state}` : `${r.previous_state} -> ${r.backend.state}`
          io.out(`pool ${r.pool} backend ${r.backend.address}: ${change} (${r.backend.active_connections} active connection${r.backend.active_connections === 1 ? '' : 's'})`)
          return 0
        }))
      })
  }

  withAdmin(backend.command('add <pool> <address>').description('add a backend at run time (it takes traffic once its health check passes), or change its settings'))
    .option('--weight <n>', 'its weight (1-1000)')
    .option('--backup', 'a backup: used only when no other backend can take a connection')
    .option('--max-connections <n>', 'its max_connections (0: unlimited)')
    .action(async (pool: string, address: string, opts: AdminOpts & { weight?: string; backup?: boolean; maxConnections?: string }) => {
      const settings: { weight?: number; backup?: boolean; max_connections?: number } = {}
      for (const [flag, v, key] of [['--weight', opts.weight, 'weight'], ['--max-connections', opts.maxConnections, 'max_connections']] as const) {
        if (v === undefined) continue
        if (!/^\d+$/.test(v)) {
          io.err(`sluice: ${flag} ${v} is not a whole number`)
          done(2)
          return
        }
        settings[key] = Number(v)
      }
      if (opts.backup === true) settings.backup = true
      done(await call(io, opts, env, async (c) => {
        const r = await c.putBackend(pool, address, settings)
        io.out(`pool ${r.pool} backend ${r.address}: ${r.added === true ? 'added' : 'updated'} (weight ${r.weight}${r.backup ? ', backup' : ''}; ${r.state})`)
        return 0
      }))
    })

  withAdmin(backend.command('remove <pool> <address>').description('remove a backend at run time (its open connections finish)'))
    .action(async (pool: string, address: string, opts: AdminOpts) => {
      done(await call(io, opts, env, async (c) => {
        const r = await c.deleteBackend(pool, address)
        io.out(`pool ${r.pool} backend ${r.address}: removed (draining ${r.active_connections} active connection${r.active_connections === 1 ? '' : 's'})`)
        return 0
      }))
    })

  withAdmin(program.command('reload').description('re-read the configuration file of a running sluice (like SIGHUP)'))
    .action(async (opts: AdminOpts) => {
      done(await call(io, opts, env, async (c) => {
        const r = await c.reload()
        if (r.ok) {
          io.out(r.message)
          return 0
        }
        for (const p of r.problems) io.err(p)
        io.err(`sluice: reload refused: ${r.message}`)
        return 1
      }))
    })
}

const DESCRIBE: Readonly<Record<BackendAction, string>> = {
  drain: 'let open connections finish, send no new ones',
  enable: 'put the backend back in rotation',
  disable: 'take the backend out of rotation (open connections stay)',
}

async function call(io: Io, opts: AdminOpts, env: NodeJS.ProcessEnv, fn: (c: AdminClient) => Promise<number>): Promise<number> {
  let client: AdminClient
  try {
    const token = opts.token ?? (env.SLUICE_ADMIN_TOKEN !== undefined && env.SLUICE_ADMIN_TOKEN !== '' ? env.SLUICE_ADMIN_TOKEN : undefined)
    client = new AdminClient(opts.admin, token)
  } catch {
    io.err(`sluice: --admin ${opts.admin} is not a URL; write e.g. ${DEFAULT_ADMIN_URL}`)
    return 2
  }
  try {
    return await fn(client)
  } catch (err) {
    if (err instanceof SluiceError) {
      io.err(`sluice: ${err.message}`)
      return 1
    }
    throw err
  }
}
