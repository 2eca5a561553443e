/*
 * err.c — one way to report failures: a stable code and a message (never secrets).
 */
#include "pairstore.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

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

int ps_is_pending(const ps_err *e)
{
  return e->code && !strcmp(e->code, "io_pending");
}

int ps_push_err(lua_State *L, const ps_err *e)
{
  lua_pushnil(L);
  lua_pushstring(L, e->msg);
  lua_pushstring(L, e->code);
  return 3;
}
