import { Counter, Gauge, collectDefaultMetrics, type Registry } from 'prom-client'

/** Summed by the control plane from the workers' stats snapshots (daemon.ts metricsText). */
export const BACKEND_CONNECTIONS_TOTAL = 'sluice_backend_connections_total'

/**
 * Every metric sluice exports, registered on an injected Registry (so two daemons can share a
 * process in tests). Labels are bounded: listener, pool and backend names come from the
 * configuration; client addresses never become labels.
 */
export class Metrics {
  readonly connectionsActive: Gauge<'listener'>
  readonly connectionsTotal: Counter<'listener'>
  readonly bytesTotal: Counter<'listener' | 'direction'>
  readonly backendConnectionsActive: Gauge<'pool' | 'backend'>
  readonly backendConnectionsTotal: Counter<'pool' | 'backend'>
  readonly backendUp: Gauge<'pool' | 'backend'>
  readonly connectErrorsTotal: Counter<'pool' | 'backend' | 'reason'>
  readonly rejectedConnectionsTotal: Counter<'listener' | 'reason'>
  readonly configReloadsTotal: Counter<'result'>
  readonly udpSessionsActive: Gauge<'listener'>
  readonly udpDatagramsTotal: Counter<'listener' | 'direction'>
  readonly udpUpstreamSocketsTotal: Counter<'listener' | 'outcome'>
  readonly udpUpstreamSocketsIdle: Gauge<'listener'>
  readonly udpLateRepliesTotal: Counter<'listener'>
  readonly dnsDroppedTotal: Counter<'listener' | 'reason'>
  readonly workerRestartsTotal: Counter<string>
  readonly healthChecksTotal: Counter<'pool' | 'backend' | 'result'>
  readonly backendEjectionsTotal: Counter<'pool' | 'backend'>
  readonly discoveryUpdatesTotal: Counter<'pool' | 'source' | 'result'>
  readonly discoveryBackends: Gauge<'pool' | 'source'>
  readonly membershipChangesTotal: Counter<'pool' | 'source'>
  readonly resourceExhaustedTotal: Counter<'resource' | 'listener'>
  readonly udpDroppedDatagramsTotal: Counter<'listener' | 'reason'>
  readonly sourceTableFullTotal: Counter<'listener' | 'table'>
  readonly queueLength: Gauge<'pool'>

