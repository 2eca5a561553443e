/*
 * target.c — what a store's target names: a PostgreSQL database (a URI of its schemes, in any
 * case, or pg:CONNINFO), a URI of a scheme pairstore does not support (refused: no file is
 * made of it), or else a file path.
 */
#include "pairstore.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

/* The length of t's URI scheme when t looks like a URI (RFC 3986: ALPHA *( ALPHA / DIGIT /
 * "+" / "-" / "." ), then ":/"), else 0. */
static size_t uri_scheme(const char *t)
{
  size_t n = 0;
  if (!((*t >= 'a' && *t <= 'z') || (*t >= 'A' && *t <= 'Z'))) return 0;
  n = strspn(t, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.");
  return t[n] == ':' && t[n + 1] == '/' ? n : 0;
}

/* The scheme of a PostgreSQL URI, in any case (RFC 3986: schemes are case-insensitive):
 * the length of "postgresql://" or "postgres://" that t starts with, else 0. */
size_t ps_pg_uri_prefix(const char *t)
{
  if (!strncasecmp(t, "postgresql://", 13)) return 13;
  if (!strncasecmp(t, "postgres://", 11)) return 11;
  return 0;
}

int ps_pg_is_target(const char *t)
{
  return ps_pg_uri_prefix(t) > 0 || !strncmp(t, "pg:", 3);
}

const char *ps_target_refused(const char *t, char *why, size_t n)
{
  size_t len = uri_scheme(t);
  if (!len || ps_pg_is_target(t)) return NULL;
  /* the scheme only: the rest may hold a password */
  snprintf(why, n, "the target looks like a URI (scheme \"%.*s\" followed by \":/\") but is not "
           "one pairstore supports (postgresql://, postgres://; pg:CONNINFO); nothing was "
           "created (a file whose path starts that way: write it as ./%.*s:/...)",
           len > 40 ? 40 : (int)len, t, len > 40 ? 40 : (int)len, t);
  return why;
}
