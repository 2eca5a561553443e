/*
 * record.c — a session's stored record, for every engine: its JSON text read into a
 * validated Lua table (cjson decodes; exact integers; lone surrogates), a table written as
 * the text to store (keeping what it can of the text it was read from), the bound on what a
 * mutator may store, and the order sessions are listed in.
 */
#include "pairstore.h"

#include <stdlib.h>
#include <string.h>

int ps_is_json_verdict(const char *msg)
{
  return strstr(msg, " at character ") != NULL || strstr(msg, "UTF-16 or UTF-32") != NULL;
}

const char *ps_record_decode(lua_State *L, int dec, const char *text, size_t n, ps_buf *tmp)
{
  ps_jscan sc = { 0 };
  const char *why, *src = text;
  int rc;

  dec = lua_absindex(L, dec);
  sc.value = 1;
  why = ps_json_scan(text, n, &sc);
  ps_json_scan_free(&sc);
  if (why) return why;
  if (sc.lone) { /* cjson refuses lone surrogates: it reads a copy where they are U+FFFD */
    tmp->len = 0;
    ps_buf_add(tmp, text, n);
    if (tmp->oom) luaL_error(L, "pairstore: out of memory");
    ps_json_sanitize(tmp->p, n);
    src = tmp->p;
  }
  lua_pushvalue(L, dec);
  lua_pushlstring(L, src, n);
  rc = lua_pcall(L, 1, 1, 0);
  if (rc != LUA_OK) {
    const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    if (rc != LUA_ERRRUN || !msg || !ps_is_json_verdict(msg)) lua_error(L); /* not about the text */
    lua_pop(L, 1);
    return "invalid JSON";
  }
  if (sc.bigint && ps_json_fixup(L, dec, text, n, -1, 0) != 0) luaL_error(L, "pairstore: out of memory");
  why = ps_validate_session(L, -1, 0);
  if (why) {
    lua_pop(L, 1);
    return why;
  }
  return NULL;
}

const char *ps_record_encode(lua_State *L, int dec, int sess, const char *base, size_t baselen,
                             ps_buf *b)
{
  b->len = 0;
  b->oom = 0;
  return ps_json_encode(L, dec, base, baselen, sess, &ps_session_order, b);
}

int ps_record_text(lua_State *L, int dec, int sess, const char *base, size_t baselen, int flags,
                   size_t max_bytes, ps_buf *b, ps_err *err)
{
  const char *why = ps_record_encode(L, dec, sess, base, baselen, b);
  if (why) {
    ps_err_set(err, "invalid", "a session cannot be written as JSON: %s", why);
    return -1;
  }
  if (b->oom) {
    ps_err_set(err, "io", "encode: out of memory (ENOMEM)");
    return -1;
  }
  if (!(flags & PS_PUT_IF_CHANGED)) return 1;
  /* A mutator's result is bounded (what the store held already is not: the reference bounds
   * nothing, and its sessions must stay writable). */
  if (b->len > max_bytes && b->len > baselen) {
    ps_err_set(err, "limit", "the mutator's result would take %zu bytes of JSON, above "
               "max_session_bytes (%zu)", b->len, max_bytes);
    return -1;
  }
  return !(base && b->len == baselen && memcmp(b->p, base, baselen) == 0);
}

typedef struct { lua_Number created; const char *sid; lua_Integer idx; } sort_entry;

static int cmp_entry(const void *a, const void *b)
{
  const sort_entry *x = a, *y = b;
  if (x->created != y->created) return x->created < y->created ? -1 : 1;
  return strcmp(x->sid, y->sid);
}

static int is_active(const char *status)
{
  return !strcmp(status, "awaiting_scan") || !strcmp(status, "device_connected");
}

/* The positions (1-based) of the sessions of the array at arr in list order, only the active
 * ones if asked; malloc'd, *count of them. */
static lua_Integer *list_order(lua_State *L, int arr, int active_only, lua_Integer *count)
{
  lua_Integer n = (lua_Integer)lua_rawlen(L, arr), i, k = 0;
  lua_Integer *order;
  sort_entry *e = malloc((size_t)(n ? n : 1) * sizeof *e);
  if (!e) luaL_error(L, "pairstore: out of memory");
  for (i = 1; i <= n; i++) {
    size_t len;
    lua_rawgeti(L, arr, i);
    if (!active_only || is_active(ps_get_str(L, -1, "status", &len))) {
      lua_getfield(L, -1, "createdAtMs");
      e[k].created = lua_tonumber(L, -1);
      lua_pop(L, 1);
      e[k].sid = ps_get_str(L, -1, "sid", &len); /* the table stays in arr: the string too */
      e[k].idx = i;
      k++;
    }
    lua_pop(L, 1);
  }
  for (i = 1; i < k && cmp_entry(&e[i - 1], &e[i]) <= 0; i++) {}
  if (i < k) qsort(e, (size_t)k, sizeof *e, cmp_entry); /* creates append: usually sorted */
  order = malloc((size_t)(k ? k : 1) * sizeof *order);
  if (!order) {
    free(e);
    luaL_error(L, "pairstore: out of memory");
  }
  for (i = 0; i < k; i++) order[i] = e[i].idx;
  free(e);
  *count = k;
  return order;
}

int ps_list_push(lua_State *L, int arr, int flags, ps_text_fn text, void *ctx, ps_err *err)
{
  lua_Integer *order, k, i;
  int out;
  arr = lua_absindex(L, arr);
  order = list_order(L, arr, flags & PS_LIST_ACTIVE, &k);
  lua_createtable(L, (int)k, 0);
  out = lua_gettop(L);
  for (i = 0; i < k; i++) {
    lua_rawgeti(L, arr, order[i]);
    if (!(flags & PS_LIST_TEXT)) {
      ps_copy_value(L, -1, 0);
    } else if (text(ctx, L, out + 1, err) != 0) {
      free(order);
      lua_settop(L, out - 1);
      return -1;
    }
    lua_remove(L, -2);
    lua_rawseti(L, out, i + 1);
  }
  free(order);
  return 0;
}
