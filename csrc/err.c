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

/* Grows to hold at least need bytes (+ NUL). No realloc: the old block may hold secrets
 * and must be wiped, not abandoned. */
static int buf_grow(ps_buf *b, size_t need)
{
  size_t cap = b->cap ? b->cap : 4096;
  char *p;
  while (cap < need + 1) cap *= 2;
  p = malloc(cap);
  if (!p) { b->oom = 1; return -1; }
  if (b->p) {
    memcpy(p, b->p, b->len + 1);
    sodium_memzero(b->p, b->cap); /* reused buffers may hold older, longer content */
    free(b->p);
  }
  b->p = p;
  b->cap = cap;
  return 0;
}

void ps_buf_reserve(ps_buf *b, size_t n)
{
  if (!b->oom && b->len + n + 1 > b->cap) buf_grow(b, b->len + n);
}

void ps_buf_add(ps_buf *b, const char *s, size_t n)
{
  if (b->oom) return;
  if (b->len + n + 1 > b->cap && buf_grow(b, b->len + n) != 0) return;
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

void ps_buf_swap(ps_buf *a, ps_buf *b)
{
  ps_buf t = *a;
  *a = *b;
  *b = t;
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
