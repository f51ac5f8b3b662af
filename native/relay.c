/*
 * The native relay: moves the bytes of established TCP connections between a client and a
 * backend on a thread of its own, so that no Node socket object stays alive per connection.
 *
 * JS hands over both descriptors of a connection (add): the relay dup()s them and JS closes
 * its own sockets. Each Relay object runs one epoll thread that relays every connection it
 * holds; any number of Relay objects may exist, in any number of worker threads (all state
 * lives in the object; there is no mutable global).
 *
 * Per connection and direction (client -> backend, backend -> client):
 *   - a chunk read is written on at once: in copy mode through one read buffer per relay
 *     (recv, send), in splice mode through one pipe per relay (splice in, splice out, no copy
 *     through user space). What the destination does not take is copied into a buffer of the
 *     connection's own and waits there; the source is not read again until it is written: at
 *     most one chunk waits per direction, and a slow reader stops the fast writer through
 *     TCP's own flow control;
 *   - a FIN is passed on (shutdown(SHUT_WR)) once what came before it is written; when both
 *     directions have passed theirs, both descriptors are closed;
 *   - a reset or error on either side closes both;
 *   - an idle timeout is checked on a coarse timing wheel, not with a timer per connection.
 * An idle connection holds its struct only (about 200 bytes): no buffer, no pipe.
 *
 * The relay can also take a listening socket (listen): it then accepts the connections itself
 * and tells JS of each (accept, with the client's address); JS decides where it goes and asks
 * for the backend connect (connect), whose result comes back the same way (connected, or
 * connect_failed, after which JS may try another backend or destroy it with a reset). So a
 * plain TCP connection costs no Node socket at all, from accept to close.
 *
 * Events (accepts, connect results, ends) are reported to JS in batches through a thread-safe
 * function; byte counters per group (for example one per listener) are read by JS when it
 * wants them (takeBytes).
 *
 * Or inline (new Relay(..., inline = true)): no thread of its own. The epoll set is polled by
 * the event loop of the JS thread that made the relay (a uv_poll), and each turn runs in that
 * loop's callback; its events go to JS at once, and what JS asks for in return (the backend
 * connect of an accept) is taken by the next turn of the same callback. A new connection then
 * costs no wake of another thread: accept, pick, connect and relay follow each other on one
 * core, as in an event-driven proxy written in C. The commands and events keep the same
 * queues (the lock is then never contended), so both ways share all the code below.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <time.h>
#include <unistd.h>

#include <node_api.h>
#include "napi-util.h"
#include <uv.h>

/* Bytes read per call (the pipe's capacity in splice mode), and so the most that waits per
 * direction of a connection. Larger chunks mean fewer system calls per byte. */
#ifndef CHUNK
#define CHUNK (256 * 1024)
#endif
/* Bytes a direction may move in one turn before the other connections get theirs. */
#define TURN_BYTES (1024 * 1024)
#define BUDGET (TURN_BYTES / CHUNK > 0 ? TURN_BYTES / CHUNK : 1)
#define MAX_EVENTS 128
/* The idle timeout is checked every tick: a connection expires at most a tick late. */
#define TICK_MS 100
#define WHEEL_SLOTS 1024 /* a power of two: one turn of the wheel is about 100 s */
#define THREAD_STACK (256 * 1024)
/* Connections taken from a listening socket per readiness event, before other work runs. */
#define ACCEPT_BATCH 64
/* An accept that fails for want of descriptors or memory pauses the listener, from this long
 * up to the longest, doubling while it keeps failing. */
#define ACCEPT_PAUSE_MIN_MS 10
#define ACCEPT_PAUSE_MAX_MS 1000
/* TCP keep-alive probes start after this much silence (as Node's sockets in sluice do). */
#define KEEPALIVE_IDLE_S 60

enum side { CLIENT = 0, BACKEND = 1 };

/* Why a connection ended; the order is the one of `reasons` exported to JS. */
enum reason {
  R_CLIENT_CLOSED,  /* both FINs passed on; the client's came first */
  R_BACKEND_CLOSED, /* both FINs passed on; the backend's came first */
  R_CLIENT_ERROR,   /* the client reset the connection, or a read or write on it failed */
  R_BACKEND_ERROR,  /* the same on the backend's side */
  R_IDLE_TIMEOUT,   /* no byte moved either way for the connection's idle timeout */
  R_DESTROYED,      /* destroy(), close(), or the relay could not take the connection */
  R_CLIENT_ABORTED, /* an accepted client reset before its backend connection was made */
  R_COUNT
};

static const char *const reason_names[R_COUNT] = {
  "client_closed", "backend_closed", "client_error", "backend_error", "idle_timeout", "destroyed", "client_aborted",
};

/* The phase of a connection: relaying (every connection JS added), or one the relay accepted
 * that waits for JS to name a backend, or whose backend connect is in flight. */
enum state { S_RELAY = 0, S_WAIT, S_CONNECTING };

/* Event kinds, as JS receives them. */
enum event_kind { E_END = 0, E_ACCEPT, E_CONNECTED, E_CONNECT_FAILED, E_ACCEPT_ERROR, E_RELEASED, E_UNLISTENED };

/* One direction of a connection: bytes read from side d and written to side 1 - d. */
typedef struct {
  uint8_t *buf;       /* bytes read and not yet written: allocated only while some wait */
  uint32_t off, len;  /* buf[off, len) waits */
  uint64_t bytes;     /* bytes written to the destination, the initial ones not counted */
  bool initial;       /* buf holds the initial bytes JS gave (not counted) */
  bool eof;           /* the source sent its FIN */
  bool shut;          /* ... and it was passed on to the destination */
} dir_t;

typedef struct conn conn_t;
struct conn {
  uint64_t id;
  int fd[2];             /* [CLIENT], [BACKEND]: the relay's own duplicates */
  dir_t dir[2];          /* [CLIENT]: client -> backend; [BACKEND]: backend -> client */
  bool readable[2];      /* the side may have bytes (or a FIN) to read: cleared at EAGAIN */
  bool writable[2];      /* the side may take bytes: cleared at EAGAIN, set by EPOLLOUT */
  bool registered[2];    /* in the epoll set */
  bool rdhup[2];         /* the side's FIN has arrived (EPOLLRDHUP): read on to the end */
  bool owned;            /* accepted and connected here: no other descriptor of its sockets */
  bool in_table;         /* in the id table */
  bool closed;           /* closed, waiting to be freed at the end of the turn */
  bool queued;           /* in the ready list */
  uint8_t state;         /* enum state */
  int8_t first_fin;      /* the side whose FIN came first, or -1 */
  uint32_t group;        /* byte counter group */
  uint32_t idle_ms;      /* 0: no idle timeout; while connecting, the connect timeout */
  uint32_t relay_idle_ms; /* the idle timeout once connected (accepted connections) */
  int64_t connect_started; /* monotonic microseconds (accepted connections) */
  int64_t last_active;   /* monotonic ms of the last byte moved either way */
  conn_t *wprev, *wnext; /* timing wheel slot list */
  int32_t wslot;         /* the wheel slot, or -1 */
  conn_t *next;          /* the add queue, then the list of closed connections */
  conn_t *rnext;         /* the ready list */
};

/* An event, as JS receives it: five doubles (kind, id, a, b, c) and, for an accept, the
 * client's address:
 *   E_END            a bytes in, b bytes out, c reason
 *   E_ACCEPT         a listener id, b client port, c address family (4 or 6)
 *   E_CONNECTED      a microseconds the connect took
 *   E_CONNECT_FAILED a errno (ETIMEDOUT for the connect timeout)
 *   E_ACCEPT_ERROR   a listener id, b errno, c milliseconds the listener pauses (id 0)
 *   E_RELEASED       a the client's descriptor, now JS's (release())
 *   E_UNLISTENED     a listener id: no accept of it comes after this (id 0) */
typedef struct {
  double v[5];
  char addr[INET6_ADDRSTRLEN];
} event_t;

/* A listening socket the relay accepts on. */
typedef struct lsn lsn_t;
struct lsn {
  int fd;              /* the relay's own duplicate */
  uint32_t id;
  uint32_t group;      /* byte counter group of its connections */
  bool paused;         /* out of descriptors or memory: not polled until resume_at */
  int64_t resume_at;
  uint32_t pause_ms;   /* the last pause, doubled while accepts keep failing */
  uint32_t untuned;    /* accepted before its options were set: tune these first ones */
  bool held;           /* JS asked it to stop accepting for now (hold): paused until unhold */
  _Atomic bool stopping; /* unlisten(stop) shut it down: its accept errors are expected */
  lsn_t *next;
};

/* A command JS queued for the relay thread besides add and destroy. */
enum cmd_kind { C_LISTEN, C_UNLISTEN, C_CONNECT, C_RELEASE, C_HOLD, C_UNHOLD };
typedef struct cmd cmd_t;
struct cmd {
  enum cmd_kind kind;
  cmd_t *next;
  lsn_t *lsn;        /* C_LISTEN, C_UNLISTEN */
  uint64_t id;       /* C_CONNECT: the connection */
  struct sockaddr_storage sa;
  socklen_t salen;
  uint32_t timeout_ms, idle_ms;
  uint8_t *initial;  /* written to the backend first (a PROXY header), owned by the command */
  uint32_t initial_len;
};

typedef struct {
  /* Set at creation, then read-only. */
  bool splice_mode;
  bool inline_mode;        /* no thread: turns run on the JS thread's event loop (uv_poll on ep) */
  uint32_t groups;
  int ep;                  /* the epoll set */
  int wake_fd;             /* eventfd: commands wait in the queue */
  _Atomic uint64_t *bytes; /* [2 * group + direction]: bytes written since the last takeBytes */

  /* JS thread only. */
  napi_env env;
  napi_threadsafe_function tsfn; /* NULL once finalized */
  bool tsfn_released;
  bool tsfn_refed;
  napi_ref on_end;
  uint32_t live;    /* connections added or accepted whose end JS has not yet received */
  uint32_t listening; /* listening sockets given with listen() and not taken back */
  uint32_t next_lsn_id;
  struct { uint32_t id; int fd; lsn_t *lsn; } *lsns; /* JS's view of them, for unlisten */
  uint32_t nlsns, lsns_cap;
  bool closed;      /* close() ran, or the environment is going away */
  bool hook_added;
  /* inline: the environment's teardown waits on this hook until both uv handles have closed
   * (their close callbacks are code in this addon, which a worker unloads once it is gone) */
  napi_async_cleanup_hook_handle async_hook;
  int uv_open; /* inline: uv handles initialised and not yet closed */
  bool thread_running; /* started and not yet joined */
  pthread_t thread;
  int refs; /* the JS object and the thread-safe function (inline: the two uv handles) each hold one */
  uv_poll_t poll;   /* inline: ep is readable */
  uv_timer_t timer; /* inline: the next tick or listener resume */
  napi_async_context actx; /* inline: the async context events are delivered in */
  bool poll_refed;

  /* Shared by both threads, under mu. */
  pthread_mutex_t mu;
  uint64_t next_id;
  conn_t *add_head, *add_tail;
  cmd_t *cmd_head, *cmd_tail;
  uint64_t *kills;
  uint32_t nkills, kills_cap;
  bool stop;
  bool woken;   /* wake_fd was written (or, inline, a turn will take them) and they are not yet taken */
  bool in_turn; /* inline: a turn runs now, and takes what JS queues before it returns */
  bool inline_pending; /* inline: JS queued commands during the turn */
  event_t *evs; /* queued events; ev_cap >= nev + promised */
  uint32_t nev, ev_cap;
  /* Events that must find room when they happen: one end per live connection, one result
   * per connect in flight. Room for them is made when they are promised (by add, connect,
   * or the relay thread at accept, where a failure costs only that connection). */
  uint32_t promised;
  bool ends_signalled; /* a thread-safe call is on its way to JS */
  int thread_error;    /* the errno that stopped the relay thread, 0 while it runs */

  /* Relay thread only. */
  conn_t **table; /* id -> connection: open addressing, linear probing */
  uint32_t table_cap, table_count;
  conn_t *ready; /* connections that spent their budget with bytes left to move */
  conn_t *grave; /* closed connections, freed at the end of the turn */
  conn_t *wheel[WHEEL_SLOTS];
  uint32_t wheel_count;
  int64_t wheel_tick; /* the last tick processed */
  int64_t now;        /* monotonic ms, read once per turn */
  uint8_t *buf;       /* the one read buffer (copy mode, and splice mode without a pipe) */
  int pipe_r, pipe_w; /* splice mode: the one pipe, empty between chunks; -1 until made */
  uint32_t pipe_size; /* its capacity */
  uint64_t *spare_kills;
  uint32_t spare_cap;
  bool ends_dirty; /* events were queued this turn */
  bool stopping;
  lsn_t *listeners;   /* the listening sockets it accepts on */
  uint32_t paused;    /* how many of them are paused */
} relay_t;

