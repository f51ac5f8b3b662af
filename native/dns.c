/*
 * The native DNS relay: udp.mode dns on an epoll thread of its own, with no JS call per query.
 *
 * One engine per listener. It reads queries from (a duplicate of) the listener's UDP socket
 * with recvmmsg(2), picks a backend by smooth weighted round-robin from the table JS pushes,
 * sends each query on one of a few connected sockets per backend (udp.upstream_sockets) with
 * its ID rewritten to slot + generation (as src/proxy/dns-relay.ts does), matches answers by
 * that ID and by the question's hash, gives them back their ID and sends them to their
 * clients with sendmmsg(2). Late, duplicated or spoofed answers, answers to another question
 * and queries unanswered within the timeout are dropped and counted. Counters are plain
 * 64-bit cells this thread alone writes; JS reads them (takeCounters) when the thread tells it
 * something changed (at most once per tick) and when /metrics is read.
 *
 * Buffers and per-slot tables are allocated when the engine starts or a backend joins; none
 * per query. Commands from JS go through a mutex-held queue and an eventfd.
 */
#define _GNU_SOURCE
#include <node_api.h>
#include "napi-util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define SLOT_BITS 12
#define SLOTS (1u << SLOT_BITS)
#define SLOT_MASK (SLOTS - 1)
#define BATCH 64
#define DGRAM_MAX 65536
#define MAX_BACKENDS 1024
#define MAX_SOCKETS 64
#define UPSTREAM_BUFFER (1 << 20)
/* Batches read from one socket per wake before the others get their turn. */
#define ROUNDS 8
#define THREAD_STACK (256 * 1024)
#define DNS_HEADER 12

/* Listener counters: the order of takeCounters() (see src/proxy/native-dns.ts). */
enum {
  C_DGRAMS_IN,
  C_BYTES_IN,
  C_DGRAMS_OUT,
  C_BYTES_OUT,
  C_MALFORMED_QUERY,
  C_MALFORMED_ANSWER,
  C_UNMATCHED_ANSWER,
  C_QUESTION_MISMATCH,
  C_TIMEOUT,
  C_IDS_EXHAUSTED,
  C_NO_BACKEND,
  C_SHUTDOWN,
  C_SEND_FAILED,
  C_IN_FLIGHT, /* a level, not a count */
  C_RUNNING,   /* 1 while the thread runs */
  C_LISTENER_COUNT
};
/* Per backend: queries sent, queries settled (answered, timed out or dropped at destroy),
 * answers passed on, socket errors (ICMP unreachable...), the last errno, state. */
enum { B_SENT, B_SETTLED, B_ANSWERED, B_ERRORS, B_ERRNO, B_STATE, B_COUNT };
enum { ST_FREE = 0, ST_LIVE = 1, ST_RETIRING = 2 };

typedef union {
  struct sockaddr sa;
  struct sockaddr_in v4;
  struct sockaddr_in6 v6;
} peer_t;

typedef struct {
  int fd;
  uint32_t in_flight;
  uint32_t free_top;
  uint16_t free_slots[SLOTS];
  uint16_t orig_id[SLOTS];
  uint8_t gen[SLOTS];
  uint8_t busy[SLOTS];
  uint32_t qhash[SLOTS];
  uint32_t sent_ms[SLOTS];
  peer_t client[SLOTS];
  socklen_t client_len[SLOTS];
  /* Queries waiting in this batch for sendmmsg: indexes into the engine's query batch. */
  uint16_t out_n;
  uint16_t out[BATCH];
} upstream_t;

typedef struct {
  int state;
  peer_t addr;
  socklen_t addr_len;
  double weight;
  double current;
  bool usable;
  bool backup;
  int nsock;
  int next;
  upstream_t *socks;
  uint32_t in_flight;
} backend_t;

enum { CMD_SET, CMD_REMOVE, CMD_TIMEOUT, CMD_STOP, CMD_DESTROY };
typedef struct cmd {
  struct cmd *next;
  int kind;
  int index;
  peer_t addr;
  socklen_t addr_len;
  double weight;
  bool usable;
  bool backup;
  uint32_t ms;
} cmd_t;

typedef struct {
  napi_env env;
  pthread_t thread;
  bool thread_running;
  bool closed;
  bool hook_added;
  napi_threadsafe_function tsfn;
  bool tsfn_released;
  int refs;
  pthread_mutex_t mu;
  cmd_t *cmds, *cmds_tail;
  int ep, wake_fd, timer_fd, listen_fd;
  int nsock;
  uint32_t timeout_ms;
  bool stopping;  /* reads no more queries; exits once nothing is in flight */
  bool listening; /* the listen socket is in the epoll set */
  bool timer_armed;
  bool dirty;
  uint64_t rng;
  struct timespec start;
  /* written by the thread only, read by JS */
  uint64_t counters[C_LISTENER_COUNT];
  uint64_t bcounters[MAX_BACKENDS][B_COUNT];
  backend_t backends[MAX_BACKENDS];
  int nbackends; /* highest index in use + 1 */
  uint32_t in_flight;
  /* batches */
  struct mmsghdr qmsgs[BATCH];
  struct iovec qiov[BATCH];
  peer_t qfrom[BATCH];
  uint8_t *qbuf;
  struct mmsghdr amsgs[BATCH];
  struct iovec aiov[BATCH];
  uint8_t *abuf;
  struct mmsghdr out[BATCH];
  struct iovec out_iov[BATCH];
  peer_t out_to[BATCH];
  uint16_t touched[MAX_BACKENDS * 2];
  int ntouched;
} engine_t;

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define ADD(x, n) __atomic_store_n(&(x), (x) + (uint64_t)(n), __ATOMIC_RELAXED)
#define SET(x, n) __atomic_store_n(&(x), (uint64_t)(n), __ATOMIC_RELAXED)

