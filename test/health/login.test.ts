import t from 'tap'
import { constants, createHash, createHmac, generateKeyPairSync, pbkdf2Sync, privateDecrypt, randomBytes } from 'node:crypto'
import type { Socket } from 'node:net'
import { ScramClient, ScramKeyCache, saslPrep } from '../../src/health/probes/scram.js'
import { md5Password } from '../../src/health/probes/postgres-login.js'
import type { LoginOptions } from '../../src/health/probes/login-options.js'
import { closeJudge, probe } from './probe-helpers.js'

/**
 * Login-level `postgres` and `mysql` checks against servers written here from the protocol
 * documents: each verifies the password the way the real server does (from what it stores,
 * not by running the client's computation again), and says how the probe left.
 */

function login(user: string, password?: string, database?: string): LoginOptions {
  return { user, database, password, passwordFile: undefined }
}

// ---- PostgreSQL ----------------------------------------------------------------------------

function pgMessage(type: string, body: Buffer | string): Buffer {
  const b = typeof body === 'string' ? Buffer.from(body, 'utf8') : body
  const head = Buffer.alloc(5)
  head.write(type, 0, 'latin1')
  head.writeUInt32BE(4 + b.length, 1)
  return Buffer.concat([head, b])
}

function pgAuth(code: number, rest: Buffer | string = Buffer.alloc(0)): Buffer {
  const c = Buffer.alloc(4)
  c.writeUInt32BE(code)
  return pgMessage('R', Buffer.concat([c, typeof rest === 'string' ? Buffer.from(rest, 'utf8') : rest]))
}

function pgError(code: string, message: string): Buffer {
  return pgMessage('E', `SFATAL\0VFATAL\0C${code}\0M${message}\0\0`)
}

const READY = Buffer.concat([pgAuth(0), pgMessage('S', 'server_version\x0015.8\0'), pgMessage('K', Buffer.alloc(8)), pgMessage('Z', 'I')])

type PgAuth = 'trust' | 'password' | 'md5' | 'scram'

interface PgSeen {
  startup: Map<string, string>[]
  terminated: number
}

/**
 * A PostgreSQL server that authenticates `user`/`password` by `auth` (SCRAM from a stored
 * key, as the server keeps it), then sends `after` (default: ready) instead of ReadyForQuery
 * when given.
 */