/* ---------------------------------------------------------------------------------------- */
/* Small helpers                                                                            */

static int64_t now_ms(void) {
  struct timespec ts;
  /* CLOCK_MONOTONIC cannot fail with a valid clock id and pointer. */
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Closes a descriptor. Its result is not acted on: Linux releases the descriptor even when
 * close reports an error (EINTR, EIO), so there is nothing to retry, and a socket or pipe has
 * no write-back that could be lost. */
static void close_fd(int fd) {
  if (fd >= 0) (void)close(fd);
}

static void lock(relay_t *r) { pthread_mutex_lock(&r->mu); }
static void unlock(relay_t *r) { pthread_mutex_unlock(&r->mu); }

/* Writes the eventfd so the relay thread takes the commands. The write cannot fail: the
 * eventfd is open until the thread is joined, and its counter cannot overflow (the thread
 * reads it back to 0 each time; EAGAIN would only mean it is already signalled). */
static void wake(relay_t *r) {
  uint64_t one = 1;
  ssize_t n = write(r->wake_fd, &one, sizeof one);
  (void)n;
}

/* Makes room for `extra` more events besides those queued and promised. Under mu. */
static bool ev_room(relay_t *r, uint32_t extra) {
  uint64_t need = (uint64_t)r->nev + r->promised + extra;
  if (need <= r->ev_cap) return true;
  uint64_t cap = r->ev_cap ? r->ev_cap : 64;
  while (cap < need) cap *= 2;
  if (cap > UINT32_MAX) return false;
  event_t *evs = realloc(r->evs, (size_t)cap * sizeof *evs);
  if (evs == NULL) return false;
  r->evs = evs;
  r->ev_cap = (uint32_t)cap;
  return true;
}

/* Queues an event in room made before. Under mu. */
static event_t *ev_push(relay_t *r, enum event_kind kind, uint64_t id, double a, double b, double c) {
  event_t *e = &r->evs[r->nev++];
  e->v[0] = (double)kind;
  e->v[1] = (double)id;
  e->v[2] = a;
  e->v[3] = b;
  e->v[4] = c;
  e->addr[0] = '\0';
  return e;
}

static int64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---------------------------------------------------------------------------------------- */
/* The id table (relay thread only)                                                         */

static uint32_t hash_id(uint64_t id) { return (uint32_t)((id * 0x9E3779B97F4A7C15ull) >> 32); }

static bool table_grow(relay_t *r) {
  uint32_t cap = r->table_cap ? r->table_cap * 2 : 64;
  conn_t **t = calloc(cap, sizeof *t);
  if (t == NULL) return false;
  for (uint32_t i = 0; i < r->table_cap; i++) {
    conn_t *c = r->table[i];
    if (c == NULL) continue;
    uint32_t j = hash_id(c->id) & (cap - 1);
    while (t[j] != NULL) j = (j + 1) & (cap - 1);
    t[j] = c;
  }
  free(r->table);
  r->table = t;
  r->table_cap = cap;
  return true;
}

static bool table_put(relay_t *r, conn_t *c) {
  if ((r->table_count + 1) * 2 > r->table_cap && !table_grow(r)) return false;
  uint32_t mask = r->table_cap - 1;
  uint32_t i = hash_id(c->id) & mask;
  while (r->table[i] != NULL) i = (i + 1) & mask;
  r->table[i] = c;
  r->table_count++;
  c->in_table = true;
  return true;
}

static conn_t *table_get(relay_t *r, uint64_t id) {
  if (r->table_cap == 0) return NULL;
  uint32_t mask = r->table_cap - 1;
  for (uint32_t i = hash_id(id) & mask; r->table[i] != NULL; i = (i + 1) & mask)
    if (r->table[i]->id == id) return r->table[i];
  return NULL;
}

/* Removes c, then shifts later entries of its run back into the hole where their home slot
 * allows, so lookups never need tombstones. */
static void table_del(relay_t *r, conn_t *c) {
  uint32_t mask = r->table_cap - 1;
  uint32_t i = hash_id(c->id) & mask;
  while (r->table[i] != c) i = (i + 1) & mask;
  r->table[i] = NULL;
  r->table_count--;
  c->in_table = false;
  for (uint32_t j = (i + 1) & mask; r->table[j] != NULL; j = (j + 1) & mask) {
    uint32_t home = hash_id(r->table[j]->id) & mask;
    if (((j - home) & mask) >= ((j - i) & mask)) {
      r->table[i] = r->table[j];
      r->table[j] = NULL;
      i = j;
    }
  }
}

/* ---------------------------------------------------------------------------------------- */
/* The timing wheel (relay thread only)                                                     */

/* Files c in the slot of the tick its idle deadline falls in (at least the next tick). */
static void wheel_file(relay_t *r, conn_t *c) {
  int64_t tick = (c->last_active + c->idle_ms + TICK_MS - 1) / TICK_MS;
  if (tick <= r->wheel_tick) tick = r->wheel_tick + 1;
  uint32_t s = (uint32_t)(tick & (WHEEL_SLOTS - 1));
  c->wslot = (int32_t)s;
  c->wprev = NULL;
  c->wnext = r->wheel[s];
  if (c->wnext != NULL) c->wnext->wprev = c;
  r->wheel[s] = c;
  r->wheel_count++;
}

static void wheel_unfile(relay_t *r, conn_t *c) {
  if (c->wprev != NULL) c->wprev->wnext = c->wnext;
  else r->wheel[c->wslot] = c->wnext;
  if (c->wnext != NULL) c->wnext->wprev = c->wprev;
  c->wslot = -1;
  r->wheel_count--;
}

static void conn_close(relay_t *r, conn_t *c, enum reason why);
static void connect_failed(relay_t *r, conn_t *c, int err);

/* Visits the slots of the ticks that passed: a connection idle for its whole timeout expires;
 * one that moved bytes since it was filed is filed again at its new deadline. Activity itself
 * only writes last_active, so a busy connection costs one visit per timeout. */
static void wheel_advance(relay_t *r) {
  int64_t now_tick = r->now / TICK_MS;
  int64_t t = r->wheel_tick + 1;
  if (now_tick - r->wheel_tick > WHEEL_SLOTS) t = now_tick - WHEEL_SLOTS + 1; /* each slot once */
  for (; t <= now_tick; t++) {
    r->wheel_tick = t;
    uint32_t s = (uint32_t)(t & (WHEEL_SLOTS - 1));
    conn_t *c = r->wheel[s];
    r->wheel[s] = NULL;
    while (c != NULL) {
      conn_t *next = c->wnext;
      c->wslot = -1;
      r->wheel_count--;
      if (c->last_active + c->idle_ms > r->now) wheel_file(r, c);
      else if (c->state == S_CONNECTING) connect_failed(r, c, ETIMEDOUT);
      else conn_close(r, c, R_IDLE_TIMEOUT);
      c = next;
    }
  }
  if (r->wheel_tick < now_tick) r->wheel_tick = now_tick;
}

/* ---------------------------------------------------------------------------------------- */
/* The pipe of splice mode (relay thread only)                                              */

/* Makes the relay's pipe, CHUNK bytes large if the kernel allows (a user past
 * pipe-user-pages-soft gets a smaller one, which works too). False when no pipe can be made
 * (EMFILE...): chunks then move through the read buffer. */
static bool pipe_ready(relay_t *r) {
  if (r->pipe_r >= 0) return true;
  int p[2];
  if (pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0) return false;
  (void)fcntl(p[1], F_SETPIPE_SZ, CHUNK); /* on failure (EPERM) the size below is the default */
  int size = fcntl(p[1], F_GETPIPE_SZ);
  r->pipe_r = p[0];
  r->pipe_w = p[1];
  r->pipe_size = size > 0 && size < CHUNK ? (uint32_t)size : CHUNK;
  return true;
}

/* Closes the pipe (it may hold bytes of a connection that failed): the next chunk makes a
 * new, empty one. */
static void pipe_discard(relay_t *r) {
  close_fd(r->pipe_r);
  close_fd(r->pipe_w);
  r->pipe_r = r->pipe_w = -1;
}

/* ---------------------------------------------------------------------------------------- */
/* Moving bytes (relay thread only)                                                         */

static bool errno_again(void) { return errno == EAGAIN || errno == EWOULDBLOCK; }

static void count(relay_t *r, conn_t *c, int d, size_t n) {
  c->dir[d].bytes += n;
  c->last_active = r->now;
  atomic_fetch_add_explicit(&r->bytes[2 * c->group + (uint32_t)d], n, memory_order_relaxed);
}

static void conn_fail(relay_t *r, conn_t *c, int side) {
  conn_close(r, c, side == CLIENT ? R_CLIENT_ERROR : R_BACKEND_ERROR);
}

static bool waiting(const dir_t *dr) { return dr->off < dr->len; }

/* Writes what waits in direction d's buffer. 1: all written; 0: the destination is full;
 * -1: the connection was closed. */
static int flush_buf(relay_t *r, conn_t *c, int d) {
  dir_t *dr = &c->dir[d];
  int out = c->fd[1 - d];
  while (dr->off < dr->len) {
    ssize_t m = send(out, dr->buf + dr->off, dr->len - dr->off, MSG_NOSIGNAL);
    if (m < 0) {
      if (errno == EINTR) continue;
      if (errno_again()) {
        c->writable[1 - d] = false;
        return 0;
      }
      conn_fail(r, c, 1 - d);
      return -1;
    }
    dr->off += (uint32_t)m;
    if (dr->initial) c->last_active = r->now;
    else count(r, c, d, (size_t)m);
  }
  free(dr->buf);
  dr->buf = NULL;
  dr->off = dr->len = 0;
  dr->initial = false;
  return 1;
}

/* Notes the FIN of side d. */
static void saw_eof(conn_t *c, int d) {
  c->dir[d].eof = true;
  if (c->first_fin < 0) c->first_fin = (int8_t)d;
}

/* Reads a chunk from side d into the read buffer and writes it on at once; a remainder the
 * destination does not take is copied aside and waits. 1: progress (bytes or the FIN);
 * 0: the source is empty; -1: the connection was closed. */
static int read_buf(relay_t *r, conn_t *c, int d) {
  dir_t *dr = &c->dir[d];
  ssize_t n = recv(c->fd[d], r->buf, CHUNK, 0);
  if (n < 0) {
    if (errno == EINTR) return 1;
    if (errno_again()) {
      c->readable[d] = false;
      return 0;
    }
    conn_fail(r, c, d);
    return -1;
  }
  if (n == 0) {
    saw_eof(c, d);
    return 1;
  }
  c->last_active = r->now;
  /* A short read emptied the socket: edge-triggered epoll reports what comes next, so no
   * second recv to hear EAGAIN. Unless its FIN has arrived: that is read next. */
  if ((size_t)n < CHUNK && !c->rdhup[d]) c->readable[d] = false;
  ssize_t m = send(c->fd[1 - d], r->buf, (size_t)n, MSG_NOSIGNAL);
  if (m < 0) {
    if (errno_again()) c->writable[1 - d] = false;
    else if (errno != EINTR) {
      conn_fail(r, c, 1 - d);
      return -1;
    }
    m = 0;
  }
  if (m > 0) count(r, c, d, (size_t)m);
  if (m < n) {
    dr->buf = malloc((size_t)(n - m));
    if (dr->buf == NULL) {
      conn_close(r, c, R_DESTROYED);
      return -1;
    }
    memcpy(dr->buf, r->buf + m, (size_t)(n - m));
    dr->off = 0;
    dr->len = (uint32_t)(n - m);
  }
  return 1;
}

/* Splice mode: moves a chunk from side d into the relay's pipe and on into the destination
 * without copying it; what the destination does not take is read back out of the pipe into
 * the direction's buffer, where it waits, so the pipe is empty again for the next chunk.
 * Same results as read_buf. */
static int read_pipe(relay_t *r, conn_t *c, int d) {
  dir_t *dr = &c->dir[d];
  if (!pipe_ready(r)) return read_buf(r, c, d);
  /* The pipe is empty, so EAGAIN means the socket has nothing to read. */
  ssize_t n = splice(c->fd[d], NULL, r->pipe_w, NULL, r->pipe_size, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
  if (n < 0) {
    if (errno == EINTR) return 1;
    if (errno_again()) {
      c->readable[d] = false;
      return 0;
    }
    conn_fail(r, c, d);
    return -1;
  }
  if (n == 0) {
    saw_eof(c, d);
    return 1;
  }
  c->last_active = r->now;
  if ((size_t)n < r->pipe_size && !c->rdhup[d]) c->readable[d] = false; /* as in read_buf */
  size_t in_pipe = (size_t)n;
  while (in_pipe > 0) {
    ssize_t m = splice(r->pipe_r, NULL, c->fd[1 - d], NULL, in_pipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (m < 0 && errno == EINTR) continue;
    if (m < 0 && errno_again()) {
      c->writable[1 - d] = false;
      break;
    }
    if (m <= 0) { /* the destination failed (0: a pipe that lost its bytes, never expected) */
      pipe_discard(r);
      if (m < 0) conn_fail(r, c, 1 - d);
      else conn_close(r, c, R_DESTROYED);
      return -1;
    }
    in_pipe -= (size_t)m;
    count(r, c, d, (size_t)m);
  }
  if (in_pipe == 0) return 1;
  /* The destination is full: the rest waits in the direction's own buffer. */
  dr->buf = malloc(in_pipe);
  if (dr->buf == NULL) {
    pipe_discard(r);
    conn_close(r, c, R_DESTROYED);
    return -1;
  }
  size_t got = 0;
  while (got < in_pipe) {
    ssize_t k = read(r->pipe_r, dr->buf + got, in_pipe - got);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) { /* cannot happen with the bytes in the pipe; never leave them there */
      pipe_discard(r);
      conn_close(r, c, R_DESTROYED);
      return -1;
    }
    got += (size_t)k;
  }
  dr->off = 0;
  dr->len = (uint32_t)in_pipe;
  return 1;
}

/* Passes side d's FIN on to the other side once nothing waits before it; closes the
 * connection when both directions are done. False when the connection was closed. */
static bool pass_fin(relay_t *r, conn_t *c, int d) {
  dir_t *dr = &c->dir[d];
  if (dr->shut) return true;
  dr->shut = true;
  if (c->dir[1 - d].shut) {
    /* The last FIN: close() sends it, both sockets having been read to their end (nothing
     * unread, so no reset). */
    conn_close(r, c, c->first_fin == BACKEND ? R_BACKEND_CLOSED : R_CLIENT_CLOSED);
    return false;
  }
  if (shutdown(c->fd[1 - d], SHUT_WR) < 0) { /* ENOTCONN: the other side was reset */
    conn_fail(r, c, 1 - d);
    return false;
  }
  return true;
}

/* Moves direction d as far as it goes: what waits first, then chunks read from the source,
 * until the source is empty, the destination is full, or the budget is spent (then *more is
 * set and the connection gets another turn after the others). False when it was closed. */
static bool pump(relay_t *r, conn_t *c, int d, bool *more) {
  dir_t *dr = &c->dir[d];
  for (int budget = BUDGET;;) {
    if (waiting(dr)) {
      if (!c->writable[1 - d]) return true;
      int rc = flush_buf(r, c, d);
      if (rc < 0) return false;
      if (rc == 0) return true;
    }
    if (dr->eof) return pass_fin(r, c, d);
    if (!c->readable[d]) return true;
    if (budget-- == 0) {
      *more = true;
      return true;
    }
    int rc = r->splice_mode ? read_pipe(r, c, d) : read_buf(r, c, d);
    if (rc < 0) return false;
    if (rc == 0) return true;
  }
}

/* Gives a connection its turn: both directions. */
static void run(relay_t *r, conn_t *c) {
  bool more = false;
  if (!pump(r, c, CLIENT, &more)) return;
  if (!pump(r, c, BACKEND, &more)) return;
  if (more && !c->queued) {
    c->queued = true;
    c->rnext = r->ready;
    r->ready = c;
  }
}

/* Runs the connections that spent their budget last turn. */
static void run_ready(relay_t *r) {
  conn_t *c = r->ready;
  r->ready = NULL;
  while (c != NULL) {
    conn_t *next = c->rnext;
    c->queued = false;
    if (!c->closed) run(r, c);
    c = next;
  }
}

/* An epoll event on one side of a connection. */
static void connect_done(relay_t *r, conn_t *c, uint32_t events);

static void conn_event(relay_t *r, conn_t *c, int side, uint32_t events) {
  if (c->closed) return;
  if (c->state != S_RELAY) {
    /* An accepted client waits for its backend: its bytes and FIN wait in the kernel until
     * then; only a reset ends it now. A FIN that came is noted, for the first reads. */
    if (events & (EPOLLRDHUP | EPOLLHUP)) c->rdhup[side] = true;
    if (side == CLIENT) {
      if (events & (EPOLLERR | EPOLLHUP)) conn_close(r, c, R_CLIENT_ABORTED);
    } else if (c->state == S_CONNECTING) {
      connect_done(r, c, events);
    }
    return;
  }
  if (events & EPOLLERR) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd[side], SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
    if (err != 0) {
      conn_fail(r, c, side);
      return;
    }
  }
  if (events & (EPOLLRDHUP | EPOLLHUP)) c->rdhup[side] = true;
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) c->readable[side] = true;
  if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) c->writable[side] = true;
  if (!c->queued) run(r, c);
}

