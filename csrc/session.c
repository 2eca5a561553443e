/*
 * session.c — the session rules on Lua tables: which entries are valid (and turning their
 * numbers into integers), pruning, allowed transitions, deep copies, and encoding a session
 * as compact JSON in the reference's key order (values through the private cjson instance).
 */
#include "pairstore.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const terminal[] = { "completed", "consumed", "expired", "rejected", NULL };
static const char *const known_status[] = { "awaiting_scan", "device_connected", "completed",
                                            "consumed", "expired", "rejected", NULL };

/* Keys in the order the reference writes them. */
static const char *const key_order[] = {
  "sid", "skGatewayB64", "pkGatewayB64", "createdAtMs", "expiresAtMs", "secondaryCode",
  "secondaryCodeAttempts", "operatorContext", "mode", "status", "lastStatusChangeAtMs", NULL,
};
static const char *const int_keys[] = { "createdAtMs", "expiresAtMs", "secondaryCodeAttempts",
                                        "lastStatusChangeAtMs", NULL };

static int in_list(const char *const *list, const char *s)
{
  for (; *list; list++)
    if (strcmp(*list, s) == 0) return 1;
  return 0;
}

int ps_is_terminal(const char *status) { return status && in_list(terminal, status); }
int ps_is_known_status(const char *status) { return status && in_list(known_status, status); }

int ps_transition_allowed(const char *from, const char *to)
{
  if (strcmp(from, "awaiting_scan") == 0)
    return !strcmp(to, "device_connected") || !strcmp(to, "consumed") ||
           !strcmp(to, "expired") || !strcmp(to, "rejected");
  if (strcmp(from, "device_connected") == 0)
    return !strcmp(to, "consumed") || !strcmp(to, "expired") || !strcmp(to, "rejected");
  if (strcmp(from, "consumed") == 0)
    return !strcmp(to, "completed") || !strcmp(to, "rejected");
  if (ps_is_terminal(from)) return 0;
  /* A status this version does not know (kept from the file, non-terminal): it may only
   * end, never be promoted. */
  return !strcmp(to, "expired") || !strcmp(to, "rejected");
}

/* ---- field access ----------------------------------------------------------------------- */

const char *ps_get_str(lua_State *L, int idx, const char *key, size_t *len)
{
  const char *s = NULL;
  lua_getfield(L, idx, key);
  if (lua_type(L, -1) == LUA_TSTRING) s = lua_tolstring(L, -1, len);
  lua_pop(L, 1); /* still anchored in the table */
  return s;
}

int64_t ps_get_int(lua_State *L, int idx, const char *key)
{
  lua_Integer v;
  lua_getfield(L, idx, key);
  v = lua_tointeger(L, -1);
  lua_pop(L, 1);
  return (int64_t)v;
}

void ps_set_int(lua_State *L, int idx, const char *key, int64_t v)
{
  idx = lua_absindex(L, idx);
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, idx, key);
}

void ps_set_str(lua_State *L, int idx, const char *key, const char *v)
{
  idx = lua_absindex(L, idx);
  lua_pushstring(L, v);
  lua_setfield(L, idx, key);
}

/* ---- validation --------------------------------------------------------------------------- */

/* Makes t[key] a Lua integer if it is an integral finite number within +-2^53. */
static int normalize_int(lua_State *L, int idx, const char *key)
{
  int ok = 0;
  lua_getfield(L, idx, key);
  if (lua_isinteger(L, -1)) {
    lua_Integer v = lua_tointeger(L, -1);
    ok = v >= -PS_INT_LIMIT && v <= PS_INT_LIMIT;
  } else if (lua_type(L, -1) == LUA_TNUMBER) {
    lua_Number d = lua_tonumber(L, -1);
    if (isfinite(d) && d == floor(d) && fabs(d) <= (lua_Number)PS_INT_LIMIT) {
      ps_set_int(L, idx, key, (int64_t)d);
      ok = 1;
    }
  }
  lua_pop(L, 1);
  return ok;
}

/* Every number finite, every key a string or a sequence index, depth bounded. Integral
 * numbers nested in tables become Lua integers (cjson decodes every number as a float), so a
 * value reads the same whether it was just stored or read back from the file. */