async function pgServer(t: Parameters<typeof closeJudge>[0], auth: PgAuth, password: string, after?: Buffer): Promise<{ port: number; seen: PgSeen; resets: () => number; allClosed: () => Promise<void> }> {
  const seen: PgSeen = { startup: [], terminated: 0 }
  const salt = randomBytes(16)
  const salted = pbkdf2Sync(saslPrep(password), salt, 4096, 32, 'sha256')
  const storedKey = createHash('sha256').update(createHmac('sha256', salted).update('Client Key').digest()).digest()
  const serverKey = createHmac('sha256', salted).update('Server Key').digest()
  const judge = await closeJudge(t, (s: Socket) => {
    let buf = Buffer.alloc(0)
    let started = false
    let user = ''
    let md5Salt = randomBytes(4)
    let clientFirstBare = ''
    let serverFirst = ''
    let nonce = ''
    const ok = (): void => void s.write(after ?? READY)
    s.on('data', (c: Buffer) => {
      buf = Buffer.concat([buf, c])
      for (;;) {
        if (!started) {
          if (buf.length < 4 || buf.length < buf.readUInt32BE(0)) return
          const len = buf.readUInt32BE(0)
          const parts = buf.toString('utf8', 8, len).split('\0')
          const params = new Map<string, string>()
          for (let i = 0; i + 1 < parts.length; i += 2) if (parts[i] !== '') params.set(parts[i] as string, parts[i + 1] as string)
          seen.startup.push(params)
          user = params.get('user') ?? ''
          buf = buf.subarray(len)
          started = true
          if (auth === 'trust') ok()
          else if (auth === 'password') s.write(pgAuth(3))
          else if (auth === 'md5') {
            md5Salt = randomBytes(4)
            s.write(pgAuth(5, md5Salt))
          } else s.write(pgAuth(10, 'SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0'))
          continue
        }
        if (buf.length < 5 || buf.length < 1 + buf.readUInt32BE(1)) return
        const type = String.fromCharCode(buf[0] as number)
        const body = buf.subarray(5, 1 + buf.readUInt32BE(1))
        buf = buf.subarray(1 + buf.readUInt32BE(1))
        if (type === 'X') {
          seen.terminated++
          continue
        }
        if (type !== 'p') continue
        if (auth === 'password') {
          if (body.toString('utf8', 0, body.length - 1) === password) ok()
          else s.end(pgError('28P01', `password authentication failed for user "${user}"`))
        } else if (auth === 'md5') {
          const want = `md5${createHash('md5').update(Buffer.concat([Buffer.from(createHash('md5').update(password + user).digest('hex')), md5Salt])).digest('hex')}`
          if (body.toString('latin1', 0, body.length - 1) === want) ok()
          else s.end(pgError('28P01', `password authentication failed for user "${user}"`))
        } else if (clientFirstBare === '') {
          const mech = body.toString('latin1', 0, body.indexOf(0))
          const data = body.subarray(body.indexOf(0) + 5).toString('utf8')
          if (mech !== 'SCRAM-SHA-256' || !data.startsWith('n,,')) {
            s.end(pgError('28000', 'bad SASL start'))
            return
          }
          clientFirstBare = data.slice(3)
          nonce = `${/r=([^,]+)/.exec(clientFirstBare)?.[1] ?? ''}${randomBytes(12).toString('base64')}`
          serverFirst = `r=${nonce},s=${salt.toString('base64')},i=4096`
          s.write(pgAuth(11, serverFirst))
        } else {
          const final = body.toString('utf8')
          const withoutProof = final.slice(0, final.lastIndexOf(',p='))
          const proof = Buffer.from(final.slice(final.lastIndexOf(',p=') + 3), 'base64')
          const authMessage = `${clientFirstBare},${serverFirst},${withoutProof}`
          const signature = createHmac('sha256', storedKey).update(authMessage).digest()
          const clientKey = Buffer.from(proof.map((b, i) => b ^ (signature[i] ?? 0)))
          if (withoutProof !== `c=biws,r=${nonce}` || !createHash('sha256').update(clientKey).digest().equals(storedKey)) {
            s.end(pgError('28P01', `password authentication failed for user "${user}"`))
            return
          }
          s.write(Buffer.concat([pgAuth(12, `v=${createHmac('sha256', serverKey).update(authMessage).digest('base64')}`), after ?? READY]))
        }
      }
    })
  })
  return { port: judge.port, seen, resets: judge.resets, allClosed: judge.allClosed }
}

t.test('scram: the RFC 7677 example', async (t) => {
  const c = new ScramClient(new ScramKeyCache('pencil'), 'rOprNGfwEbeRWgbNEkqO', 'user')
  t.equal(c.first(), 'n,,n=user,r=rOprNGfwEbeRWgbNEkqO')
  const final = await c.final('r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096')
  t.equal(final, 'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=')
  t.equal(c.verify('v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4='), true)
  t.equal(c.verify('v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4='), false, 'a wrong server signature is refused')
  await t.rejects(new ScramClient(new ScramKeyCache('x'), 'abc').final('r=xyz,s=AAAA,i=4096'), { name: 'ProbeFailure' }, 'a server nonce that does not extend ours')
  await t.rejects(new ScramClient(new ScramKeyCache('x'), 'abc').final('r=abcd,s=AAAA,i=100000000'), { name: 'ProbeFailure' }, 'an iteration count no check should pay for')
  t.equal(saslPrep('pass\u00a0word\u00ad'), 'pass word', 'SASLprep maps non-ASCII spaces and drops soft hyphens')
  t.equal(md5Password('u', 'p', Buffer.from([1, 2, 3, 4])), `md5${createHash('md5').update(Buffer.concat([Buffer.from(createHash('md5').update('pu').digest('hex')), Buffer.from([1, 2, 3, 4])])).digest('hex')}`)
})

