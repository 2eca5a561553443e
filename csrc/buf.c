/*
 * buf.c — a growable byte buffer that never reallocs in place and wipes what it frees
 * (it may hold keys).
 */
#include "pairstore.h"

#include <stdlib.h>
#include <string.h>

#include <sodium.h>

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