int ps_check_value(lua_State *L, int idx, int depth)
{
  int t = lua_type(L, idx);
  if (t == LUA_TNUMBER) {
    if (lua_isinteger(L, idx)) return 1;
    return isfinite(lua_tonumber(L, idx));
  }
  if (t == LUA_TSTRING || t == LUA_TBOOLEAN) return 1;
  if (t == LUA_TLIGHTUSERDATA) return 1; /* cjson.null */
  if (t != LUA_TTABLE) return 0;
  if (depth > PS_MAX_DEPTH) return 0;
  idx = lua_absindex(L, idx);
  luaL_checkstack(L, 4, "pairstore: nesting");
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    int kt = lua_type(L, -2);
    if ((kt != LUA_TSTRING && !lua_isinteger(L, -2)) || !ps_check_value(L, -1, depth + 1)) {
      lua_pop(L, 2);
      return 0;
    }
    if (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1)) {
      lua_Number d = lua_tonumber(L, -1);
      if (d == floor(d) && fabs(d) <= (lua_Number)PS_INT_LIMIT) {
        lua_pushvalue(L, -2);
        lua_pushinteger(L, (lua_Integer)d);
        lua_rawset(L, idx); /* assigning an existing field during traversal is allowed */
      }
    }
    lua_pop(L, 1);
  }
  return 1;
}

const char *ps_validate_session(lua_State *L, int idx, int decoded)
{
  size_t n;
  const char *s, *mode;
  int i;

  idx = lua_absindex(L, idx);
  if (lua_type(L, idx) != LUA_TTABLE) return "not an object";
  s = ps_get_str(L, idx, "sid", &n);
  if (!s || n == 0) return "sid must be a non-empty string";
  if (!ps_get_str(L, idx, "skGatewayB64", &n)) return "skGatewayB64 must be a string";
  if (!ps_get_str(L, idx, "pkGatewayB64", &n)) return "pkGatewayB64 must be a string";
  for (i = 0; int_keys[i]; i++)
    if (!normalize_int(L, idx, int_keys[i])) return "timestamps and attempts must be integers";
  s = ps_get_str(L, idx, "secondaryCode", &n);
  if (!s || n != 6 || strspn(s, "0123456789") != 6) return "secondaryCode must be 6 digits";
  lua_getfield(L, idx, "operatorContext");
  i = lua_type(L, -1);
  lua_pop(L, 1);
  if (i != LUA_TTABLE) return "operatorContext must be an object";
  mode = ps_get_str(L, idx, "mode", &n);
  if (!mode || (strcmp(mode, "generate") != 0 && strcmp(mode, "import") != 0))
    return "mode must be generate or import";
  if (!ps_get_str(L, idx, "status", &n)) return "status must be a string";
  if (decoded) return NULL;
  if (!ps_check_value(L, idx, 0)) return "values must be finite JSON values";
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    int kt = lua_type(L, -2);
    lua_pop(L, 1);
    if (kt != LUA_TSTRING) {
      lua_pop(L, 1);
      return "keys must be strings";
    }
  }
  return NULL;
}

/* ---- copies ------------------------------------------------------------------------------ */

void ps_copy_value(lua_State *L, int idx, int depth)
{
  idx = lua_absindex(L, idx);
  if (lua_type(L, idx) != LUA_TTABLE || depth > PS_MAX_DEPTH + 1) {
    lua_pushvalue(L, idx);
    return;
  }
  luaL_checkstack(L, 6, "pairstore: nesting");
  lua_createtable(L, (int)lua_rawlen(L, idx), 12);
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    lua_pushvalue(L, -2);           /* key */
    ps_copy_value(L, -2, depth + 1); /* copy of value */
    lua_rawset(L, -5);
    lua_pop(L, 1);
  }
}

/* ---- encoding ----------------------------------------------------------------------------- */

static int cmp_str(const void *a, const void *b)
{
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Appends cjson.encode(value at idx). enc is the stack index of the encode function. */
static int encode_value(lua_State *L, int enc, int idx, ps_buf *b)
{
  size_t n;
  const char *s;
  idx = lua_absindex(L, idx);
  if (lua_isinteger(L, idx)) {
    char num[32];
    int k = snprintf(num, sizeof num, "%lld", (long long)lua_tointeger(L, idx));
    ps_buf_add(b, num, (size_t)k);
    return 0;
  }
  if (lua_type(L, idx) == LUA_TSTRING) {
    s = lua_tolstring(L, idx, &n);
    /* Fast path: nothing to escape in sids, keys, base64url, codes and statuses. */
    if (strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:@+= ") == n) {
      ps_buf_lit(b, "\"");
      ps_buf_add(b, s, n);
      ps_buf_lit(b, "\"");
      return 0;
    }
  }
  lua_pushvalue(L, enc);
  lua_pushvalue(L, idx);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    lua_pop(L, 1);
    return -1;
  }
  s = lua_tolstring(L, -1, &n);
  ps_buf_add(b, s, n);
  lua_pop(L, 1);
  return 0;
}