  constructor(
    readonly registry: Registry,
    onCollect: () => void = () => {},
    /** Process metrics (CPU, memory, event-loop lag, descriptors): once per process, so not in a worker's registry. */
    processMetrics = true,
  ) {
    const registers = [registry]
    if (processMetrics && registry.getSingleMetric('process_cpu_seconds_total') === undefined) collectDefaultMetrics({ register: registry })
    // The data path keeps plain counters; `onCollect` copies them into these metrics when
    // /metrics is read. It hangs on the first of sluice's metrics, so every later one is
    // up to date when it is written out.
    this.connectionsActive = new Gauge({
      name: 'sluice_connections_active',
      help: 'Client connections open on a listener now.',
      labelNames: ['listener'],
      registers,
      collect: onCollect,
    })
    this.connectionsTotal = new Counter({
      name: 'sluice_connections_total',
      help: 'Client connections accepted by a listener.',
      labelNames: ['listener'],
      registers,
    })
    this.bytesTotal = new Counter({
      name: 'sluice_bytes_total',
      help: 'Bytes relayed; direction "in" is client to backend, "out" is backend to client.',
      labelNames: ['listener', 'direction'],
      registers,
    })
    this.backendConnectionsActive = new Gauge({
      name: 'sluice_backend_connections_active',
      help: 'Connections open or being opened to a backend now.',
      labelNames: ['pool', 'backend'],
      registers,
    })
    this.backendConnectionsTotal = new Counter({
      name: BACKEND_CONNECTIONS_TOTAL,
      help: 'Connections established to a backend.',
      labelNames: ['pool', 'backend'],
      registers,
    })
    this.backendUp = new Gauge({
      name: 'sluice_backend_up',
      help: '1 when the backend is up (in rotation), 0 when down, draining or disabled.',
      labelNames: ['pool', 'backend'],
      registers,
    })
    this.connectErrorsTotal = new Counter({
      name: 'sluice_connect_errors_total',
      help: 'Failed connects to a backend, by reason (refused, timeout, unreachable, other).',
      labelNames: ['pool', 'backend', 'reason'],
      registers,
    })
    this.rejectedConnectionsTotal = new Counter({
      name: 'sluice_rejected_connections_total',
      help: 'Client connections closed without being proxied, by reason (max_connections, no_backend, connect_failed, bad_proxy_header, proxy_untrusted, bad_client_hello, tls_handshake, handshake_timeout).',
      labelNames: ['listener', 'reason'],
      registers,
    })
    this.healthChecksTotal = new Counter({
      name: 'sluice_health_checks_total',
      help: 'Active health-check probes of a backend, by result (success, failure).',
      labelNames: ['pool', 'backend', 'result'],
      registers,
    })
    this.backendEjectionsTotal = new Counter({
      name: 'sluice_backend_ejections_total',
      help: 'Times a backend was ejected by passive health checking (passive.max_failures consecutive connect failures).',
      labelNames: ['pool', 'backend'],
      registers,
    })
    this.configReloadsTotal = new Counter({
      name: 'sluice_config_reloads_total',
      help: 'Configuration reloads, by result (success, failure, refused: asked while stopping).',
      labelNames: ['result'],
      registers,
    })
    // UDP listeners count in plain numbers on the data path and add them here when scraped.
    this.udpSessionsActive = new Gauge({
      name: 'sluice_udp_sessions_active',
      help: 'UDP sessions (one per client address:port) held by a listener now.',
      labelNames: ['listener'],
      registers,
    })
    this.udpDatagramsTotal = new Counter({
      name: 'sluice_udp_datagrams_total',
      help: 'UDP datagrams relayed; direction "in" is client to backend, "out" is backend to client.',
      labelNames: ['listener', 'direction'],
      registers,
    })
    this.udpUpstreamSocketsTotal = new Counter({
      name: 'sluice_udp_upstream_sockets_total',
      help: 'Upstream sockets UDP sessions started on, by outcome: created (a new socket connected to the backend) or reused (an idle connected socket a finished session left, udp.reuse_sockets).',
      labelNames: ['listener', 'outcome'],
      registers,
    })
    this.udpUpstreamSocketsIdle = new Gauge({
      name: 'sluice_udp_upstream_sockets_idle',
      help: 'Idle connected upstream sockets a UDP listener holds for its next sessions (udp.reuse_sockets per backend).',
      labelNames: ['listener'],
      registers,
    })
    this.udpLateRepliesTotal = new Counter({
      name: 'sluice_udp_late_replies_total',
      help: 'UDP replies a backend sent to an idle upstream socket, after the session\'s udp.responses replies were all in: dropped, and the socket closed instead of reused.',
      labelNames: ['listener'],
      registers,
    })
    this.workerRestartsTotal = new Counter({
      name: 'sluice_worker_restarts_total',
      help: 'Data-plane worker threads that died and were started again (their open connections were lost).',
      registers,
    })
    this.discoveryUpdatesTotal = new Counter({
      name: 'sluice_discovery_updates_total',
      help: 'Attempts of a discovery source (dns, file, etcd) or run-time change (admin) to give a pool its backends, by result (success, failure: the last good set stays).',
      labelNames: ['pool', 'source', 'result'],
      registers,
    })
    this.discoveryBackends = new Gauge({
      name: 'sluice_discovery_backends',
      help: 'Backends in the last good set of a discovery source.',
      labelNames: ['pool', 'source'],
      registers,
    })
    this.membershipChangesTotal = new Counter({
      name: 'sluice_membership_changes_total',
      help: 'Changes of a pool\'s backends (added, removed, settings) applied as one diff, by the source that caused them (dns, file, etcd, admin, reload).',
      labelNames: ['pool', 'source'],
      registers,
    })
    this.resourceExhaustedTotal = new Counter({
      name: 'sluice_resource_exhausted_total',
      help: 'Times sluice ran out of its own resources, by resource: fd (EMFILE, ENFILE, ENOBUFS, ENOMEM on accept, backend connect or UDP socket; accepting pauses) or udp_sessions (a datagram from a new client found udp.max_sessions full).',
      labelNames: ['resource', 'listener'],
      registers,
    })
    this.dnsDroppedTotal = new Counter({
      name: 'sluice_dns_dropped_total',
      help: 'udp.mode dns: queries and answers dropped, by reason (malformed_query, malformed_answer, unmatched_answer, question_mismatch, timeout, ids_exhausted).',
      labelNames: ['listener', 'reason'],
      registers,
    })
    // Per-source limits and the backend queue (docs/operations.md).
    this.udpDroppedDatagramsTotal = new Counter({
      name: 'sluice_udp_dropped_datagrams_total',
      help: 'UDP datagrams from clients dropped by access or limits, by reason (access_denied, source_connections, source_rate, source_datagrams).',
      labelNames: ['listener', 'reason'],
      registers,
    })
    this.sourceTableFullTotal = new Counter({
      name: 'sluice_source_table_full_total',
      help: 'New client addresses admitted without their per-source limit because the shared per-source table (connections or rates) had no free entry.',
      labelNames: ['listener', 'table'],
      registers,
    })
    this.queueLength = new Gauge({
      name: 'sluice_queue_length',
      help: 'Connections waiting in a pool\'s queue for a backend slot (every usable backend at max_connections).',
      labelNames: ['pool'],
      registers,
    })
  }
}
