/* N-API and thread helpers shared by relay.c and dns.c. */
#ifndef SLUICE_NAPI_UTIL_H
#define SLUICE_NAPI_UTIL_H

#include <node_api.h>

#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>

/* Starts fn(arg) on a thread with the given stack size that takes no signals (they stay with
 * Node's threads). 0, or the pthread error. */
static inline int start_thread(pthread_t *thread, size_t stack, void *(*fn)(void *), void *arg) {
  sigset_t all, old;
  sigfillset(&all);
  pthread_attr_t attr;
  int rc = pthread_attr_init(&attr);
  if (rc == 0) rc = pthread_attr_setstacksize(&attr, stack);
  if (rc == 0) {
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(thread, &attr, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
  }
  return rc;
}

/* Makes the thread-safe function *tsfn (named `name`, calling js_cb through call) for ctx,
 * counts the reference it holds in *refs (finalize gives it back), leaves it unreferenced
 * (it does not keep the event loop alive) and adds hook(ctx) as an environment cleanup hook. */
static inline napi_status start_tsfn(napi_env env, napi_value js_cb, const char *name, void *ctx,
                                     napi_finalize finalize, napi_threadsafe_function_call_js call,
                                     napi_threadsafe_function *tsfn, int *refs, void (*hook)(void *)) {
  napi_value text;
  napi_status st = napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &text);
  if (st == napi_ok) st = napi_create_threadsafe_function(env, js_cb, NULL, text, 0, 1, ctx, finalize, ctx, call, tsfn);
  if (st == napi_ok) {
    (*refs)++;
    st = napi_unref_threadsafe_function(env, *tsfn);
  }
  if (st == napi_ok) st = napi_add_env_cleanup_hook(env, hook, ctx);
  return st;
}

/* Releases what start_tsfn made, each once: the thread-safe function (aborted) unless it is
 * released already, and the cleanup hook while it is added. */
static inline void stop_tsfn(napi_env env, napi_threadsafe_function tsfn, bool *released, bool *hook_added,
                             void (*hook)(void *), void *ctx) {
  if (tsfn != NULL && !*released) {
    *released = true;
    napi_release_threadsafe_function(tsfn, napi_tsfn_abort);
  }
  if (*hook_added) {
    *hook_added = false;
    napi_remove_env_cleanup_hook(env, hook, ctx);
  }
}

#endif