/* ---------------------------------------------------------------------------------------- */
/* Connection life (relay thread)                                                           */

/* Takes a connection JS added: registers both sides (edge-triggered) and gives it a first
 * turn, which writes the initial bytes and reads what is already there. */
static void conn_start(relay_t *r, conn_t *c) {
  c->last_active = r->now;
  if (!table_put(r, c)) {
    conn_close(r, c, R_DESTROYED);
    return;
  }
  for (int side = CLIENT; side <= BACKEND; side++) {
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET};
    ev.data.u64 = (uint64_t)(uintptr_t)c | (uint64_t)side;
    if (epoll_ctl(r->ep, EPOLL_CTL_ADD, c->fd[side], &ev) < 0) {
      if (errno == EBADF || errno == EPERM) conn_fail(r, c, side); /* not a usable socket */
      else conn_close(r, c, R_DESTROYED);                          /* ENOMEM, ENOSPC */
      return;
    }
    c->registered[side] = true;
  }
  if (c->idle_ms > 0) wheel_file(r, c);
  run(r, c);
}

/* Closes both sides now, frees what the connection holds and queues its end for JS. The
 * struct itself is freed at the end of the turn (events later in this turn may name it). */
static void conn_close(relay_t *r, conn_t *c, enum reason why) {
  if (c->closed) return;
  c->closed = true;
  for (int side = CLIENT; side <= BACKEND; side++) {
    /* Explicitly, since JS may still hold the original descriptor of the same socket (the
     * registration would outlive ours). Removing a registered descriptor cannot fail. */
    if (c->registered[side] && !c->owned) (void)epoll_ctl(r->ep, EPOLL_CTL_DEL, c->fd[side], NULL);
    close_fd(c->fd[side]); /* the last descriptor of the socket: it leaves the epoll set */
    c->fd[side] = -1;
    dir_t *dr = &c->dir[side];
    free(dr->buf);
    dr->buf = NULL;
    dr->off = dr->len = 0;
  }
  if (c->in_table && !r->stopping) table_del(r, c);
  if (c->wslot >= 0) wheel_unfile(r, c);
  lock(r);
  /* Room was made when the connection was added or accepted (its promised end). */
  ev_push(r, E_END, c->id, (double)c->dir[CLIENT].bytes, (double)c->dir[BACKEND].bytes, (double)why);
  r->promised--;
  if (c->state == S_CONNECTING) r->promised--; /* the connect's result will not come */
  unlock(r);
  r->ends_dirty = true;
  c->next = r->grave;
  r->grave = c;
}

/* Frees the connections closed this turn, except those still in the ready list (freed the
 * turn after, once run_ready has taken them out). */
static void bury(relay_t *r) {
  conn_t *keep = NULL;
  conn_t *c = r->grave;
  while (c != NULL) {
    conn_t *next = c->next;
    if (c->queued) {
      c->next = keep;
      keep = c;
    } else {
      free(c);
    }
    c = next;
  }
  r->grave = keep;
}

/* ---------------------------------------------------------------------------------------- */
/* Accepting and connecting (relay thread)                                                  */

/* The socket options every proxied connection gets (as Node's sockets in sluice): no Nagle
 * delay, and keep-alive probes after a minute of silence so dead peers are found. Failures
 * are not fatal: the connection works without them. */