static uint32_t now_ms(engine_t *e) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint32_t)((t.tv_sec - e->start.tv_sec) * 1000 + (t.tv_nsec - e->start.tv_nsec) / 1000000);
}

static uint32_t rnd(engine_t *e) {
  /* xorshift64*: spreads slots and generations; not a secret, only hard to guess blindly. */
  uint64_t x = e->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  e->rng = x;
  return (uint32_t)((x * 0x2545F4914F6CDD1DULL) >> 32);
}

/* FNV-1a over the first question (name case-folded, type, class), or -1: the same hash and
 * the same rules as questionHash in src/proxy/dns-message.ts. */
static int64_t question_hash(const uint8_t *m, size_t len) {
  if (len < DNS_HEADER + 5) return -1;
  if (((m[4] << 8) | m[5]) == 0) return -1;
  uint32_t h = 0x811c9dc5u;
  size_t i = DNS_HEADER;
  for (;;) {
    if (i >= len) return -1;
    uint8_t label = m[i];
    if (label > 63) return -1;
    h = (h ^ label) * 0x01000193u;
    i++;
    if (label == 0) break;
    if (i + label > len || i - DNS_HEADER > 255) return -1;
    for (size_t end = i + label; i < end; i++) {
      uint8_t c = m[i];
      if (c >= 0x41 && c <= 0x5a) c |= 0x20;
      h = (h ^ c) * 0x01000193u;
    }
  }
  if (i + 4 > len) return -1;
  for (size_t end = i + 4; i < end; i++) h = (h ^ m[i]) * 0x01000193u;
  return (int64_t)h;
}

static void lock(engine_t *e) { pthread_mutex_lock(&e->mu); }
static void unlock(engine_t *e) { pthread_mutex_unlock(&e->mu); }

static void wake(engine_t *e) {
  uint64_t one = 1;
  ssize_t n = write(e->wake_fd, &one, sizeof one);
  (void)n;
}

static void signal_js(engine_t *e) {
  if (e->tsfn != NULL) napi_call_threadsafe_function(e->tsfn, NULL, napi_tsfn_nonblocking);
}

static void arm_timer(engine_t *e, bool on) {
  if (on == e->timer_armed) return;
  uint32_t tick = e->timeout_ms / 4;
  if (tick < 10) tick = 10;
  if (tick > 50) tick = 50;
  struct itimerspec its = {0};
  if (on) {
    its.it_interval.tv_sec = tick / 1000;
    its.it_interval.tv_nsec = (long)(tick % 1000) * 1000000L;
    its.it_value = its.it_interval;
  }
  timerfd_settime(e->timer_fd, 0, &its, NULL);
  e->timer_armed = on;
}

/* ---- backends ---- */

static void close_backend_sockets(engine_t *e, backend_t *b) {
  if (b->socks == NULL) return;
  for (int s = 0; s < b->nsock; s++) {
    if (b->socks[s].fd >= 0) close(b->socks[s].fd);
  }
  free(b->socks);
  b->socks = NULL;
  b->nsock = 0;
}

/* Opens the backend's connected sockets; false (errno kept) when one cannot be made. */
static bool open_backend_sockets(engine_t *e, int index) {
  backend_t *b = &e->backends[index];
  b->socks = malloc(sizeof(upstream_t) * (size_t)e->nsock);
  if (b->socks == NULL) return false;
  b->nsock = e->nsock;
  for (int s = 0; s < b->nsock; s++) b->socks[s].fd = -1;
  for (int s = 0; s < b->nsock; s++) {
    upstream_t *u = &b->socks[s];
    u->in_flight = 0;
    u->out_n = 0;
    u->free_top = SLOTS;
    for (uint32_t i = 0; i < SLOTS; i++) u->free_slots[i] = (uint16_t)(SLOTS - 1 - i);
    memset(u->busy, 0, sizeof u->busy);
    memset(u->gen, 0, sizeof u->gen);
    int fd = socket(b->addr.sa.sa_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) goto fail;
    int size = UPSTREAM_BUFFER;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    if (connect(fd, &b->addr.sa, b->addr_len) < 0) {
      int err = errno;
      close(fd);
      errno = err;
      goto fail;
    }
    u->fd = fd;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (4ull << 32) | ((uint64_t)index << 8) | (uint64_t)s};
    if (epoll_ctl(e->ep, EPOLL_CTL_ADD, fd, &ev) < 0) goto fail;
  }
  return true;
fail : {
  int err = errno;
  close_backend_sockets(e, b);
  errno = err;
  return false;
}
}

