/*
 * pq.c — loads libpq (libpq.so.5) when a PostgreSQL target is first opened, and fills the
 * function pointers pq.h declares. A process that never opens one never maps libpq.
 */
#define PS_PQ_NO_MACROS
#include "pq.h"

#include <dlfcn.h>
#include <pthread.h>

#define PS_PQ_DEFINE(f) __typeof__(f) *ps_pq_##f;
PS_PQ_FUNCS(PS_PQ_DEFINE)
#undef PS_PQ_DEFINE

static pthread_once_t once = PTHREAD_ONCE_INIT;
static const char *failed; /* why it could not be loaded, or NULL */

static void load(void)
{
  void *h = dlopen("libpq.so.5", RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    failed = "PostgreSQL targets need libpq (libpq.so.5, Debian's libpq5), which cannot be loaded";
    return;
  }
#define PS_PQ_RESOLVE(f) \
  if (!failed && !(*(void **)&ps_pq_##f = dlsym(h, #f))) \
    failed = "the libpq found (libpq.so.5) lacks " #f ": pairstore needs libpq 14 or later";
  PS_PQ_FUNCS(PS_PQ_RESOLVE)
#undef PS_PQ_RESOLVE
}

int ps_pq_load(const char **why)
{
  pthread_once(&once, load);
  if (failed) {
    *why = failed;
    return -1;
  }
  return 0;
}