static void tune(int fd) {
  int one = 1, idle = KEEPALIVE_IDLE_S;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  (void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
}

/* Stops polling a listener that cannot accept for want of descriptors or memory, for a pause
 * that doubles while it keeps failing; JS hears of it (once per pause) to count and log it. */
static void lsn_pause(relay_t *r, lsn_t *l, int err) {
  struct epoll_event ev = {.events = 0, .data.u64 = (uint64_t)(uintptr_t)l | 2};
  (void)epoll_ctl(r->ep, EPOLL_CTL_MOD, l->fd, &ev);
  l->pause_ms = l->pause_ms == 0 ? ACCEPT_PAUSE_MIN_MS : l->pause_ms * 2;
  if (l->pause_ms > ACCEPT_PAUSE_MAX_MS) l->pause_ms = ACCEPT_PAUSE_MAX_MS;
  l->paused = true;
  l->resume_at = r->now + l->pause_ms;
  r->paused++;
  lock(r);
  if (ev_room(r, 1)) ev_push(r, E_ACCEPT_ERROR, 0, (double)l->id, (double)err, (double)l->pause_ms);
  unlock(r);
  r->ends_dirty = true;
}

/* Polls the paused listeners whose pause is over again. */
static void lsn_resume(relay_t *r) {
  for (lsn_t *l = r->listeners; l != NULL && r->paused > 0; l = l->next) {
    if (!l->paused || l->held || l->resume_at > r->now) continue;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)(uintptr_t)l | 2};
    (void)epoll_ctl(r->ep, EPOLL_CTL_MOD, l->fd, &ev);
    l->paused = false;
    r->paused--;
  }
}

/* Takes one accepted connection: it waits (registered for a reset only) until JS names its
 * backend. When there is no memory for it, it is closed at once (the client sees a reset). */
static void accept_one(relay_t *r, lsn_t *l, int fd, const struct sockaddr_storage *sa) {
  conn_t *c = calloc(1, sizeof *c);
  if (c == NULL) {
    close_fd(fd);
    return;
  }
  c->fd[CLIENT] = fd;
  c->fd[BACKEND] = -1;
  c->first_fin = -1;
  c->wslot = -1;
  c->group = l->group;
  c->state = S_WAIT;
  c->owned = true;
  c->last_active = r->now;
  /* Linux gives an accepted socket the listening socket's options (relay_listen); only those
   * that were already queued when they were set need their own. */
  if (l->untuned > 0) {
    l->untuned--;
    tune(fd);
  }
  uint16_t port = 0;
  int family = 4;
  lock(r);
  if (!ev_room(r, 2)) { /* the accept, and the end it promises */
    unlock(r);
    close_fd(fd);
    free(c);
    return;
  }
  c->id = ++r->next_id;
  event_t *e = ev_push(r, E_ACCEPT, c->id, (double)l->id, 0, 4);
  if (sa->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)sa;
    port = ntohs(a->sin6_port);
    family = 6;
    inet_ntop(AF_INET6, &a->sin6_addr, e->addr, sizeof e->addr);
  } else if (sa->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)sa;
    port = ntohs(a->sin_port);
    inet_ntop(AF_INET, &a->sin_addr, e->addr, sizeof e->addr);
  }
  e->v[3] = port;
  e->v[4] = family;
  r->promised++;
  unlock(r);
  r->ends_dirty = true;
  if (!table_put(r, c)) {
    conn_close(r, c, R_DESTROYED);
    return;
  }
  /* Registered once for good: while it waits only a reset is acted on, and once connected
   * the relay reads and writes until EAGAIN before it waits for an edge. */
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET};
  ev.data.u64 = (uint64_t)(uintptr_t)c | (uint64_t)CLIENT;
  if (epoll_ctl(r->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
    conn_close(r, c, R_DESTROYED);
    return;
  }
  c->registered[CLIENT] = true;
}

/* The listening socket is readable: accepts what waits, up to a batch (level-triggered, so
 * the rest comes next turn). */
static void lsn_event(relay_t *r, lsn_t *l) {
  if (l->paused) return;
  for (int i = 0; i < ACCEPT_BATCH; i++) {
    struct sockaddr_storage sa;
    socklen_t len = sizeof sa;
    int fd = accept4(l->fd, (struct sockaddr *)&sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO) continue;
      if (errno_again()) return;
      if (atomic_load(&l->stopping)) { /* shut down by unlisten(stop): goes with its command */
        struct epoll_event ev = {.events = 0, .data.u64 = (uint64_t)(uintptr_t)l | 2};
        (void)epoll_ctl(r->ep, EPOLL_CTL_MOD, l->fd, &ev);
        return;
      }
      /* EMFILE, ENFILE, ENOBUFS, ENOMEM, or a socket error: pause and retry. */
      lsn_pause(r, l, errno);
      return;
    }
    l->pause_ms = 0;
    accept_one(r, l, fd, &sa);
  }
}

/* Queues a connect result. */
static void connect_result(relay_t *r, conn_t *c, enum event_kind kind, double a) {
  lock(r);
  ev_push(r, kind, c->id, a, 0, 0);
  r->promised--;
  unlock(r);
  r->ends_dirty = true;
}

/* Drops the backend socket of a failed connect; the client waits for JS again. */
static void connect_failed(relay_t *r, conn_t *c, int err) {
  if (c->wslot >= 0) wheel_unfile(r, c);
  if (c->registered[BACKEND]) (void)epoll_ctl(r->ep, EPOLL_CTL_DEL, c->fd[BACKEND], NULL);
  c->registered[BACKEND] = false;
  c->rdhup[BACKEND] = false;
  close_fd(c->fd[BACKEND]);
  c->fd[BACKEND] = -1;
  dir_t *dr = &c->dir[CLIENT];
  free(dr->buf);
  dr->buf = NULL;
  dr->off = dr->len = 0;
  dr->initial = false;
  c->state = S_WAIT;
  c->idle_ms = 0;
  connect_result(r, c, E_CONNECT_FAILED, (double)err);
}

/* Registers one side for every event, edge-triggered. False when it failed (then closed). */
static bool conn_register(relay_t *r, conn_t *c, int side) {
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET};
  ev.data.u64 = (uint64_t)(uintptr_t)c | (uint64_t)side;
  if (epoll_ctl(r->ep, EPOLL_CTL_ADD, c->fd[side], &ev) < 0) {
    conn_close(r, c, R_DESTROYED);
    return false;
  }
  c->registered[side] = true;
  return true;
}

/* The backend connection is made: relay both ways from now on. */
static void connected(relay_t *r, conn_t *c) {
  if (c->wslot >= 0) wheel_unfile(r, c);
  c->state = S_RELAY;
  connect_result(r, c, E_CONNECTED, (double)(now_us() - c->connect_started));
  for (int side = CLIENT; side <= BACKEND; side++) {
    if (!c->registered[side] && !conn_register(r, c, side)) return;
    /* What came while connecting has not been read: try both ways until EAGAIN. */
    c->readable[side] = c->writable[side] = true;
  }
  c->idle_ms = c->relay_idle_ms;
  c->last_active = r->now;
  if (c->idle_ms > 0) wheel_file(r, c);
  run(r, c);
}

/* The backend socket of a connect in flight has an event: made, or failed. */
static void connect_done(relay_t *r, conn_t *c, uint32_t events) {
  if (!(events & (EPOLLERR | EPOLLHUP))) {
    if (events & EPOLLOUT) connected(r, c); /* writable and no error: made */
    return;
  }
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(c->fd[BACKEND], SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
  connect_failed(r, c, err != 0 ? err : ECONNRESET);
}

/* Starts the backend connect JS asked for (the connection may have ended meanwhile). */
static void conn_connect(relay_t *r, cmd_t *cmd) {
  conn_t *c = table_get(r, cmd->id);
  if (c == NULL || c->closed || c->state != S_WAIT) {
    lock(r);
    r->promised--; /* its result will not come */
    unlock(r);
    return;
  }
  c->relay_idle_ms = cmd->idle_ms;
  c->connect_started = now_us();
  c->state = S_CONNECTING;
  int fd = socket(cmd->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    connect_failed(r, c, errno);
    return;
  }
  c->fd[BACKEND] = fd;
  tune(fd);
  if (cmd->initial != NULL) {
    c->dir[CLIENT].buf = cmd->initial;
    c->dir[CLIENT].off = 0;
    c->dir[CLIENT].len = cmd->initial_len;
    c->dir[CLIENT].initial = true;
    cmd->initial = NULL;
  }
  int rc;
  do rc = connect(fd, (struct sockaddr *)&cmd->sa, cmd->salen);
  while (rc < 0 && errno == EINTR);
  if (rc < 0 && errno != EINPROGRESS) {
    connect_failed(r, c, errno);
    return;
  }
  if (rc == 0) {
    connected(r, c);
    return;
  }
  /* Registered for good: EPOLLOUT's edge says the connect is done, either way. */
  struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET};
  ev.data.u64 = (uint64_t)(uintptr_t)c | (uint64_t)BACKEND;
  if (epoll_ctl(r->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
    connect_failed(r, c, errno);
    return;
  }
  c->registered[BACKEND] = true;
  c->idle_ms = cmd->timeout_ms > 0 ? cmd->timeout_ms : 1;
  c->last_active = r->now;
  wheel_file(r, c);
}

/* Starts accepting on a listening socket JS gave. */
static void lsn_start(relay_t *r, lsn_t *l) {
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)(uintptr_t)l | 2};
  if (epoll_ctl(r->ep, EPOLL_CTL_ADD, l->fd, &ev) < 0) {
    /* Not a socket epoll takes: JS's unlisten still gets its duplicate back. */
    l->paused = false;
  }
  l->next = r->listeners;
  r->listeners = l;
}

/* Stops accepting on one and closes the relay's descriptor of it. */
static void lsn_stop(relay_t *r, lsn_t *l) {
  for (lsn_t **p = &r->listeners; *p != NULL; p = &(*p)->next) {
    if (*p != l) continue;
    *p = l->next;
    break;
  }
  if (l->paused) r->paused--;
  (void)epoll_ctl(r->ep, EPOLL_CTL_DEL, l->fd, NULL);
  close_fd(l->fd);
  free(l);
}

/* Stops polling a listener until JS lets it go again (hold), or lets it go (unhold). */
static void lsn_hold(relay_t *r, lsn_t *l, bool hold) {
  bool listed = false;
  for (lsn_t *x = r->listeners; x != NULL; x = x->next) listed = listed || x == l;
  if (!listed || l->held == hold) return;
  l->held = hold;
  if (hold) {
    if (!l->paused) {
      struct epoll_event ev = {.events = 0, .data.u64 = (uint64_t)(uintptr_t)l | 2};
      (void)epoll_ctl(r->ep, EPOLL_CTL_MOD, l->fd, &ev);
      l->paused = true;
      r->paused++;
    }
  } else {
    l->pause_ms = 0;
    l->resume_at = r->now; /* polled again at once (lsn_resume, this turn) */
  }
}

/* Hands an accepted connection that waits for its backend back to JS: its descriptor is
 * JS's from now on (the end it promised is replaced by this event). */
static void conn_release(relay_t *r, uint64_t id) {
  conn_t *c = table_get(r, id);
  if (c == NULL || c->closed || c->state != S_WAIT) return; /* ended meanwhile: its end comes */
  if (c->registered[CLIENT]) (void)epoll_ctl(r->ep, EPOLL_CTL_DEL, c->fd[CLIENT], NULL);
  table_del(r, c);
  lock(r);
  ev_push(r, E_RELEASED, c->id, (double)c->fd[CLIENT], 0, 0);
  r->promised--;
  unlock(r);
  r->ends_dirty = true;
  free(c);
}