t.test('postgres login: trust, cleartext, MD5 and SCRAM-SHA-256 reach ReadyForQuery, then Terminate', async (t) => {
  for (const auth of ['trust', 'password', 'md5', 'scram'] as const) {
    const srv = await pgServer(t, auth, 's3cret pässword')
    for (let i = 0; i < 3; i++) {
      const r = await probe('postgres', login('probe', 's3cret pässword', 'app'), srv.port)
      t.same(r, { ok: true, detail: 'logged in as probe (PostgreSQL 15.8)' }, auth)
    }
    await srv.allClosed()
    t.equal(srv.seen.terminated, 3, `${auth}: each probe said Terminate`)
    t.equal(srv.resets(), 0, `${auth}: and closed with a FIN`)
    t.same(Object.fromEntries(srv.seen.startup[0] ?? []), { user: 'probe', database: 'app', application_name: 'sluice-health-check' })
  }
})

t.test('postgres login: a wrong password, a missing one, and refusals fail with the server\'s words', async (t) => {
  for (const auth of ['password', 'md5', 'scram'] as const) {
    const srv = await pgServer(t, auth, 'right')
    t.same(await probe('postgres', login('probe', 'wrong'), srv.port), { ok: false, detail: 'server refused: FATAL 28P01 password authentication failed for user "probe"' }, auth)
    const none = await probe('postgres', login('probe'), srv.port)
    t.equal(none.ok, false)
    t.match(none.detail, /^the server asks for .* password and the check has none: set password or password_file$/)
  }
  const full = await pgServer(t, 'scram', 'pw', pgError('53300', 'remaining connection slots are reserved for non-replication superuser connections'))
  t.same(await probe('postgres', login('probe', 'pw'), full.port), { ok: false, detail: 'server refused: FATAL 53300 remaining connection slots are reserved for non-replication superuser connections' })
  const stopping = await pgServer(t, 'trust', '', pgError('57P03', 'the database system is shutting down'))
  t.same(await probe('postgres', login('probe'), stopping.port), { ok: false, detail: 'server refused: FATAL 57P03 the database system is shutting down' })
  // The anonymous check (no user) does not see any of this: the SSLRequest is answered anyway.
  t.equal(full.seen.startup.length, 1)
})

t.test('postgres login: an authentication method the check does not speak fails clearly', async (t) => {
  const srv = await closeJudge(t, (s) => s.once('data', () => s.write(pgAuth(7))))
  t.same(await probe('postgres', login('probe', 'pw'), srv.port), { ok: false, detail: 'the server asks for authentication method 7 (GSSAPI), which the check does not speak; use a password method for this user' })
})

// ---- MySQL / MariaDB -----------------------------------------------------------------------

function myPacket(seq: number, payload: Buffer): Buffer {
  const head = Buffer.alloc(4)
  head.writeUIntLE(payload.length, 0, 3)
  head[3] = seq
  return Buffer.concat([head, payload])
}

function greeting(plugin: string, nonce: Buffer): Buffer {
  const caps = 0x0000f7ff | (0x0008 << 16) | (0x0001 << 16) // PROTOCOL_41, SECURE_CONNECTION, PLUGIN_AUTH, CONNECT_WITH_DB, ...
  const fixed = Buffer.alloc(4 + 8 + 1 + 2 + 1 + 2 + 2 + 1 + 10)
  let at = 4
  nonce.copy(fixed, at, 0, 8)
  at += 9
  fixed.writeUInt16LE(caps & 0xffff, at)
  fixed[at + 2] = 0x2d
  fixed.writeUInt16LE(2, at + 3)
  fixed.writeUInt16LE(caps >>> 16, at + 5)
  fixed[at + 7] = 21
  return Buffer.concat([Buffer.from([10]), Buffer.from('10.11.19-MariaDB\0'), fixed, nonce.subarray(8), Buffer.from([0]), Buffer.from(`${plugin}\0`)])
}

const OK = Buffer.from([0, 0, 0, 2, 0, 0, 0])