int ps_encode_session(lua_State *L, int enc, int idx, ps_buf *b)
{
  const char *extra_static[32];
  const char **extra = extra_static;
  size_t nextra = 0, cap = 32, i;
  int first = 1, rc = 0;

  idx = lua_absindex(L, idx);
  enc = lua_absindex(L, enc);
  ps_buf_lit(b, "{");
  for (i = 0; key_order[i]; i++) {
    lua_getfield(L, idx, key_order[i]);
    if (!lua_isnil(L, -1)) {
      if (!first) ps_buf_lit(b, ",");
      first = 0;
      ps_buf_lit(b, "\"");
      ps_buf_add(b, key_order[i], strlen(key_order[i]));
      ps_buf_lit(b, "\":");
      if (encode_value(L, enc, -1, b) != 0) rc = -1;
    }
    lua_pop(L, 1);
    if (rc) return -1;
  }
  /* Unknown keys survive, after the known ones, in a stable order. */
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING) { lua_pop(L, 1); rc = -1; break; }
    if (in_list(key_order, lua_tostring(L, -1))) continue;
    if (nextra == cap) {
      const char **grown = malloc(2 * cap * sizeof *grown);
      if (!grown) { lua_pop(L, 1); rc = -1; break; }
      memcpy(grown, extra, nextra * sizeof *extra);
      if (extra != extra_static) free(extra);
      extra = grown;
      cap *= 2;
    }
    extra[nextra++] = lua_tostring(L, -1); /* anchored by the table */
  }
  if (rc == 0) {
    qsort(extra, nextra, sizeof *extra, cmp_str);
    for (i = 0; i < nextra && rc == 0; i++) {
      lua_pushstring(L, extra[i]);
      if (!first) ps_buf_lit(b, ",");
      first = 0;
      if (encode_value(L, enc, -1, b) != 0) rc = -1; /* key */
      ps_buf_lit(b, ":");
      lua_rawget(L, idx);
      if (rc == 0 && encode_value(L, enc, -1, b) != 0) rc = -1;
      lua_pop(L, 1);
    }
  }
  if (extra != extra_static) free(extra);
  ps_buf_lit(b, "}");
  return b->oom ? -1 : rc;
}

/* ---- pruning ----------------------------------------------------------------------------- */

int64_t ps_next_prune(lua_State *L, int idx)
{
  size_t len;
  if (ps_is_terminal(ps_get_str(L, idx, "status", &len)))
    return ps_get_int(L, idx, "lastStatusChangeAtMs") + PS_TERMINAL_RETENTION_MS;
  return ps_get_int(L, idx, "expiresAtMs");
}

void ps_index_put(lua_State *L, int index, int sess, lua_Integer at)
{
  sess = lua_absindex(L, sess);
  lua_getfield(L, sess, "sid");
  if (at) lua_pushinteger(L, at);
  else lua_pushnil(L);
  lua_rawset(L, index);
}

int ps_prune(lua_State *L, int arr, int texts, int index, int64_t now, int *expired, int64_t *next)
{
  lua_Integer n = (lua_Integer)lua_rawlen(L, arr), i, out = 0;
  int removed = 0;
  arr = lua_absindex(L, arr);
  texts = lua_absindex(L, texts);
  if (index) index = lua_absindex(L, index);
  *expired = 0;
  *next = INT64_MAX;
  for (i = 1; i <= n; i++) {
    const char *status;
    size_t len;
    lua_rawgeti(L, arr, i);
    status = ps_get_str(L, -1, "status", &len);
    if (!ps_is_terminal(status) && now > ps_get_int(L, -1, "expiresAtMs")) {
      ps_set_str(L, -1, "status", "expired");
      ps_set_int(L, -1, "lastStatusChangeAtMs", ps_get_int(L, -1, "expiresAtMs"));
      lua_pushvalue(L, -1);
      lua_pushnil(L);
      lua_rawset(L, texts); /* its cached JSON is stale */
      status = "expired";
      (*expired)++;
    }
    if (ps_is_terminal(status)) {
      int64_t until = ps_get_int(L, -1, "lastStatusChangeAtMs") + PS_TERMINAL_RETENTION_MS;
      if (now > until) {
        removed++;
        if (index) ps_index_put(L, index, -1, 0);
        lua_pop(L, 1);
        continue;
      }
      if (until < *next) *next = until;
    } else {
      int64_t until = ps_get_int(L, -1, "expiresAtMs");
      if (until < *next) *next = until;
    }
    out++;
    if (index && out != i) ps_index_put(L, index, -1, out); /* moved down */
    lua_rawseti(L, arr, out);
  }
  for (i = out + 1; i <= n; i++) {
    lua_pushnil(L);
    lua_rawseti(L, arr, i);
  }
  return removed;
}