/* Runs the commands JS queued besides add and destroy, in order. */
static void run_cmds(relay_t *r, cmd_t *cmd) {
  while (cmd != NULL) {
    cmd_t *next = cmd->next;
    if (cmd->kind == C_LISTEN) lsn_start(r, cmd->lsn);
    else if (cmd->kind == C_UNLISTEN) {
      uint32_t id = cmd->lsn->id;
      lsn_stop(r, cmd->lsn);
      lock(r);
      if (ev_room(r, 1)) ev_push(r, E_UNLISTENED, 0, (double)id, 0, 0);
      unlock(r);
      r->ends_dirty = true;
    } else if (cmd->kind == C_RELEASE) conn_release(r, cmd->id);
    else if (cmd->kind == C_HOLD || cmd->kind == C_UNHOLD) lsn_hold(r, cmd->lsn, cmd->kind == C_HOLD);
    else conn_connect(r, cmd);
    free(cmd->initial);
    free(cmd);
    cmd = next;
  }
}

/* Tells JS that events wait, unless a call is already on its way (it takes them all). */
static void report(relay_t *r) {
  if (!r->ends_dirty) return;
  r->ends_dirty = false;
  lock(r);
  bool call = !r->ends_signalled && r->nev > 0;
  if (call) r->ends_signalled = true;
  unlock(r);
  /* napi_closing only while the environment is going away: its ends are then dropped. */
  if (call) napi_call_threadsafe_function(r->tsfn, NULL, napi_tsfn_nonblocking);
}

/* Takes what JS queued: new connections first, then destroy requests (so a destroy right
 * after an add finds its connection), then a stop. */
static void take_commands(relay_t *r) {
  uint64_t v;
  /* Resets the counter; EAGAIN (already reset) is the only possible failure. */
  ssize_t n = read(r->wake_fd, &v, sizeof v);
  (void)n;
  lock(r);
  conn_t *adds = r->add_head;
  r->add_head = r->add_tail = NULL;
  cmd_t *cmds = r->cmd_head;
  r->cmd_head = r->cmd_tail = NULL;
  uint64_t *kills = r->kills;
  uint32_t nkills = r->nkills, cap = r->kills_cap;
  r->kills = r->spare_kills;
  r->kills_cap = r->spare_cap;
  r->nkills = 0;
  r->spare_kills = kills;
  r->spare_cap = cap;
  bool stop = r->stop;
  r->woken = false;
  unlock(r);
  while (adds != NULL) {
    conn_t *next = adds->next;
    adds->next = NULL;
    conn_start(r, adds);
    adds = next;
  }
  run_cmds(r, cmds);
  for (uint32_t i = 0; i < nkills; i++) {
    /* An id, shifted left by one; the low bit asks for a reset towards the client. */
    conn_t *c = table_get(r, kills[i] >> 1);
    if (c == NULL) continue;
    if ((kills[i] & 1) && c->fd[CLIENT] >= 0) {
      struct linger lg = {.l_onoff = 1, .l_linger = 0};
      (void)setsockopt(c->fd[CLIENT], SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    conn_close(r, c, R_DESTROYED);
  }
  if (stop) r->stopping = true;
}

/* Closes every connection (reason destroyed), including those JS added that the thread had
 * not yet taken. Called once, as the thread ends. */
static void close_all(relay_t *r) {
  r->stopping = true;
  lock(r);
  conn_t *adds = r->add_head;
  r->add_head = r->add_tail = NULL;
  cmd_t *cmds = r->cmd_head;
  r->cmd_head = r->cmd_tail = NULL;
  unlock(r);
  while (adds != NULL) {
    conn_t *next = adds->next;
    conn_close(r, adds, R_DESTROYED);
    adds = next;
  }
  while (cmds != NULL) { /* listeners given are closed below; connects are moot */
    cmd_t *next = cmds->next;
    if (cmds->kind == C_LISTEN) lsn_start(r, cmds->lsn);
    else if (cmds->kind == C_UNLISTEN) lsn_stop(r, cmds->lsn);
    free(cmds->initial);
    free(cmds);
    cmds = next;
  }
  while (r->listeners != NULL) lsn_stop(r, r->listeners);
  for (uint32_t i = 0; i < r->table_cap; i++) {
    if (r->table[i] != NULL) conn_close(r, r->table[i], R_DESTROYED);
    r->table[i] = NULL;
  }
  r->table_count = 0;
  for (conn_t *c = r->ready; c != NULL; c = c->rnext) c->queued = false;
  r->ready = NULL;
  bury(r);
}

/* epoll_wait's timeout: none while connections wait for a turn, until the next tick while
 * some have an idle timeout, else forever. */
static int next_timeout(const relay_t *r) {
  if (r->ready != NULL) return 0;
  int64_t now = now_ms();
  bool timed = false;
  int64_t ms = 0;
  if (r->wheel_count > 0) {
    timed = true;
    ms = (r->wheel_tick + 1) * TICK_MS - now;
  }
  for (const lsn_t *l = r->listeners; l != NULL && r->paused > 0; l = l->next) {
    if (!l->paused || l->held) continue; /* a held listener waits for JS, not for a time */
    if (!timed || l->resume_at - now < ms) ms = l->resume_at - now;
    timed = true;
  }
  if (!timed) return -1;
  return ms < 1 ? 1 : (int)ms;
}

/* One turn over what epoll reported: commands first (a hold or a destroy JS asked for applies
 * before this turn's events), then the events, the connections waiting for their turn, the
 * timing wheel, and the freeing of what closed. */
static void turn(relay_t *r, const struct epoll_event *evs, int n, bool cmds) {
  for (int i = 0; i < n && !cmds; i++)
    if (evs[i].data.u64 == 0) cmds = true;
  if (cmds) take_commands(r);
  for (int i = 0; i < n; i++) {
    uint64_t tag = evs[i].data.u64;
    if (tag == 0) continue;
    if (tag & 2) lsn_event(r, (lsn_t *)(uintptr_t)(tag & ~(uint64_t)3));
    else conn_event(r, (conn_t *)(uintptr_t)(tag & ~(uint64_t)1), (int)(tag & 1), evs[i].events);
  }
  if (r->paused > 0) lsn_resume(r);
  run_ready(r);
  if (r->wheel_count > 0) wheel_advance(r);
  else r->wheel_tick = r->now / TICK_MS;
  bury(r);
}

/* The relay thread. */
static void *relay_main(void *arg) {
  relay_t *r = arg;
  struct epoll_event evs[MAX_EVENTS];
  r->now = now_ms();
  r->wheel_tick = r->now / TICK_MS;
  int error = 0;
  while (!r->stopping) {
    int n = epoll_wait(r->ep, evs, MAX_EVENTS, next_timeout(r));
    if (n < 0) {
      if (errno == EINTR) continue;
      error = errno; /* EBADF, EFAULT, EINVAL: cannot go on */
      break;
    }
    r->now = now_ms();
    turn(r, evs, n, false);
    report(r);
  }
  if (error != 0) {
    lock(r);
    r->thread_error = error;
    unlock(r);
  }
  close_all(r);
  /* After a stop JS takes the ends itself, once it has joined this thread. */
  if (error != 0) report(r);
  return NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* N-API glue (JS thread)                                                                   */

/* Throws `message: strerror(err)` with the errno name (EMFILE...) as the error's code. */
static void throw_errno(napi_env env, int err, const char *message) {
  char text[256], why[128];
  snprintf(text, sizeof text, "%s: %s", message, strerror_r(err, why, sizeof why));
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 32)
  const char *name = strerrorname_np(err);
#else
  const char *name = NULL;
#endif
  napi_throw_error(env, name != NULL ? name : "ERR_RELAY_SYSTEM", text);
}

/* Makes sure a failed N-API call leaves an exception for JS to see. */
static void throw_last(napi_env env) {
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) return;
  const napi_extended_error_info *info = NULL;
  napi_get_last_error_info(env, &info);
  const char *msg = info != NULL && info->error_message != NULL ? info->error_message : "N-API call failed";
  napi_throw_error(env, "ERR_RELAY_NAPI", msg);
}

#define NAPI_CALL(env, call)  \
  do {                        \
    if ((call) != napi_ok) {  \
      throw_last(env);        \
      return NULL;            \
    }                         \
  } while (0)

/* Has what JS just queued taken: by the relay thread (the eventfd wakes it), or inline by
 * the turn running now (it takes them before it returns) or by the next one (the eventfd
 * makes ep readable). Nothing when that is already under way. Under mu; unlocks. */
static void signal_queued(relay_t *r) {
  bool need_wake = !r->woken;
  r->woken = true;
  if (need_wake && r->inline_mode && r->in_turn) {
    r->inline_pending = true;
    need_wake = false;
  }
  unlock(r);
  if (need_wake) wake(r);
}

static void relay_free(relay_t *r) {
  close_fd(r->pipe_r);
  close_fd(r->pipe_w);
  close_fd(r->ep);
  close_fd(r->wake_fd);
  free(r->table);
  free(r->buf);
  free(r->evs);
  free(r->lsns);
  free(r->kills);
  free(r->spare_kills);
  free((void *)r->bytes);
  pthread_mutex_destroy(&r->mu);
  free(r);
}

static void relay_unref(relay_t *r) {
  if (--r->refs == 0) relay_free(r);
}

/* Keeps the event loop alive while the relay holds connections or listening sockets. */
static void update_ref(napi_env env, relay_t *r) {
  bool want = r->live > 0 || r->listening > 0;
  if (r->inline_mode) {
    if (r->closed || want == r->poll_refed) return;
    if (want) uv_ref((uv_handle_t *)&r->poll);
    else uv_unref((uv_handle_t *)&r->poll);
    r->poll_refed = want;
    return;
  }
  if (r->tsfn_released) return;
  if (want == r->tsfn_refed) return;
  if ((want ? napi_ref_threadsafe_function(env, r->tsfn) : napi_unref_threadsafe_function(env, r->tsfn)) == napi_ok) r->tsfn_refed = want;
}

/* Hands the queued events to `cb` as one Float64Array of [kind, id, a, b, c] * n and an array
 * of the accepted clients' addresses, one per accept event, in order. */
static void deliver_ends(napi_env env, relay_t *r, napi_value cb, bool from_loop) {
  napi_value ab, arr, addrs, argv[2], undefined;
  void *data = NULL;
  lock(r);
  uint32_t n = r->nev;
  r->ends_signalled = false;
  if (n == 0 || napi_create_arraybuffer(env, (size_t)n * 5 * sizeof(double), &data, &ab) != napi_ok ||
      napi_create_array(env, &addrs) != napi_ok) {
    unlock(r); /* nothing, or no memory: the events stay queued for the next call */
    return;
  }
  double *out = data;
  uint32_t naddrs = 0, accepts = 0, ends = 0;
  for (uint32_t i = 0; i < n; i++) {
    const event_t *e = &r->evs[i];
    memcpy(out + 5 * (size_t)i, e->v, sizeof e->v);
    if (e->v[0] == E_END || e->v[0] == E_RELEASED) ends++;
    if (e->v[0] != E_ACCEPT) continue;
    accepts++;
    napi_value s;
    if (napi_create_string_latin1(env, e->addr, NAPI_AUTO_LENGTH, &s) == napi_ok) napi_set_element(env, addrs, naddrs, s);
    naddrs++;
  }
  r->nev = 0;
  unlock(r);
  r->live += accepts;
  r->live -= ends;
  update_ref(env, r);
  if (napi_create_typedarray(env, napi_float64_array, (size_t)n * 5, ab, 0, &arr) != napi_ok) return;
  if (napi_get_undefined(env, &undefined) != napi_ok) return;
  argv[0] = arr;
  argv[1] = addrs;
  if (!from_loop) {
    /* An exception thrown by cb propagates as any callback's would. */
    napi_call_function(env, undefined, cb, 2, argv, NULL);
    return;
  }
  /* Called from the event loop (inline): as a callback of its own, so microtasks run after
   * it, and an exception thrown by cb is an uncaught exception, as in any event handler. */
  napi_value global;
  if (napi_get_global(env, &global) != napi_ok) return;
  if (napi_make_callback(env, r->actx, global, cb, 2, argv, NULL) == napi_pending_exception) {
    napi_value err;
    if (napi_get_and_clear_last_exception(env, &err) == napi_ok) napi_fatal_exception(env, err);
  }
}

/* The thread-safe function's call on the JS thread (env is NULL while it is torn down). */
static void tsfn_call(napi_env env, napi_value js_cb, void *context, void *data) {
  (void)data;
  if (env == NULL || js_cb == NULL) return;
  deliver_ends(env, context, js_cb, false);
}

static void tsfn_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  relay_t *r = data;
  r->tsfn = NULL;
  r->tsfn_released = true;
  relay_unref(r);
}

