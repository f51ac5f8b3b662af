import type { ConfigReader, MapView } from '../../config/reader.js'
import { ProbeFailure, snippet, type ProbeFactory } from '../probe.js'
import { converse, type Conversation } from './conversation.js'

export interface SmtpProbeOptions {
  /** The name given in EHLO. */
  ehlo: string
}

/** Reads one SMTP reply (possibly several `250-` lines) and returns its code and last line. */
async function smtpReply(c: Conversation, what: string): Promise<{ code: string; text: string }> {
  for (let i = 0; i < 100; i++) {
    const line = await c.line(what)
    if (!/^\d{3}[ -]?/.test(line)) throw new ProbeFailure(`expected ${what}, got "${snippet(line)}"`)
    if (line[3] !== '-') return { code: line.slice(0, 3), text: line }
  }
  throw new ProbeFailure(`more than 100 lines in ${what}`)
}

/** `smtp`: a 220 banner, then EHLO → 250, then QUIT (not waited for). */
export const smtpProbe: ProbeFactory<SmtpProbeOptions> = {
  type: 'smtp',
  optionKeys: ['ehlo'],
  parseOptions(m: MapView, reader: ConfigReader, context: string) {
    if (!m.has('ehlo')) return { ehlo: 'localhost' }
    const ehlo = reader.string(m.get('ehlo'), `${context} ehlo`, { pattern: /^[A-Za-z0-9.\-[\]:]+$/, patternHint: 'must be a host name or address literal' })
    return ehlo === undefined ? undefined : { ehlo }
  },
  create: (o) => ({
    check: (target) =>
      converse(target, async (c) => {
        const banner = await smtpReply(c, 'the 220 banner')
        if (banner.code !== '220') throw new ProbeFailure(`expected a 220 banner, got "${snippet(banner.text)}"`)
        c.send(`EHLO ${o.ehlo}\r\n`)
        const ehlo = await smtpReply(c, 'the EHLO reply')
        if (ehlo.code !== '250') throw new ProbeFailure(`EHLO answered "${snippet(ehlo.text)}"`)
        c.send('QUIT\r\n')
        return `220 banner, EHLO 250`
      }),
  }),
}