/* A retiring backend with nothing in flight closes its sockets and frees its index. */
static void maybe_free(engine_t *e, int index) {
  backend_t *b = &e->backends[index];
  if (b->state != ST_RETIRING || b->in_flight != 0) return;
  close_backend_sockets(e, b);
  b->state = ST_FREE;
  SET(e->bcounters[index][B_STATE], ST_FREE);
  e->dirty = true;
}

static void apply(engine_t *e, cmd_t *c) {
  switch (c->kind) {
  case CMD_SET: {
    backend_t *b = &e->backends[c->index];
    bool same = b->state != ST_FREE && b->addr_len == c->addr_len && memcmp(&b->addr, &c->addr, c->addr_len) == 0;
    if (b->state != ST_FREE && !same) {
      /* Another address at this index cannot happen (JS never reuses a live index); be safe. */
      close_backend_sockets(e, b);
      b->in_flight = 0;
    }
    if (!same) {
      b->addr = c->addr;
      b->addr_len = c->addr_len;
      b->current = 0;
      b->next = 0;
      b->in_flight = 0;
      b->socks = NULL;
      b->nsock = 0;
    }
    b->weight = c->weight;
    b->usable = c->usable;
    b->backup = c->backup;
    b->state = ST_LIVE;
    SET(e->bcounters[c->index][B_STATE], ST_LIVE);
    if (c->index + 1 > e->nbackends) e->nbackends = c->index + 1;
    break;
  }
  case CMD_REMOVE: {
    backend_t *b = &e->backends[c->index];
    if (b->state == ST_FREE) break;
    b->state = ST_RETIRING;
    b->usable = false;
    SET(e->bcounters[c->index][B_STATE], ST_RETIRING);
    maybe_free(e, c->index);
    break;
  }
  case CMD_TIMEOUT:
    e->timeout_ms = c->ms;
    if (e->timer_armed) {
      arm_timer(e, false);
      arm_timer(e, true);
    }
    break;
  case CMD_STOP:
    e->stopping = true;
    break;
  }
  e->dirty = true;
}

/* Smooth weighted round-robin (nginx's): every usable backend gains its weight, the one
 * ahead is picked and pays the round's total. Backups only when no primary is usable. */
static int pick(engine_t *e) {
  for (int pass = 0; pass < 2; pass++) {
    bool backup = pass == 1;
    int best = -1;
    double total = 0;
    for (int i = 0; i < e->nbackends; i++) {
      backend_t *b = &e->backends[i];
      if (b->state != ST_LIVE || !b->usable || b->backup != backup || b->weight <= 0) continue;
      b->current += b->weight;
      total += b->weight;
      if (best < 0 || b->current > e->backends[best].current) best = i;
    }
    if (best >= 0) {
      e->backends[best].current -= total;
      return best;
    }
  }
  return -1;
}

/* ---- the data path ---- */

static void flush_upstream(engine_t *e, int index, int s) {
  upstream_t *u = &e->backends[index].socks[s];
  unsigned n = u->out_n;
  u->out_n = 0;
  if (n == 0) return;
  struct mmsghdr msgs[BATCH];
  for (unsigned i = 0; i < n; i++) {
    memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
    msgs[i].msg_hdr.msg_iov = &e->qiov[u->out[i]];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  unsigned done = 0;
  int refused = 0;
  while (done < n) {
    int r = sendmmsg(u->fd, msgs + done, n - done, MSG_DONTWAIT);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == ECONNREFUSED && refused++ < 4) {
        /* A pending ICMP error surfaces on send too: counted, and the rest is retried. */
        ADD(e->bcounters[index][B_ERRORS], 1);
        SET(e->bcounters[index][B_ERRNO], ECONNREFUSED);
        e->dirty = true;
        continue;
      }
      /* Full socket buffer or another error: the queries left time out as if lost. */
      ADD(e->counters[C_SEND_FAILED], n - done);
      break;
    }
    done += (unsigned)r;
  }
}

/* Sets msgs up for a recvmmsg of BATCH datagrams, each into its own DGRAM_MAX bytes of buf,
 * with the sender's address in from[i] when from is not NULL. */
static void recv_batch(struct mmsghdr *msgs, struct iovec *iov, uint8_t *buf, peer_t *from) {
  for (int i = 0; i < BATCH; i++) {
    iov[i].iov_base = buf + (size_t)i * DGRAM_MAX;
    iov[i].iov_len = DGRAM_MAX;
    memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
    if (from != NULL) {
      msgs[i].msg_hdr.msg_name = &from[i];
      msgs[i].msg_hdr.msg_namelen = sizeof from[i];
    }
  }
}

