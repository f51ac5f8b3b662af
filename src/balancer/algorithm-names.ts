import { closest, type ConfigReader, type Located } from '../config/reader.js'
import { balancerNames, findBalancer } from './registry.js'

/** What to write in sluice for a name another load balancer uses. */
interface Alias {
  algorithm: string
  /** A pool key the other name implies, written as YAML. */
  with?: string
  /** Whose name it is. */
  from: string
}

/**
 * Names that HAProxy, nginx, Envoy and IPVS give their algorithms, for the "did you mean" of
 * an unknown `algorithm:`. They are suggestions only: a pool accepts sluice's own names alone,
 * so one configuration never has two spellings of the same thing. Looked up without regard
 * to case; near misses of sluice's own names (`round_robin`) are found by edit distance.
 */
const ALIASES = new Map<string, Alias>([
  ['roundrobin', { algorithm: 'round-robin', from: "HAProxy's roundrobin" }],
  ['static-rr', { algorithm: 'round-robin', from: "HAProxy's static-rr" }],
  ['rr', { algorithm: 'round-robin', from: "IPVS's rr" }],
  ['wrr', { algorithm: 'round-robin', from: "IPVS's wrr; round-robin is weighted" }],
  ['weighted-round-robin', { algorithm: 'round-robin', from: 'round-robin is weighted' }],
  ['leastconn', { algorithm: 'least-connections', from: "HAProxy's leastconn" }],
  ['least_conn', { algorithm: 'least-connections', from: "nginx's least_conn" }],
  ['least-conn', { algorithm: 'least-connections', from: "nginx's least_conn" }],
  ['lc', { algorithm: 'least-connections', from: "IPVS's lc" }],
  ['wlc', { algorithm: 'least-connections', from: "IPVS's wlc; least-connections is weighted" }],
  ['least_request', { algorithm: 'power-of-two', from: "Envoy's LEAST_REQUEST, which draws two" }],
  ['least-request', { algorithm: 'power-of-two', from: "Envoy's LEAST_REQUEST, which draws two" }],
  ['p2c', { algorithm: 'power-of-two', from: 'the power of two choices' }],
  ['source', { algorithm: 'consistent-hash', with: 'hash_key: source-ip', from: "HAProxy's balance source" }],
  ['ip_hash', { algorithm: 'consistent-hash', with: 'hash_key: source-ip', from: "nginx's ip_hash" }],
  ['sh', { algorithm: 'consistent-hash', with: 'hash_key: source-ip', from: "IPVS's sh" }],
  ['hash', { algorithm: 'consistent-hash', from: "nginx's hash (consistent)" }],
  ['ring_hash', { algorithm: 'consistent-hash', from: "Envoy's RING_HASH" }],
  ['ring-hash', { algorithm: 'consistent-hash', from: "Envoy's RING_HASH" }],
  ['mh', { algorithm: 'maglev', from: "IPVS's mh" }],
  ['ewma', { algorithm: 'peak-ewma', from: "Finagle's and Linkerd's peak EWMA" }],
])

/** The "did you mean" for `name`, which is not an algorithm of sluice's, or undefined. */
export function algorithmSuggestion(name: string): string | undefined {
  const alias = ALIASES.get(name.toLowerCase())
  if (alias !== undefined) return `"${alias.algorithm}"${alias.with !== undefined ? ` with ${alias.with}` : ''} (${alias.from})`
  const near = closest(name, balancerNames())
  return near === undefined ? undefined : `"${near}"`
}

/** Reads a pool's `algorithm:`: one of sluice's names, or an issue with a suggestion. */
export function readAlgorithm(reader: ConfigReader, at: Located, context: string): string | undefined {
  const name = reader.text(at, context)
  if (name === undefined) return undefined
  if (findBalancer(name) !== undefined) return name
  const hint = algorithmSuggestion(name)
  reader.report(at, `${context} "${name}" is not one of ${balancerNames().join(', ')}${hint !== undefined ? `; did you mean ${hint}?` : ''}`)
  return undefined
}