function myError(code: number, state: string, message: string): Buffer {
  const c = Buffer.alloc(3)
  c[0] = 0xff
  c.writeUInt16LE(code, 1)
  return Buffer.concat([c, Buffer.from(`#${state}${message}`)])
}

const sha1 = (b: Buffer): Buffer => createHash('sha1').update(b).digest()
const sha256 = (b: Buffer): Buffer => createHash('sha256').update(b).digest()
const xor = (a: Buffer, b: Buffer): Buffer => Buffer.from(a.map((x, i) => x ^ (b[i] ?? 0)))

interface MySeen {
  users: string[]
  databases: (string | undefined)[]
  quits: number
}

/**
 * A MySQL server whose account `probe` uses `accountPlugin`, announced `serverPlugin` in its
 * greeting (an auth switch follows when they differ), and checks passwords from the hash it
 * stores. caching_sha2_password takes the fast path once `cached`, else the full one with RSA.
 */
async function myServer(t: Parameters<typeof closeJudge>[0], opts: { serverPlugin: string; accountPlugin: string; password: string; cached?: boolean; after?: Buffer }): Promise<{ port: number; seen: MySeen; resets: () => number; allClosed: () => Promise<void> }> {
  const seen: MySeen = { users: [], databases: [], quits: 0 }
  const stored1 = sha1(sha1(Buffer.from(opts.password)))
  const stored2 = sha256(sha256(Buffer.from(opts.password)))
  const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const judge = await closeJudge(t, (s) => {
    let nonce = Buffer.from(randomBytes(20).map((b) => (b === 0 ? 1 : b)))
    let buf = Buffer.alloc(0)
    let stage: 'response' | 'switched' | 'key-request' | 'rsa' | 'done' = 'response'
    s.write(myPacket(0, greeting(opts.serverPlugin, nonce)))
    const verify = (plugin: string, auth: Buffer): boolean => {
      if (plugin === 'mysql_native_password') return sha1(xor(auth, sha1(Buffer.concat([nonce, stored1])))).equals(stored1)
      return sha256(xor(auth, sha256(Buffer.concat([stored2, nonce])))).equals(stored2)
    }
    const judgeAuth = (seq: number, plugin: string, auth: Buffer): void => {
      if (plugin !== opts.accountPlugin) {
        nonce = Buffer.from(randomBytes(20).map((b) => (b === 0 ? 1 : b)))
        stage = 'switched'
        s.write(myPacket(seq, Buffer.concat([Buffer.from([0xfe]), Buffer.from(`${opts.accountPlugin}\0`), nonce, Buffer.from([0])])))
        return
      }
      if (!verify(plugin, auth)) {
        stage = 'done'
        s.write(myPacket(seq, myError(1045, '28000', `Access denied for user '${seen.users.at(-1)}'@'localhost' (using password: YES)`)))
        return
      }
      if (plugin === 'caching_sha2_password' && opts.cached !== true) {
        stage = 'key-request'
        s.write(myPacket(seq, Buffer.from([0x01, 0x04])))
        return
      }
      stage = 'done'
      const fast = plugin === 'caching_sha2_password' ? myPacket(seq, Buffer.from([0x01, 0x03])) : Buffer.alloc(0)
      s.write(Buffer.concat([fast, myPacket(seq + (fast.length > 0 ? 1 : 0), opts.after ?? OK)]))
    }
    s.on('data', (c: Buffer) => {
      buf = Buffer.concat([buf, c])
      while (buf.length >= 4 && buf.length >= 4 + buf.readUIntLE(0, 3)) {
        const len = buf.readUIntLE(0, 3)
        const seq = buf[3] as number
        const p = buf.subarray(4, 4 + len)
        buf = buf.subarray(4 + len)
        if (seq === 0 && p.length === 1 && p[0] === 0x01) {
          seen.quits++
          s.end()
          return
        }
        if (stage === 'response') {
          const flags = p.readUInt32LE(0)
          let at = 32
          const userEnd = p.indexOf(0, at)
          seen.users.push(p.toString('utf8', at, userEnd))
          at = userEnd + 1
          const authLen = p[at] as number
          const auth = p.subarray(at + 1, at + 1 + authLen)
          at += 1 + authLen
          let db: string | undefined
          if ((flags & 0x8) !== 0) {
            const e = p.indexOf(0, at)
            db = p.toString('utf8', at, e)
            at = e + 1
          }
          seen.databases.push(db)
          const plugin = p.toString('latin1', at, p.indexOf(0, at))
          judgeAuth(seq + 1, plugin, auth)
        } else if (stage === 'switched') {
          judgeAuth(seq + 1, opts.accountPlugin, p)
        } else if (stage === 'key-request') {
          if (p.length !== 1 || p[0] !== 0x02) throw new Error('expected a public key request')
          stage = 'rsa'
          s.write(myPacket(seq + 1, Buffer.concat([Buffer.from([0x01]), Buffer.from(publicKey.export({ type: 'spki', format: 'pem' }))])))
        } else if (stage === 'rsa') {
          const clear = privateDecrypt({ key: privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING }, p)
          const pw = Buffer.from(clear.map((b, i) => b ^ (nonce[i % nonce.length] ?? 0)))
          stage = 'done'
          s.write(myPacket(seq + 1, pw.equals(Buffer.from(`${opts.password}\0`)) ? OK : myError(1045, '28000', 'Access denied')))
        }
      }
    })
  })
  return { port: judge.port, seen, resets: judge.resets, allClosed: judge.allClosed }
}