static void on_queries(engine_t *e) {
  for (int round = 0; round < ROUNDS; round++) {
    recv_batch(e->qmsgs, e->qiov, e->qbuf, e->qfrom);
    int n = recvmmsg(e->listen_fd, e->qmsgs, BATCH, MSG_DONTWAIT, NULL);
    if (n <= 0) return;
    uint32_t now = now_ms(e);
    e->ntouched = 0;
    for (int i = 0; i < n; i++) {
      uint8_t *m = e->qiov[i].iov_base;
      size_t len = e->qmsgs[i].msg_len;
      int64_t hash = len >= DNS_HEADER && (m[2] & 0x80) == 0 && (e->qmsgs[i].msg_hdr.msg_flags & MSG_TRUNC) == 0 ? question_hash(m, len) : -1;
      if (hash < 0) {
        ADD(e->counters[C_MALFORMED_QUERY], 1);
        continue;
      }
      int bi = pick(e);
      if (bi < 0) {
        ADD(e->counters[C_NO_BACKEND], 1);
        continue;
      }
      backend_t *b = &e->backends[bi];
      if (b->socks == NULL && !open_backend_sockets(e, bi)) {
        /* Out of descriptors or memory here, not the backend's fault: no passive-health count. */
        ADD(e->counters[C_SEND_FAILED], 1);
        continue;
      }
      upstream_t *u = NULL;
      int us = -1;
      for (int k = 0; k < b->nsock; k++) {
        int s = b->next;
        b->next = b->next + 1 == b->nsock ? 0 : b->next + 1;
        if (b->socks[s].free_top > 0) {
          u = &b->socks[s];
          us = s;
          break;
        }
      }
      if (u == NULL) {
        ADD(e->counters[C_IDS_EXHAUSTED], 1);
        continue;
      }
      uint32_t k = rnd(e) % u->free_top;
      uint16_t slot = u->free_slots[k];
      u->free_slots[k] = u->free_slots[--u->free_top];
      uint8_t g = (uint8_t)((u->gen[slot] + 1 + rnd(e) % 15) & 0x0f);
      u->gen[slot] = g;
      u->busy[slot] = 1;
      u->orig_id[slot] = (uint16_t)((m[0] << 8) | m[1]);
      u->client[slot] = e->qfrom[i];
      u->client_len[slot] = e->qmsgs[i].msg_hdr.msg_namelen;
      u->qhash[slot] = (uint32_t)hash;
      u->sent_ms[slot] = now;
      u->in_flight++;
      b->in_flight++;
      e->in_flight++;
      uint16_t id = (uint16_t)((g << SLOT_BITS) | slot);
      m[0] = (uint8_t)(id >> 8);
      m[1] = (uint8_t)id;
      e->qiov[i].iov_len = len;
      if (u->out_n == 0) e->touched[e->ntouched++] = (uint16_t)((bi << 6) | us);
      u->out[u->out_n++] = (uint16_t)i;
      ADD(e->bcounters[bi][B_SENT], 1);
      ADD(e->counters[C_DGRAMS_IN], 1);
      ADD(e->counters[C_BYTES_IN], len);
    }
    for (int t = 0; t < e->ntouched; t++) flush_upstream(e, e->touched[t] >> 6, e->touched[t] & 63);
    e->dirty = true;
    SET(e->counters[C_IN_FLIGHT], e->in_flight);
    if (e->in_flight > 0) arm_timer(e, true);
    if (n < BATCH) return;
  }
}

static void settle(engine_t *e, int bi, upstream_t *u, uint16_t slot) {
  u->busy[slot] = 0;
  u->free_slots[u->free_top++] = slot;
  u->in_flight--;
  e->backends[bi].in_flight--;
  e->in_flight--;
  ADD(e->bcounters[bi][B_SETTLED], 1);
}

static void send_to_clients(engine_t *e, int n) {
  /* Counted before they are sent: a client that has its answer finds it counted already. */
  uint64_t bytes = 0;
  for (int i = 0; i < n; i++) bytes += e->out_iov[i].iov_len;
  ADD(e->counters[C_DGRAMS_OUT], n);
  ADD(e->counters[C_BYTES_OUT], bytes);
  int done = 0;
  while (done < n) {
    int r = sendmmsg(e->listen_fd, e->out + done, (unsigned)(n - done), MSG_DONTWAIT);
    if (r < 0) {
      if (errno == EINTR) continue;
      /* A client that is gone (or a full buffer): this answer is lost, the next goes on. */
      ADD(e->counters[C_SEND_FAILED], 1);
      SET(e->counters[C_DGRAMS_OUT], e->counters[C_DGRAMS_OUT] - 1);
      SET(e->counters[C_BYTES_OUT], e->counters[C_BYTES_OUT] - e->out_iov[done].iov_len);
      done++;
      continue;
    }
    done += r;
  }
}