static void inline_timer(uv_timer_t *h);

/* ---------------------------------------------------------------------------------------- */
/* Inline: the turns on the JS thread's own event loop                                      */

/* Runs turns until nothing is left to do now: each turn's events go to JS at once, and what
 * JS asks for in return (a backend connect for an accept, say) is taken by the next turn in
 * the same call, without waking any thread. Bounded, so the event loop gets its turn too. */
static void inline_run(relay_t *r) {
  if (r->closed) return;
  struct epoll_event evs[MAX_EVENTS];
  napi_handle_scope scope;
  if (napi_open_handle_scope(r->env, &scope) != napi_ok) return;
  napi_value cb = NULL;
  if (r->on_end != NULL) napi_get_reference_value(r->env, r->on_end, &cb);
  for (int round = 0; round < 16 && !r->closed; round++) {
    int n = epoll_wait(r->ep, evs, MAX_EVENTS, 0);
    if (n < 0) n = 0; /* EINTR; EBADF and the like cannot happen on the relay's own epoll set */
    lock(r);
    bool cmds = r->inline_pending;
    r->inline_pending = false;
    r->in_turn = true;
    unlock(r);
    r->now = now_ms();
    turn(r, evs, n, cmds);
    if (r->nev > 0 && cb != NULL) deliver_ends(r->env, r, cb, true);
    lock(r);
    r->in_turn = false;
    bool more = r->inline_pending;
    unlock(r);
    /* A connect just made on loopback is often complete already, and a client's first bytes
     * there: one more look takes them in this call rather than after another sleep. */
    if (!more && !cmds && n < MAX_EVENTS && r->ready == NULL) break;
  }
  napi_close_handle_scope(r->env, scope);
  if (r->closed) return;
  lock(r);
  bool pending = r->inline_pending; /* out of rounds: the eventfd brings the next turn */
  r->inline_pending = false;
  unlock(r);
  if (pending) wake(r);
  int ms = next_timeout(r);
  if (ms < 0) uv_timer_stop(&r->timer);
  else uv_timer_start(&r->timer, inline_timer, (uint64_t)ms, 0);
}

static void inline_poll(uv_poll_t *h, int status, int events) {
  (void)status;
  (void)events;
  inline_run(h->data);
}

static void inline_timer(uv_timer_t *h) { inline_run(h->data); }

/* Inline: lets the environment's teardown go on once no uv handle of the relay is open. */
static void release_async_hook(relay_t *r) {
  if (r->async_hook == NULL || r->uv_open > 0) return;
  napi_async_cleanup_hook_handle hook = r->async_hook;
  r->async_hook = NULL;
  napi_remove_async_cleanup_hook(hook);
}

static void inline_closed(uv_handle_t *h) {
  relay_t *r = h->data;
  r->uv_open--;
  release_async_hook(r);
  relay_unref(r);
}

/* Starts the inline relay on env's event loop. 0, or an errno. */
static int inline_start(relay_t *r, napi_env env) {
  uv_loop_t *loop = NULL;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == NULL) return EINVAL;
  napi_value name;
  if (napi_create_string_utf8(env, "sluice native relay", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_async_init(env, NULL, name, &r->actx) != napi_ok)
    return ENOMEM;
  int rc = uv_poll_init(loop, &r->poll, r->ep);
  if (rc != 0) return -rc;
  r->poll.data = r;
  r->refs++;
  r->uv_open++;
  rc = uv_timer_init(loop, &r->timer);
  if (rc != 0) {
    uv_close((uv_handle_t *)&r->poll, inline_closed);
    return -rc;
  }
  r->timer.data = r;
  r->refs++;
  r->uv_open++;
  uv_unref((uv_handle_t *)&r->poll);
  uv_unref((uv_handle_t *)&r->timer);
  r->now = now_ms();
  r->wheel_tick = r->now / TICK_MS;
  rc = uv_poll_start(&r->poll, UV_READABLE, inline_poll);
  return rc == 0 ? 0 : -rc;
}

/* Closes every connection now (their ends wait for delivery) and lets go of the handles. */
static void inline_stop(relay_t *r, napi_env env) {
  close_all(r);
  if (r->poll.data != NULL) {
    uv_poll_stop(&r->poll);
    uv_close((uv_handle_t *)&r->poll, inline_closed);
  }
  if (r->timer.data != NULL) {
    uv_timer_stop(&r->timer);
    uv_close((uv_handle_t *)&r->timer, inline_closed);
  }
  if (r->actx != NULL && env != NULL) napi_async_destroy(env, r->actx);
  r->actx = NULL;
}

static void cleanup_hook(void *arg);

/* Stops the relay: every connection is closed now and the thread joined; with `deliver` the
 * ends go to JS before this returns. Idempotent. */
static void relay_shut(relay_t *r, napi_env env, bool deliver) {
  if (r->closed) return;
  r->closed = true;
  if (r->inline_mode) inline_stop(r, env);
  if (r->thread_running) {
    lock(r);
    r->stop = true;
    unlock(r);
    wake(r);
    /* The thread only closes descriptors from here on: the join is short. */
    pthread_join(r->thread, NULL);
    r->thread_running = false;
  }
  if (deliver && env != NULL && r->on_end != NULL) {
    napi_value cb;
    if (napi_get_reference_value(env, r->on_end, &cb) == napi_ok && cb != NULL) deliver_ends(env, r, cb, false);
  }
  if (r->on_end != NULL && env != NULL) {
    napi_delete_reference(env, r->on_end);
    r->on_end = NULL;
  }
  stop_tsfn(r->env, r->tsfn, &r->tsfn_released, &r->hook_added, cleanup_hook, r);
  /* inline: with no handle made, teardown need not wait (else the last close callback lets it go) */
  release_async_hook(r);
}

/* The environment (the main thread or a worker) is going away without close(). */
static void cleanup_hook(void *arg) {
  relay_t *r = arg;
  r->hook_added = false;
  relay_shut(r, r->env, false);
}

/* Inline: the environment is going away without close(). The handles are closed here, and
 * the hook is removed by the last close callback, so the loop runs them before the addon goes. */
static void async_cleanup_hook(napi_async_cleanup_hook_handle handle, void *arg) {
  relay_t *r = arg;
  if (r->async_hook == NULL) r->async_hook = handle;
  relay_shut(r, r->env, false);
}

/* The JS object was collected. */
static void relay_finalize(napi_env env, void *data, void *hint) {
  (void)hint;
  relay_t *r = data;
  relay_shut(r, env, false);
  relay_unref(r);
}

static relay_t *this_relay(napi_env env, napi_callback_info info, size_t *argc, napi_value *argv) {
  napi_value self;
  void *data = NULL;
  if (napi_get_cb_info(env, info, argc, argv, &self, NULL) != napi_ok || napi_unwrap(env, self, &data) != napi_ok) {
    throw_last(env);
    return NULL;
  }
  return data;
}

/* Reads a uint32 argument, throwing a TypeError when it is not one. */
static bool arg_u32(napi_env env, napi_value v, const char *name, uint32_t *out) {
  napi_valuetype t;
  double d;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number || napi_get_value_double(env, v, &d) != napi_ok ||
      !(d >= 0 && d <= 4294967295.0) || d != (double)(uint32_t)d) {
    char msg[96];
    snprintf(msg, sizeof msg, "%s must be an integer from 0 to 2^32-1", name);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
    return false;
  }
  *out = (uint32_t)d;
  return true;
}

/* Reads an optional Uint8Array argument (undefined or null: none), copying it into *out. */
static bool arg_bytes(napi_env env, napi_value v, const char *name, uint8_t **out, uint32_t *len) {
  napi_valuetype t;
  *out = NULL;
  *len = 0;
  if (napi_typeof(env, v, &t) != napi_ok) return false;
  if (t == napi_undefined || t == napi_null) return true;
  bool is_ta = false;
  napi_typedarray_type type;
  size_t n = 0;
  void *data = NULL;
  if (napi_is_typedarray(env, v, &is_ta) != napi_ok || !is_ta ||
      napi_get_typedarray_info(env, v, &type, &n, &data, NULL, NULL) != napi_ok || type != napi_uint8_array ||
      n > UINT32_MAX) {
    char msg[96];
    snprintf(msg, sizeof msg, "%s must be a Uint8Array or undefined", name);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
    return false;
  }
  if (n == 0) return true;
  *out = malloc(n);
  if (*out == NULL) {
    throw_errno(env, ENOMEM, "relay add");
    return false;
  }
  memcpy(*out, data, n);
  *len = (uint32_t)n;
  return true;
}

/* A duplicate of fd (close-on-exec), non-blocking; -1 with errno set on failure. */
static int dup_nonblocking(int fd) {
  int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (d < 0) return -1;
  int fl = fcntl(d, F_GETFL);
  if (fl < 0 || (!(fl & O_NONBLOCK) && fcntl(d, F_SETFL, fl | O_NONBLOCK) < 0)) {
    int err = errno;
    close_fd(d);
    errno = err;
    return -1;
  }
  return d;
}

/* new Relay(onEnd, splice, groups): starts a relay thread. onEnd(ends: Float64Array) gets the
 * ends in batches; splice chooses splice(2) through a pipe over recv/send; groups is the
 * number of byte counter groups. */