t.test('mysql login: mysql_native_password and caching_sha2_password (fast and full), with an auth switch, then COM_QUIT', async (t) => {
  const cases = [
    { serverPlugin: 'mysql_native_password', accountPlugin: 'mysql_native_password' },
    { serverPlugin: 'caching_sha2_password', accountPlugin: 'caching_sha2_password', cached: true },
    { serverPlugin: 'caching_sha2_password', accountPlugin: 'caching_sha2_password', cached: false },
    { serverPlugin: 'caching_sha2_password', accountPlugin: 'mysql_native_password' },
    { serverPlugin: 'mysql_native_password', accountPlugin: 'caching_sha2_password', cached: true },
  ]
  for (const c of cases) {
    const name = `${c.serverPlugin} → ${c.accountPlugin}${c.cached === false ? ' (full)' : ''}`
    const srv = await myServer(t, { ...c, password: 'hunter2 ü' })
    t.same(await probe('mysql', login('probe', 'hunter2 ü', 'app'), srv.port), { ok: true, detail: 'logged in as probe (10.11.19-MariaDB)' }, name)
    t.same(await probe('mysql', login('probe', 'wrong'), srv.port), { ok: false, detail: "server refused: ERROR 1045 (28000): Access denied for user 'probe'@'localhost' (using password: YES)" }, `${name}: a wrong password`)
    await srv.allClosed()
    t.equal(srv.seen.quits, 1, `${name}: COM_QUIT after the OK`)
    t.same(srv.seen.users, ['probe', 'probe'])
    t.same(srv.seen.databases, ['app', undefined], 'the database is sent only when set')
    t.equal(srv.resets(), 0, `${name}: closed with a FIN`)
  }
})

t.test('mysql login: too many connections after the login, and plugins the check does not speak', async (t) => {
  const full = await myServer(t, { serverPlugin: 'mysql_native_password', accountPlugin: 'mysql_native_password', password: 'pw', after: myError(1040, '08004', 'Too many connections') })
  t.same(await probe('mysql', login('probe', 'pw'), full.port), { ok: false, detail: 'server refused: ERROR 1040 (08004): Too many connections' })
  t.same(await probe('mysql', null, full.port), { ok: true, detail: 'greeting 10.11.19-MariaDB' }, 'the anonymous check sees a greeting and passes')
  const ed = await myServer(t, { serverPlugin: 'mysql_native_password', accountPlugin: 'client_ed25519', password: 'pw' })
  t.same(await probe('mysql', login('probe', 'pw'), ed.port), { ok: false, detail: 'the server asks for authentication plugin client_ed25519; the check speaks mysql_native_password and caching_sha2_password' })
})