static void on_answers(engine_t *e, int bi, int s) {
  backend_t *b = &e->backends[bi];
  if (b->socks == NULL || s >= b->nsock) return;
  upstream_t *u = &b->socks[s];
  for (int round = 0; round < ROUNDS; round++) {
    recv_batch(e->amsgs, e->aiov, e->abuf, NULL);
    int n = recvmmsg(u->fd, e->amsgs, BATCH, MSG_DONTWAIT, NULL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      /* ICMP port unreachable (ECONNREFUSED) and the like: counted for passive health. */
      ADD(e->bcounters[bi][B_ERRORS], 1);
      SET(e->bcounters[bi][B_ERRNO], errno);
      e->dirty = true;
      continue;
    }
    if (n == 0) return;
    int out = 0;
    for (int i = 0; i < n; i++) {
      uint8_t *m = e->aiov[i].iov_base;
      size_t len = e->amsgs[i].msg_len;
      if (len < DNS_HEADER || (m[2] & 0x80) == 0 || (e->amsgs[i].msg_hdr.msg_flags & MSG_TRUNC) != 0) {
        ADD(e->counters[C_MALFORMED_ANSWER], 1);
        continue;
      }
      uint16_t id = (uint16_t)((m[0] << 8) | m[1]);
      uint16_t slot = id & SLOT_MASK;
      if (u->busy[slot] != 1 || u->gen[slot] != id >> SLOT_BITS) {
        ADD(e->counters[C_UNMATCHED_ANSWER], 1);
        continue;
      }
      int64_t hash = question_hash(m, len);
      int rcode = m[3] & 0x0f;
      if (hash != (int64_t)u->qhash[slot] && !(hash == -1 && rcode != 0)) {
        ADD(e->counters[C_QUESTION_MISMATCH], 1);
        continue;
      }
      m[0] = (uint8_t)(u->orig_id[slot] >> 8);
      m[1] = (uint8_t)u->orig_id[slot];
      e->out_to[out] = u->client[slot];
      e->out_iov[out].iov_base = m;
      e->out_iov[out].iov_len = len;
      memset(&e->out[out].msg_hdr, 0, sizeof e->out[out].msg_hdr);
      e->out[out].msg_hdr.msg_iov = &e->out_iov[out];
      e->out[out].msg_hdr.msg_iovlen = 1;
      e->out[out].msg_hdr.msg_name = &e->out_to[out];
      e->out[out].msg_hdr.msg_namelen = u->client_len[slot];
      out++;
      settle(e, bi, u, slot);
      ADD(e->bcounters[bi][B_ANSWERED], 1);
    }
    if (out > 0) send_to_clients(e, out);
    e->dirty = true;
    SET(e->counters[C_IN_FLIGHT], e->in_flight);
    if (b->state == ST_RETIRING) {
      maybe_free(e, bi);
      return;
    }
    if (n < BATCH) return;
  }
}

/* Each tick: queries older than the timeout are dropped (a scan of the busy slots of the
 * sockets with something in flight). */
static void sweep(engine_t *e) {
  if (e->in_flight == 0) return;
  uint32_t now = now_ms(e);
  uint32_t limit = e->timeout_ms;
  for (int bi = 0; bi < e->nbackends; bi++) {
    backend_t *b = &e->backends[bi];
    if (b->socks == NULL || b->in_flight == 0) continue;
    for (int s = 0; s < b->nsock; s++) {
      upstream_t *u = &b->socks[s];
      for (uint32_t slot = 0; slot < SLOTS && u->in_flight > 0; slot++) {
        if (u->busy[slot] == 1 && now - u->sent_ms[slot] >= limit) {
          settle(e, bi, u, (uint16_t)slot);
          ADD(e->counters[C_TIMEOUT], 1);
          e->dirty = true;
        }
      }
    }
    maybe_free(e, bi);
  }
  SET(e->counters[C_IN_FLIGHT], e->in_flight);
}

/* Destroy: what is in flight is settled (not counted as timed out) and every socket closed. */
static void drop_all(engine_t *e) {
  for (int bi = 0; bi < e->nbackends; bi++) {
    backend_t *b = &e->backends[bi];
    if (b->socks != NULL) {
      for (int s = 0; s < b->nsock; s++) {
        upstream_t *u = &b->socks[s];
        for (uint32_t slot = 0; slot < SLOTS && u->in_flight > 0; slot++)
          if (u->busy[slot] == 1) settle(e, bi, u, (uint16_t)slot);
      }
    }
    close_backend_sockets(e, b);
    if (b->state != ST_FREE) {
      b->state = ST_FREE;
      SET(e->bcounters[bi][B_STATE], ST_FREE);
    }
  }
  SET(e->counters[C_IN_FLIGHT], e->in_flight);
}

static bool take_commands(engine_t *e) {
  lock(e);
  cmd_t *c = e->cmds;
  e->cmds = e->cmds_tail = NULL;
  unlock(e);
  bool destroy = false;
  while (c != NULL) {
    cmd_t *next = c->next;
    if (c->kind == CMD_DESTROY) destroy = true;
    else apply(e, c);
    free(c);
    c = next;
  }
  return destroy;
}