static napi_value relay_new(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4], self;
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, &self, NULL));
  napi_valuetype t;
  bool splice_mode = false;
  uint32_t groups = 0;
  if (argc < 3 || napi_typeof(env, argv[0], &t) != napi_ok || t != napi_function) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "onEnd must be a function");
    return NULL;
  }
  NAPI_CALL(env, napi_get_value_bool(env, argv[1], &splice_mode));
  if (!arg_u32(env, argv[2], "groups", &groups)) return NULL;
  bool inline_mode = false;
  if (argc >= 4) {
    napi_valuetype it;
    if (napi_typeof(env, argv[3], &it) == napi_ok && it == napi_boolean) NAPI_CALL(env, napi_get_value_bool(env, argv[3], &inline_mode));
  }
  if (groups < 1 || groups > 65536) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "groups must be from 1 to 65536");
    return NULL;
  }

  relay_t *r = calloc(1, sizeof *r);
  if (r == NULL) {
    throw_errno(env, ENOMEM, "relay");
    return NULL;
  }
  r->env = env;
  r->splice_mode = splice_mode;
  r->inline_mode = inline_mode;
  r->groups = groups;
  r->ep = r->wake_fd = r->pipe_r = r->pipe_w = -1;
  r->refs = 1; /* the JS object's, once wrapped */
  pthread_mutex_init(&r->mu, NULL);
  r->bytes = calloc(2 * (size_t)groups, sizeof *r->bytes);
  r->buf = malloc(CHUNK);
  if (r->bytes == NULL || r->buf == NULL) {
    relay_free(r);
    throw_errno(env, ENOMEM, "relay");
    return NULL;
  }
  r->ep = epoll_create1(EPOLL_CLOEXEC);
  if (r->ep < 0) {
    int err = errno;
    relay_free(r);
    throw_errno(env, err, "relay: epoll_create1");
    return NULL;
  }
  r->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0};
  if (r->wake_fd < 0 || epoll_ctl(r->ep, EPOLL_CTL_ADD, r->wake_fd, &ev) < 0) {
    int err = errno;
    relay_free(r);
    throw_errno(env, err, "relay: eventfd");
    return NULL;
  }
  if (napi_wrap(env, self, r, relay_finalize, NULL, NULL) != napi_ok) {
    throw_last(env);
    relay_free(r);
    return NULL;
  }
  /* From here the JS object owns r (freed once it is collected); a failure shuts it. */
  napi_status st = napi_create_reference(env, argv[0], 1, &r->on_end);
  if (st == napi_ok && inline_mode) {
    st = napi_add_async_cleanup_hook(env, async_cleanup_hook, r, &r->async_hook);
    int err = st == napi_ok ? inline_start(r, env) : 0;
    if (st != napi_ok || err != 0) {
      if (st != napi_ok) throw_last(env);
      relay_shut(r, env, false);
      if (err != 0) throw_errno(env, err, "relay: the event loop");
      return NULL;
    }
    return self;
  }
  /* No connection yet: nothing to keep the event loop alive for. */
  if (st == napi_ok) st = start_tsfn(env, argv[0], "sluice native relay", r, tsfn_finalize, tsfn_call, &r->tsfn, &r->refs, cleanup_hook);
  if (st != napi_ok) {
    throw_last(env);
    relay_shut(r, env, false);
    return NULL;
  }
  r->hook_added = true;

  /* The thread takes no signals: they stay with Node's threads. */
  int rc = start_thread(&r->thread, THREAD_STACK, relay_main, r);
  if (rc != 0) {
    relay_shut(r, env, false);
    throw_errno(env, rc, "relay: pthread_create");
    return NULL;
  }
  r->thread_running = true;
  /* A name for top and perf; it cannot fail (the name fits in 16 bytes). */
  (void)pthread_setname_np(r->thread, "sluice-relay");
  return self;
}

/* add(clientFd, backendFd, idleMs, group, toBackend?, toClient?) -> id: takes over both
 * descriptors (duplicates them; JS then closes its own) and relays the connection. */
static napi_value relay_add(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  relay_t *r = this_relay(env, info, &argc, argv);
  if (r == NULL) return NULL;
  if (r->closed) {
    napi_throw_error(env, "ERR_RELAY_CLOSED", "the relay is closed");
    return NULL;
  }
  napi_value undefined;
  NAPI_CALL(env, napi_get_undefined(env, &undefined));
  for (size_t i = argc; i < 6; i++) argv[i] = undefined;
  uint32_t cfd, bfd, idle_ms, group;
  if (!arg_u32(env, argv[0], "clientFd", &cfd) || !arg_u32(env, argv[1], "backendFd", &bfd) ||
      !arg_u32(env, argv[2], "idleMs", &idle_ms) || !arg_u32(env, argv[3], "group", &group))
    return NULL;
  if (cfd > INT32_MAX || bfd > INT32_MAX || cfd == bfd) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "clientFd and backendFd must be two different descriptors");
    return NULL;
  }
  if (group >= r->groups) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "group must be below the relay's groups");
    return NULL;
  }
  conn_t *c = calloc(1, sizeof *c);
  if (c == NULL) {
    throw_errno(env, ENOMEM, "relay add");
    return NULL;
  }
  c->fd[CLIENT] = c->fd[BACKEND] = -1;
  c->first_fin = -1;
  c->wslot = -1;
  c->group = group;
  c->idle_ms = idle_ms;
  c->readable[CLIENT] = c->readable[BACKEND] = true;
  c->writable[CLIENT] = c->writable[BACKEND] = true;
  int err = 0;
  const char *what = NULL;
  if (!arg_bytes(env, argv[4], "toBackend", &c->dir[CLIENT].buf, &c->dir[CLIENT].len) ||
      !arg_bytes(env, argv[5], "toClient", &c->dir[BACKEND].buf, &c->dir[BACKEND].len))
    goto fail_thrown;
  c->dir[CLIENT].initial = c->dir[CLIENT].buf != NULL;
  c->dir[BACKEND].initial = c->dir[BACKEND].buf != NULL;
  c->fd[CLIENT] = dup_nonblocking((int)cfd);
  if (c->fd[CLIENT] < 0) {
    err = errno;
    what = "relay add: the client descriptor";
    goto fail;
  }
  c->fd[BACKEND] = dup_nonblocking((int)bfd);
  if (c->fd[BACKEND] < 0) {
    err = errno;
    what = "relay add: the backend descriptor";
    goto fail;
  }
  lock(r);
  if (r->thread_error != 0) {
    err = r->thread_error;
    unlock(r);
    what = "relay add: the relay thread stopped";
    goto fail;
  }
  if (!ev_room(r, 1)) { /* room for this connection's end, promised now */
    unlock(r);
    err = ENOMEM;
    what = "relay add";
    goto fail;
  }
  r->promised++;
  c->id = ++r->next_id;
  /* Read before the unlock: from then on the relay thread owns `c`, and may close and free
   * it before this function returns (a connection that fails at once). */
  const uint64_t added_id = c->id;
  if (r->add_tail != NULL) r->add_tail->next = c;
  else r->add_head = c;
  r->add_tail = c;
  signal_queued(r);
  r->live++;
  update_ref(env, r);
  napi_value id;
  NAPI_CALL(env, napi_create_double(env, (double)added_id, &id));
  return id;

fail:
  throw_errno(env, err, what);
fail_thrown:
  close_fd(c->fd[CLIENT]);
  close_fd(c->fd[BACKEND]);
  free(c->dir[CLIENT].buf);
  free(c->dir[BACKEND].buf);
  free(c);
  return NULL;
}

/* destroy(id, reset?): closes the connection now (its end comes with reason destroyed); with
 * reset, the client gets a reset rather than a FIN. An id that already ended, or never
 * existed, is ignored. */
static napi_value relay_destroy(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  relay_t *r = this_relay(env, info, &argc, argv);
  if (r == NULL) return NULL;
  double d = 0;
  if (argc < 1 || napi_get_value_double(env, argv[0], &d) != napi_ok || !(d >= 1 && d <= 9007199254740991.0) ||
      d != (double)(uint64_t)d) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "id must be a connection id");
    return NULL;
  }
  bool reset = false;
  if (argc >= 2) {
    napi_valuetype t;
    if (napi_typeof(env, argv[1], &t) == napi_ok && t == napi_boolean) napi_get_value_bool(env, argv[1], &reset);
  }
  if (r->closed) return NULL;
  lock(r);
  if (r->nkills == r->kills_cap) {
    uint32_t cap = r->kills_cap ? r->kills_cap * 2 : 64;
    uint64_t *k = realloc(r->kills, cap * sizeof *k);
    if (k == NULL) {
      unlock(r);
      throw_errno(env, ENOMEM, "relay destroy");
      return NULL;
    }
    r->kills = k;
    r->kills_cap = cap;
  }
  r->kills[r->nkills++] = ((uint64_t)d << 1) | (reset ? 1 : 0);
  signal_queued(r);
  return NULL;
}

/* Queues a command for the relay thread. Under mu. */
static void cmd_queue(relay_t *r, cmd_t *cmd) {
  if (r->cmd_tail != NULL) r->cmd_tail->next = cmd;
  else r->cmd_head = cmd;
  r->cmd_tail = cmd;
}

/* Wakes the relay thread for what was queued, unless it is already woken. Under mu; unlocks. */
static void queued(relay_t *r) { signal_queued(r); }

/* listen(fd, group) -> id: accepts the connections of the listening socket fd from now on
 * (the relay duplicates it; the caller closes its own). Each is reported as an accept event
 * and waits for connect() or destroy(). */
static napi_value relay_listen(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  relay_t *r = this_relay(env, info, &argc, argv);
  if (r == NULL) return NULL;
  if (r->closed) {
    napi_throw_error(env, "ERR_RELAY_CLOSED", "the relay is closed");
    return NULL;
  }
  uint32_t fd, group;
  if (argc < 2 || !arg_u32(env, argv[0], "fd", &fd) || !arg_u32(env, argv[1], "group", &group)) return NULL;
  if (fd > INT32_MAX || group >= r->groups) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "fd must be a descriptor and group below the relay's groups");
    return NULL;
  }
  if (r->nlsns == r->lsns_cap) {
    uint32_t cap = r->lsns_cap ? r->lsns_cap * 2 : 8;
    void *p = realloc(r->lsns, cap * sizeof *r->lsns);
    if (p == NULL) {
      throw_errno(env, ENOMEM, "relay listen");
      return NULL;
    }
    r->lsns = p;
    r->lsns_cap = cap;
  }
  lsn_t *l = calloc(1, sizeof *l);
  cmd_t *cmd = calloc(1, sizeof *cmd);
  if (l == NULL || cmd == NULL) {
    free(l);
    free(cmd);
    throw_errno(env, ENOMEM, "relay listen");
    return NULL;
  }
  l->fd = dup_nonblocking((int)fd);
  if (l->fd < 0) {
    int err = errno;
    free(l);
    free(cmd);
    throw_errno(env, err, "relay listen: the listening descriptor");
    return NULL;
  }
  l->id = ++r->next_lsn_id;
  l->group = group;
  /* The options set here are those of every connection the kernel queues from now on (Linux
   * copies them from the listening socket); the ones already queued get theirs at accept. */
  tune(l->fd);
  struct tcp_info ti;
  socklen_t tilen = sizeof ti;
  memset(&ti, 0, sizeof ti);
  l->untuned = getsockopt(l->fd, IPPROTO_TCP, TCP_INFO, &ti, &tilen) == 0 ? ti.tcpi_unacked + 1 : UINT32_MAX;
  r->lsns[r->nlsns].id = l->id;
  r->lsns[r->nlsns].fd = l->fd;
  r->lsns[r->nlsns].lsn = l;
  r->nlsns++;
  r->listening++;
  cmd->kind = C_LISTEN;
  cmd->lsn = l;
  lock(r);
  cmd_queue(r, cmd);
  queued(r);
  update_ref(env, r);
  napi_value id;
  NAPI_CALL(env, napi_create_uint32(env, l->id, &id));
  return id;
}

/* unlisten(id, stop?) -> fd: stops accepting on that socket and returns a new descriptor of
 * it, still listening, for the caller to listen on with Node: what waits in its backlog is not
 * lost. With stop, the socket stops listening at once instead (shutdown: new connections are
 * refused from this moment, as when Node closes a server) and -1 is returned. -1 also when
 * the relay is closed (it closed the socket). */
