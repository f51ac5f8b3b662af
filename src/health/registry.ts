import type { ProbeFactory } from './probe.js'
import { tcpProbe } from './probes/tcp.js'
import { tlsProbe } from './probes/tls.js'
import { sendExpectProbe } from './probes/send-expect.js'
import { redisProbe } from './probes/redis.js'
import { postgresProbe } from './probes/postgres.js'
import { mysqlProbe } from './probes/mysql.js'
import { smtpProbe } from './probes/smtp.js'
import { imapProbe } from './probes/imap.js'
import { pop3Probe } from './probes/pop3.js'
import { dnsProbe } from './probes/dns.js'
import { httpProbe } from './probes/http.js'

/** Every health-check type, looked up by the name written in `health_check.type`. */
const PROBES: readonly ProbeFactory[] = [
  tcpProbe,
  tlsProbe,
  sendExpectProbe,
  redisProbe,
  postgresProbe,
  mysqlProbe,
  smtpProbe,
  imapProbe,
  pop3Probe,
  dnsProbe,
  httpProbe,
] as ProbeFactory[]

export function probeTypes(): string[] {
  return PROBES.map((p) => p.type)
}

export function findProbe(type: string): ProbeFactory | undefined {
  return PROBES.find((p) => p.type === type)
}

/** Type-specific keys, with the types that read each. */
export function probeOptionKeys(): Map<string, string[]> {
  const out = new Map<string, string[]>()
  for (const p of PROBES) for (const k of p.optionKeys) out.set(k, [...(out.get(k) ?? []), p.type])
  return out
}