static void *engine_main(void *arg) {
  engine_t *e = arg;
  struct epoll_event evs[64];
  bool destroy = false;
  for (;;) {
    if (e->stopping && e->listening) {
      epoll_ctl(e->ep, EPOLL_CTL_DEL, e->listen_fd, NULL);
      e->listening = false;
    }
    if (e->stopping && e->in_flight == 0) break;
    int n = epoll_wait(e->ep, evs, 64, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    /* Commands first: a backend JS took out of the table gets none of the queries read in
     * the same turn. */
    for (int i = 0; i < n; i++) {
      if ((uint32_t)(evs[i].data.u64 >> 32) != 2) continue;
      uint64_t v;
      ssize_t r = read(e->wake_fd, &v, sizeof v);
      (void)r;
      if (take_commands(e)) destroy = true;
    }
    for (int i = 0; i < n && !destroy; i++) {
      uint64_t d = evs[i].data.u64;
      uint32_t kind = (uint32_t)(d >> 32);
      if (kind == 1) {
        if (e->listening) on_queries(e);
      } else if (kind == 3) {
        uint64_t v;
        ssize_t r = read(e->timer_fd, &v, sizeof v);
        (void)r;
        sweep(e);
        if (e->dirty) {
          e->dirty = false;
          signal_js(e);
        } else if (e->in_flight == 0) {
          arm_timer(e, false);
        }
      } else if (kind == 4) {
        on_answers(e, (int)((d >> 8) & 0xffffff), (int)(d & 0xff));
      }
    }
    if (destroy) break;
    if (e->dirty && !e->timer_armed) arm_timer(e, true);
  }
  drop_all(e);
  close(e->listen_fd);
  e->listen_fd = -1;
  SET(e->counters[C_RUNNING], 0);
  signal_js(e);
  return NULL;
}

/* ---- N-API ---- */

static void throw_errno(napi_env env, int err, const char *what) {
  char msg[256];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
  napi_value code, text, error;
  const char *name = err == EBADF ? "EBADF" : err == ENOMEM ? "ENOMEM" : err == EMFILE ? "EMFILE" : err == ENFILE ? "ENFILE" : "EIO";
  if (napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code) != napi_ok) return;
  if (napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &text) != napi_ok) return;
  if (napi_create_error(env, code, text, &error) != napi_ok) return;
  napi_throw(env, error);
}

static void engine_free(engine_t *e) {
  cmd_t *c = e->cmds;
  while (c != NULL) {
    cmd_t *next = c->next;
    free(c);
    c = next;
  }
  for (int i = 0; i < MAX_BACKENDS; i++) close_backend_sockets(e, &e->backends[i]);
  if (e->ep >= 0) close(e->ep);
  if (e->wake_fd >= 0) close(e->wake_fd);
  if (e->timer_fd >= 0) close(e->timer_fd);
  if (e->listen_fd >= 0) close(e->listen_fd);
  free(e->qbuf);
  free(e->abuf);
  pthread_mutex_destroy(&e->mu);
  free(e);
}

static void engine_unref(engine_t *e) {
  if (--e->refs == 0) engine_free(e);
}

static void tsfn_call(napi_env env, napi_value js_cb, void *context, void *data) {
  (void)context;
  (void)data;
  if (env == NULL || js_cb == NULL) return;
  napi_value undefined;
  if (napi_get_undefined(env, &undefined) != napi_ok) return;
  napi_call_function(env, undefined, js_cb, 0, NULL, NULL);
}

static void tsfn_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  engine_t *e = data;
  e->tsfn = NULL;
  e->tsfn_released = true;
  engine_unref(e);
}

static void cleanup_hook(void *arg);

static void engine_shut(engine_t *e) {
  if (e->closed) return;
  e->closed = true;
  if (e->thread_running) {
    cmd_t *c = calloc(1, sizeof *c);
    lock(e);
    if (c != NULL) {
      c->kind = CMD_DESTROY;
      if (e->cmds_tail != NULL) e->cmds_tail->next = c;
      else e->cmds = c;
      e->cmds_tail = c;
    } else {
      e->stopping = true; /* no memory for a command: the thread stops at its next turn */
    }
    unlock(e);
    wake(e);
    pthread_join(e->thread, NULL);
    e->thread_running = false;
  }
  stop_tsfn(e->env, e->tsfn, &e->tsfn_released, &e->hook_added, cleanup_hook, e);
}

static void cleanup_hook(void *arg) {
  engine_t *e = arg;
  e->hook_added = false;
  engine_shut(e);
}

static void engine_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  engine_t *e = data;
  engine_shut(e);
  engine_unref(e);
}

static engine_t *this_engine(napi_env env, napi_callback_info info, size_t *argc, napi_value *argv) {
  napi_value self;
  void *data = NULL;
  if (napi_get_cb_info(env, info, argc, argv, &self, NULL) != napi_ok || napi_unwrap(env, self, &data) != napi_ok) {
    napi_throw_error(env, NULL, "not a DNS engine");
    return NULL;
  }
  return data;
}

static bool arg_u32(napi_env env, napi_value v, const char *name, uint32_t *out) {
  if (napi_get_value_uint32(env, v, out) != napi_ok) {
    char msg[96];
    snprintf(msg, sizeof msg, "%s must be a number", name);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
    return false;
  }
  return true;
}

static bool send_cmd(napi_env env, engine_t *e, cmd_t *tmpl) {
  if (e->closed) {
    napi_throw_error(env, "ERR_DNS_CLOSED", "the DNS engine is closed");
    return false;
  }
  cmd_t *c = malloc(sizeof *c);
  if (c == NULL) {
    throw_errno(env, ENOMEM, "dns engine");
    return false;
  }
  *c = *tmpl;
  c->next = NULL;
  lock(e);
  if (e->cmds_tail != NULL) e->cmds_tail->next = c;
  else e->cmds = c;
  e->cmds_tail = c;
  unlock(e);
  wake(e);
  return true;
}

/* new Engine(fd, onChange, upstreamSockets, timeoutMs): duplicates fd (the listener's bound
 * UDP socket) and starts relaying what it reads. */