static napi_value relay_unlisten(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  relay_t *r = this_relay(env, info, &argc, argv);
  if (r == NULL) return NULL;
  uint32_t id;
  if (argc < 1 || !arg_u32(env, argv[0], "id", &id)) return NULL;
  bool stop = false;
  if (argc >= 2) {
    napi_valuetype t;
    if (napi_typeof(env, argv[1], &t) == napi_ok && t == napi_boolean) napi_get_value_bool(env, argv[1], &stop);
  }
  uint32_t i = 0;
  while (i < r->nlsns && r->lsns[i].id != id) i++;
  if (i == r->nlsns) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "no such listening socket");
    return NULL;
  }
  int back = -1;
  if (!r->closed) {
    cmd_t *cmd = calloc(1, sizeof *cmd);
    if (cmd == NULL) {
      throw_errno(env, ENOMEM, "relay unlisten");
      return NULL;
    }
    /* The relay's descriptor stays open until the thread takes the command. */
    /* Marked first: the relay thread may see accept4 fail with EINVAL at once after shutdown. */
    if (stop) {
      atomic_store(&r->lsns[i].lsn->stopping, true);
      (void)shutdown(r->lsns[i].fd, SHUT_RDWR);
    }
    back = stop ? 0 : fcntl(r->lsns[i].fd, F_DUPFD_CLOEXEC, 0);
    if (back < 0) {
      int err = errno;
      free(cmd);
      throw_errno(env, err, "relay unlisten");
      return NULL;
    }
    cmd->kind = C_UNLISTEN;
    cmd->lsn = r->lsns[i].lsn;
    lock(r);
    cmd_queue(r, cmd);
    queued(r);
    if (stop) back = -1;
  }
  r->lsns[i] = r->lsns[--r->nlsns];
  r->listening--;
  update_ref(env, r);
  napi_value v;
  NAPI_CALL(env, napi_create_int32(env, back, &v));
  return v;
}

/* connect(id, ip, port, timeoutMs, idleMs, toBackend?): connects an accepted connection to a
 * backend (ip: a numeric IPv4 or IPv6 address). Its result comes as a connected or a
 * connect_failed event (or the connection's end, when the client left meanwhile). */
static napi_value relay_connect(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  relay_t *r = this_relay(env, info, &argc, argv);
  if (r == NULL) return NULL;
  if (r->closed) {
    napi_throw_error(env, "ERR_RELAY_CLOSED", "the relay is closed");
    return NULL;
  }
  napi_value undefined;
  NAPI_CALL(env, napi_get_undefined(env, &undefined));
  for (size_t i = argc; i < 6; i++) argv[i] = undefined;
  double d = 0;
  if (napi_get_value_double(env, argv[0], &d) != napi_ok || !(d >= 1 && d <= 9007199254740991.0) || d != (double)(uint64_t)d) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "id must be a connection id");
    return NULL;
  }
  char ip[INET6_ADDRSTRLEN + 1];
  size_t iplen = 0;
  if (napi_get_value_string_latin1(env, argv[1], ip, sizeof ip, &iplen) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "ip must be a string");
    return NULL;
  }
  uint32_t port, timeout_ms, idle_ms;
  if (!arg_u32(env, argv[2], "port", &port) || !arg_u32(env, argv[3], "timeoutMs", &timeout_ms) ||
      !arg_u32(env, argv[4], "idleMs", &idle_ms))
    return NULL;
  cmd_t *cmd = calloc(1, sizeof *cmd);
  if (cmd == NULL) {
    throw_errno(env, ENOMEM, "relay connect");
    return NULL;
  }
  struct sockaddr_in *a4 = (struct sockaddr_in *)&cmd->sa;
  struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&cmd->sa;
  if (port > 65535) {
    free(cmd);
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "port must be below 65536");
    return NULL;
  }
  if (inet_pton(AF_INET, ip, &a4->sin_addr) == 1) {
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)port);
    cmd->salen = sizeof *a4;
  } else if (inet_pton(AF_INET6, ip, &a6->sin6_addr) == 1) {
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons((uint16_t)port);
    cmd->salen = sizeof *a6;
  } else {
    free(cmd);
    napi_throw_type_error(env, "ERR_INVALID_ARG_VALUE", "ip must be a numeric IPv4 or IPv6 address");
    return NULL;
  }
  if (!arg_bytes(env, argv[5], "toBackend", &cmd->initial, &cmd->initial_len)) {
    free(cmd);
    return NULL;
  }
  cmd->kind = C_CONNECT;
  cmd->id = (uint64_t)d;
  cmd->timeout_ms = timeout_ms;
  cmd->idle_ms = idle_ms;
  lock(r);
  if (!ev_room(r, 1)) { /* room for its result, promised now */
    unlock(r);
    free(cmd->initial);
    free(cmd);
    throw_errno(env, ENOMEM, "relay connect");
    return NULL;
  }
  r->promised++;
  cmd_queue(r, cmd);
  queued(r);
  return NULL;
}

/* release(id): hands an accepted connection that waits for its backend back to JS: a released
 * event brings its descriptor (or its end comes, when it ended meanwhile). */
static napi_value relay_release(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  relay_t *r = this_relay(env, info, &argc, argv);
  if (r == NULL) return NULL;
  double d = 0;
  if (argc < 1 || napi_get_value_double(env, argv[0], &d) != napi_ok || !(d >= 1 && d <= 9007199254740991.0) ||
      d != (double)(uint64_t)d) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "id must be a connection id");
    return NULL;
  }
  if (r->closed) return NULL;
  cmd_t *cmd = calloc(1, sizeof *cmd);
  if (cmd == NULL) {
    throw_errno(env, ENOMEM, "relay release");
    return NULL;
  }
  cmd->kind = C_RELEASE;
  cmd->id = (uint64_t)d;
  lock(r);
  cmd_queue(r, cmd);
  queued(r);
  return NULL;
}

/* hold(listenerId, on): stops accepting on a listening socket for now (its backlog waits in
 * the kernel), or accepts again. */
static napi_value relay_hold(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  relay_t *r = this_relay(env, info, &argc, argv);
  if (r == NULL) return NULL;
  uint32_t id;
  bool on = false;
  if (argc < 2 || !arg_u32(env, argv[0], "id", &id) || napi_get_value_bool(env, argv[1], &on) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "hold(id, on) takes a listening socket id and a boolean");
    return NULL;
  }
  if (r->closed) return NULL;
  uint32_t i = 0;
  while (i < r->nlsns && r->lsns[i].id != id) i++;
  if (i == r->nlsns) return NULL; /* taken back meanwhile */
  cmd_t *cmd = calloc(1, sizeof *cmd);
  if (cmd == NULL) {
    throw_errno(env, ENOMEM, "relay hold");
    return NULL;
  }
  cmd->kind = on ? C_HOLD : C_UNHOLD;
  cmd->lsn = r->lsns[i].lsn;
  lock(r);
  cmd_queue(r, cmd);
  queued(r);
  return NULL;
}

/* takeBytes() -> Float64Array(2 * groups): bytes written to the backend ([2g]) and to the
 * client ([2g + 1]) by group g's connections since the last call. */
static napi_value relay_take_bytes(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  relay_t *r = this_relay(env, info, &argc, NULL);
  if (r == NULL) return NULL;
  napi_value ab, arr;
  void *data = NULL;
  size_t n = 2 * (size_t)r->groups;
  NAPI_CALL(env, napi_create_arraybuffer(env, n * sizeof(double), &data, &ab));
  double *out = data;
  for (size_t i = 0; i < n; i++) out[i] = (double)atomic_exchange_explicit(&r->bytes[i], 0, memory_order_relaxed);
  NAPI_CALL(env, napi_create_typedarray(env, napi_float64_array, n, ab, 0, &arr));
  return arr;
}

/* close(): closes every connection now, hands their ends to onEnd before returning and stops
 * the thread. Later add() calls throw; destroy() calls are ignored. */
static napi_value relay_close(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  relay_t *r = this_relay(env, info, &argc, NULL);
  if (r == NULL) return NULL;
  relay_shut(r, env, true);
  return NULL;
}

/* size: connections added whose end JS has not yet received. */
static napi_value relay_size(napi_env env, napi_callback_info info) {
  size_t argc = 0;
  relay_t *r = this_relay(env, info, &argc, NULL);
  if (r == NULL) return NULL;
  napi_value v;
  NAPI_CALL(env, napi_create_uint32(env, r->live, &v));
  return v;
}

/* dupFd(fd) -> a new descriptor for the same open file (close-on-exec). A TCP listener that
 * runs out of descriptors keeps its listening socket, and the connections waiting in its
 * backlog, in such a copy while it stops accepting (src/listener/accept-pause.ts). */
static napi_value dup_fd(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  uint32_t fd;
  if (argc < 1 || !arg_u32(env, argv[0], "fd", &fd)) {
    if (argc < 1) napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "fd must be a descriptor number");
    return NULL;
  }
  if (fd > INT32_MAX) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "fd must be a descriptor number");
    return NULL;
  }
  int copy = fcntl((int)fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) {
    throw_errno(env, errno, "dupFd");
    return NULL;
  }
  napi_value v;
  NAPI_CALL(env, napi_create_int32(env, copy, &v));
  return v;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor methods[] = {
    {"add", NULL, relay_add, NULL, NULL, NULL, napi_default_method, NULL},
    {"destroy", NULL, relay_destroy, NULL, NULL, NULL, napi_default_method, NULL},
    {"listen", NULL, relay_listen, NULL, NULL, NULL, napi_default_method, NULL},
    {"unlisten", NULL, relay_unlisten, NULL, NULL, NULL, napi_default_method, NULL},
    {"connect", NULL, relay_connect, NULL, NULL, NULL, napi_default_method, NULL},
    {"release", NULL, relay_release, NULL, NULL, NULL, napi_default_method, NULL},
    {"hold", NULL, relay_hold, NULL, NULL, NULL, napi_default_method, NULL},
    {"takeBytes", NULL, relay_take_bytes, NULL, NULL, NULL, napi_default_method, NULL},
    {"close", NULL, relay_close, NULL, NULL, NULL, napi_default_method, NULL},
    {"size", NULL, NULL, relay_size, NULL, NULL, napi_default, NULL},
  };
  napi_value cls, reasons, s;
  NAPI_CALL(env, napi_define_class(env, "Relay", NAPI_AUTO_LENGTH, relay_new, NULL, sizeof methods / sizeof methods[0],
                                   methods, &cls));
  NAPI_CALL(env, napi_set_named_property(env, exports, "Relay", cls));
  NAPI_CALL(env, napi_create_array_with_length(env, R_COUNT, &reasons));
  for (uint32_t i = 0; i < R_COUNT; i++) {
    NAPI_CALL(env, napi_create_string_utf8(env, reason_names[i], NAPI_AUTO_LENGTH, &s));
    NAPI_CALL(env, napi_set_element(env, reasons, i, s));
  }
  NAPI_CALL(env, napi_set_named_property(env, exports, "reasons", reasons));
  napi_value dup;
  NAPI_CALL(env, napi_create_function(env, "dupFd", NAPI_AUTO_LENGTH, dup_fd, NULL, &dup));
  NAPI_CALL(env, napi_set_named_property(env, exports, "dupFd", dup));
  return exports;
}
