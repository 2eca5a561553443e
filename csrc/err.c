/*
 * err.c — one way to report failures (code + message, never secrets) and a small
 * growable byte buffer that wipes itself when freed.
 */
#include "pairstore.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

void ps_err_set(ps_err *e, const char *code, const char *fmt, ...)
{
  va_list ap;
  e->code = code;
  va_start(ap, fmt);
  vsnprintf(e->msg, sizeof e->msg, fmt, ap);
  va_end(ap);
}

void ps_err_sys(ps_err *e, int saved_errno, const char *what, const char *path)
{
  const char *name = strerrorname_np(saved_errno);
  ps_err_set(e, "io", "%s %s: %s (%s)", what, path ? path : "", strerror(saved_errno),
             name ? name : "?");
}

int ps_push_err(lua_State *L, const ps_err *e)
{
  lua_pushnil(L);
  lua_pushstring(L, e->msg);
  lua_pushstring(L, e->code);
  return 3;
}

void ps_buf_add(ps_buf *b, const char *s, size_t n)
{
  if (b->oom) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    char *p;
    while (cap < b->len + n + 1) cap *= 2;
    /* No realloc: the old block may hold secrets and must be wiped, not abandoned. */
    p = malloc(cap);
    if (!p) { b->oom = 1; return; }
    if (b->p) {
      memcpy(p, b->p, b->len);
      sodium_memzero(b->p, b->cap);
      free(b->p);
    }
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

void ps_buf_free(ps_buf *b)
{
  if (b->p) {
    sodium_memzero(b->p, b->cap);
    free(b->p);
  }
  b->p = NULL;
  b->len = b->cap = 0;
  b->oom = 0;
}