static napi_value engine_new(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4], self;
  if (napi_get_cb_info(env, info, &argc, argv, &self, NULL) != napi_ok) return NULL;
  uint32_t fd, nsock, timeout;
  napi_valuetype t;
  if (argc < 4 || !arg_u32(env, argv[0], "fd", &fd)) return NULL;
  if (napi_typeof(env, argv[1], &t) != napi_ok || t != napi_function) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "onChange must be a function");
    return NULL;
  }
  if (!arg_u32(env, argv[2], "upstreamSockets", &nsock) || !arg_u32(env, argv[3], "timeoutMs", &timeout)) return NULL;
  if (nsock < 1 || nsock > MAX_SOCKETS || fd > INT32_MAX) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "upstreamSockets must be from 1 to 64");
    return NULL;
  }
  engine_t *e = calloc(1, sizeof *e);
  if (e == NULL) {
    throw_errno(env, ENOMEM, "dns engine");
    return NULL;
  }
  e->env = env;
  e->refs = 1;
  e->ep = e->wake_fd = e->timer_fd = e->listen_fd = -1;
  e->nsock = (int)nsock;
  e->timeout_ms = timeout;
  pthread_mutex_init(&e->mu, NULL);
  clock_gettime(CLOCK_MONOTONIC, &e->start);
  e->rng = ((uint64_t)e->start.tv_nsec << 20) ^ (uint64_t)(uintptr_t)e ^ 0x9E3779B97F4A7C15ULL;
  if (e->rng == 0) e->rng = 1;
  e->qbuf = malloc((size_t)BATCH * DGRAM_MAX);
  e->abuf = malloc((size_t)BATCH * DGRAM_MAX);
  if (e->qbuf == NULL || e->abuf == NULL) {
    engine_free(e);
    throw_errno(env, ENOMEM, "dns engine");
    return NULL;
  }
  e->listen_fd = fcntl((int)fd, F_DUPFD_CLOEXEC, 0);
  e->ep = epoll_create1(EPOLL_CLOEXEC);
  e->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  e->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  /* Exclusive: with several engines on one socket, a datagram wakes one of them. */
  struct epoll_event l = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.u64 = 1ull << 32};
  struct epoll_event w = {.events = EPOLLIN, .data.u64 = 2ull << 32};
  struct epoll_event tm = {.events = EPOLLIN, .data.u64 = 3ull << 32};
  if (e->listen_fd < 0 || e->ep < 0 || e->wake_fd < 0 || e->timer_fd < 0 || epoll_ctl(e->ep, EPOLL_CTL_ADD, e->listen_fd, &l) < 0 ||
      epoll_ctl(e->ep, EPOLL_CTL_ADD, e->wake_fd, &w) < 0 || epoll_ctl(e->ep, EPOLL_CTL_ADD, e->timer_fd, &tm) < 0) {
    int err = errno;
    engine_free(e);
    throw_errno(env, err, "dns engine");
    return NULL;
  }
  e->listening = true;
  SET(e->counters[C_RUNNING], 1);
  if (napi_wrap(env, self, e, engine_finalize, NULL, NULL) != napi_ok) {
    engine_free(e);
    napi_throw_error(env, NULL, "dns engine: napi_wrap failed");
    return NULL;
  }
  /* The listener's own socket keeps the process alive; the engine does not. */
  napi_status st = start_tsfn(env, argv[1], "sluice dns engine", e, tsfn_finalize, tsfn_call, &e->tsfn, &e->refs, cleanup_hook);
  if (st != napi_ok) {
    engine_shut(e);
    napi_throw_error(env, NULL, "dns engine: set-up failed");
    return NULL;
  }
  e->hook_added = true;
  int rc = start_thread(&e->thread, THREAD_STACK, engine_main, e);
  if (rc != 0) {
    engine_shut(e);
    throw_errno(env, rc, "dns engine: pthread_create");
    return NULL;
  }
  e->thread_running = true;
  (void)pthread_setname_np(e->thread, "sluice-dns");
  return self;
}

/* setBackend(index, ip, port, weight, usable, backup) */
static napi_value engine_set_backend(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  engine_t *e = this_engine(env, info, &argc, argv);
  if (e == NULL) return NULL;
  uint32_t index, port;
  char ip[64];
  size_t iplen = 0;
  double weight;
  bool usable, backup;
  if (argc < 6 || !arg_u32(env, argv[0], "index", &index) || !arg_u32(env, argv[2], "port", &port)) return NULL;
  if (napi_get_value_string_utf8(env, argv[1], ip, sizeof ip, &iplen) != napi_ok || napi_get_value_double(env, argv[3], &weight) != napi_ok ||
      napi_get_value_bool(env, argv[4], &usable) != napi_ok || napi_get_value_bool(env, argv[5], &backup) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "setBackend(index, ip, port, weight, usable, backup)");
    return NULL;
  }
  if (index >= MAX_BACKENDS || port > 65535) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "backend index or port out of range");
    return NULL;
  }
  cmd_t c = {.kind = CMD_SET, .index = (int)index, .weight = weight, .usable = usable, .backup = backup};
  if (inet_pton(AF_INET, ip, &c.addr.v4.sin_addr) == 1) {
    c.addr.v4.sin_family = AF_INET;
    c.addr.v4.sin_port = htons((uint16_t)port);
    c.addr_len = sizeof c.addr.v4;
  } else if (inet_pton(AF_INET6, ip, &c.addr.v6.sin6_addr) == 1) {
    c.addr.v6.sin6_family = AF_INET6;
    c.addr.v6.sin6_port = htons((uint16_t)port);
    c.addr_len = sizeof c.addr.v6;
  } else {
    napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE", "ip must be an IPv4 or IPv6 literal");
    return NULL;
  }
  send_cmd(env, e, &c);
  return NULL;
}

/* The engine of a method that takes one uint32 argument, named `name`, read into *out; NULL
 * (an exception pending, or the argument missing) when there is none. */
static engine_t *this_engine_u32(napi_env env, napi_callback_info info, const char *name, uint32_t *out) {
  size_t argc = 1;
  napi_value argv[1];
  engine_t *e = this_engine(env, info, &argc, argv);
  if (e == NULL || argc < 1 || !arg_u32(env, argv[0], name, out)) return NULL;
  return e;
}

static napi_value engine_remove_backend(napi_env env, napi_callback_info info) {
  uint32_t index;
  engine_t *e = this_engine_u32(env, info, "index", &index);
  if (e == NULL) return NULL;
  if (index >= MAX_BACKENDS) return NULL;
  cmd_t c = {.kind = CMD_REMOVE, .index = (int)index};
  send_cmd(env, e, &c);
  return NULL;
}

static napi_value engine_set_timeout(napi_env env, napi_callback_info info) {
  uint32_t ms;
  engine_t *e = this_engine_u32(env, info, "timeoutMs", &ms);
  if (e == NULL) return NULL;
  cmd_t c = {.kind = CMD_TIMEOUT, .ms = ms};
  send_cmd(env, e, &c);
  return NULL;
}

/* stop(): reads no more queries; the thread ends once every query in flight is settled. */
static napi_value engine_stop(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  engine_t *e = this_engine(env, info, &argc, NULL);
  if (e == NULL || e->closed) return NULL;
  cmd_t c = {.kind = CMD_STOP};
  send_cmd(env, e, &c);
  return NULL;
}

/* close(): drops what is in flight, stops the thread and closes every descriptor. */
static napi_value engine_close(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  engine_t *e = this_engine(env, info, &argc, NULL);
  if (e != NULL) engine_shut(e);
  return NULL;
}

/* takeCounters(backends): Float64Array [listener counters..., per backend index: B_COUNT cells]. */
static napi_value engine_take_counters(napi_env env, napi_callback_info info) {
  uint32_t want;
  engine_t *e = this_engine_u32(env, info, "backends", &want);
  if (e == NULL) return NULL;
  /* Every index JS has handed out, applied by the thread yet or not (unapplied ones read 0). */
  int nb = want > MAX_BACKENDS ? MAX_BACKENDS : (int)want;
  size_t cells = C_LISTENER_COUNT + (size_t)nb * B_COUNT;
  napi_value ab, arr;
  void *data = NULL;
  if (napi_create_arraybuffer(env, cells * sizeof(double), &data, &ab) != napi_ok) return NULL;
  double *out = data;
  for (int i = 0; i < C_LISTENER_COUNT; i++) out[i] = (double)LOAD(e->counters[i]);
  for (int b = 0; b < nb; b++)
    for (int k = 0; k < B_COUNT; k++) out[C_LISTENER_COUNT + (size_t)b * B_COUNT + k] = (double)LOAD(e->bcounters[b][k]);
  if (napi_create_typedarray(env, napi_float64_array, cells, ab, 0, &arr) != napi_ok) return NULL;
  return arr;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor methods[] = {
      {"setBackend", NULL, engine_set_backend, NULL, NULL, NULL, napi_default_method, NULL},
      {"removeBackend", NULL, engine_remove_backend, NULL, NULL, NULL, napi_default_method, NULL},
      {"setTimeout", NULL, engine_set_timeout, NULL, NULL, NULL, napi_default_method, NULL},
      {"stop", NULL, engine_stop, NULL, NULL, NULL, napi_default_method, NULL},
      {"close", NULL, engine_close, NULL, NULL, NULL, napi_default_method, NULL},
      {"takeCounters", NULL, engine_take_counters, NULL, NULL, NULL, napi_default_method, NULL},
  };
  napi_value cls, v;
  if (napi_define_class(env, "Engine", NAPI_AUTO_LENGTH, engine_new, NULL, sizeof methods / sizeof methods[0], methods, &cls) != napi_ok) return NULL;
  if (napi_set_named_property(env, exports, "Engine", cls) != napi_ok) return NULL;
  if (napi_create_uint32(env, C_LISTENER_COUNT, &v) != napi_ok || napi_set_named_property(env, exports, "listenerCells", v) != napi_ok) return NULL;
  if (napi_create_uint32(env, B_COUNT, &v) != napi_ok || napi_set_named_property(env, exports, "backendCells", v) != napi_ok) return NULL;
  if (napi_create_uint32(env, MAX_BACKENDS, &v) != napi_ok || napi_set_named_property(env, exports, "maxBackends", v) != napi_ok) return NULL;
  return exports;
}
