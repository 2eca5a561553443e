/*
 * rules.c — the session rules on Lua tables, the same for every engine: which entries are
 * valid, allowed transitions, what each operation does to ONE session given now (a rule per
 * operation, returning an outcome), pruning's decision, deep copies, the reference's key order.
 */
#include "pairstore.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

static const char *const terminal[] = { "completed", "consumed", "expired", "rejected", NULL };
static const char *const known_status[] = { "awaiting_scan", "device_connected", "completed",
                                            "consumed", "expired", "rejected", NULL };
static const char *const known_mode[] = { "generate", "import", NULL };
const char *const *const ps_statuses = known_status;
const char *const *const ps_modes = known_mode;

/* Keys in the order the reference writes them. */
static const char *const key_order[] = {
  "sid", "skGatewayB64", "pkGatewayB64", "createdAtMs", "expiresAtMs", "secondaryCode",
  "secondaryCodeAttempts", "operatorContext", "mode", "status", "lastStatusChangeAtMs", NULL,
};
static const char *const num_keys[] = { "createdAtMs", "expiresAtMs", "secondaryCodeAttempts",
                                        "lastStatusChangeAtMs", NULL };
static const char *const context_order[] = { "channel", "senderId", "accountId", NULL };
static const ps_jorder context = { context_order, NULL, NULL };
const ps_jorder ps_session_order = { key_order, "operatorContext", &context };

static int in_list(const char *const *list, const char *s)
{
  for (; *list; list++)
    if (strcmp(*list, s) == 0) return 1;
  return 0;
}

int ps_is_terminal(const char *status) { return status && in_list(terminal, status); }
int ps_is_known_status(const char *status) { return status && in_list(known_status, status); }
int ps_is_known_mode(const char *mode) { return mode && in_list(known_mode, mode); }

int ps_is_sid(const char *s, size_t n)
{
  return n == 32 && strspn(s, "0123456789abcdef") == 32;
}

int ps_is_code(const char *s, size_t n)
{
  return n == 6 && strspn(s, "0123456789") == 6;
}

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

/* The int64 at or below the number d (clamped). */
static int64_t floor_ms(lua_Number d)
{
  if (!(d >= -0x1p63)) return INT64_MIN;
  if (d >= 0x1p63) return INT64_MAX;
  return (int64_t)floor(d);
}

int64_t ps_get_ms(lua_State *L, int idx, const char *key)
{
  int64_t v;
  lua_getfield(L, idx, key);
  v = lua_isinteger(L, -1) ? (int64_t)lua_tointeger(L, -1) : floor_ms(lua_tonumber(L, -1));
  lua_pop(L, 1);
  return v;
}

int ps_after(lua_State *L, int idx, const char *key, int64_t now)
{
  int r;
  lua_getfield(L, idx, key);
  lua_pushinteger(L, (lua_Integer)now);
  r = lua_compare(L, -2, -1, LUA_OPLT);
  lua_pop(L, 2);
  return r;
}

int ps_count_attempt(lua_State *L, int idx)
{
  int reached;
  idx = lua_absindex(L, idx);
  lua_getfield(L, idx, "secondaryCodeAttempts");
  if (lua_isinteger(L, -1) && lua_tointeger(L, -1) == LUA_MAXINTEGER) {
    reached = 1; /* nothing to add: it stays, and has long reached the maximum */
  } else {
    lua_pushinteger(L, 1);
    lua_arith(L, LUA_OPADD);
    lua_pushvalue(L, -1);
    lua_setfield(L, idx, "secondaryCodeAttempts");
    lua_pushinteger(L, PS_MAX_CODE_ATTEMPTS);
    reached = !lua_compare(L, -2, -1, LUA_OPLT);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return reached;
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

/* Whether v (a float) is integral and within int64: then it is exactly a Lua integer. */
static int integral(lua_Number d)
{
  return d == floor(d) && d >= -0x1p63 && d < 0x1p63;
}

/* t[key] must be a finite number (any, as the reference's validator wants); an integral one
 * becomes a Lua integer. */
static int normalize_num(lua_State *L, int idx, const char *key)
{
  int ok = 1;
  lua_getfield(L, idx, key);
  if (lua_type(L, -1) != LUA_TNUMBER) {
    ok = 0;
  } else if (!lua_isinteger(L, -1)) {
    lua_Number d = lua_tonumber(L, -1);
    if (!isfinite(d)) ok = 0;
    else if (integral(d)) ps_set_int(L, idx, key, (int64_t)d);
  }
  lua_pop(L, 1);
  return ok;
}

/* Every number finite, every key a string or a sequence index, depth bounded, no cycle:
 * NULL, or what is wrong, in words. Integral numbers nested in tables become Lua integers
 * (cjson decodes every number as a float; -0 becomes 0), so a value reads the same whether
 * it was just stored or read back from the file. path: the tables above it (a cycle is told
 * from deep nesting by finding the table among them). */
static const char *value_problem(lua_State *L, int idx, int depth, const void **path, int below)
{
  int t = lua_type(L, idx);
  if (t == LUA_TNUMBER) {
    if (lua_isinteger(L, idx)) return NULL;
    return isfinite(lua_tonumber(L, idx)) ? NULL : "a number is NaN or infinite (JSON has neither)";
  }
  if (t == LUA_TSTRING || t == LUA_TBOOLEAN) return NULL;
  if (t == LUA_TLIGHTUSERDATA) return NULL; /* cjson.null */
  if (t == LUA_TFUNCTION) return "a function is not a JSON value";
  if (t == LUA_TUSERDATA) return "a userdata is not a JSON value";
  if (t == LUA_TTHREAD) return "a coroutine is not a JSON value";
  if (t != LUA_TTABLE) return "a value of this type is not a JSON value";
  if (depth > PS_MAX_DEPTH) {
    static const char deeper[] = "tables are nested deeper than 512 levels";
    static const char cycle[] = "a table contains itself (a cycle)";
    int i;
    const void *me = lua_topointer(L, idx);
    for (i = 0; path && i < PS_MAX_DEPTH + 2 && path[i]; i++)
      if (path[i] == me) return cycle;
    if (path && !below) {
      /* a copy of a cycle (copies stop at this depth) ends in the cycle itself: look below
       * once more (bounded: the look below looks no further) */
      const void *sub[PS_MAX_DEPTH + 3];
      sub[0] = NULL;
      if (value_problem(L, idx, 0, sub, 1) == cycle) return cycle;
    }
    return deeper;
  }
  idx = lua_absindex(L, idx);
  if (path && depth >= 0) {
    path[depth] = lua_topointer(L, idx);
    path[depth + 1] = NULL;
  }
  luaL_checkstack(L, 4, "pairstore: nesting");
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    int kt = lua_type(L, -2);
    const char *why = NULL;
    if (kt == LUA_TNUMBER && !lua_isinteger(L, -2))
      why = "a table has a key that is a number but not an integer (JSON keys are strings)";
    else if (kt != LUA_TSTRING && kt != LUA_TNUMBER)
      why = kt == LUA_TBOOLEAN ? "a table has a boolean key (JSON keys are strings)"
                               : "a table has a key that is neither a string nor an integer";
    else
      why = value_problem(L, -1, depth + 1, path, below);
    if (why) {
      lua_pop(L, 2);
      return why;
    }
    if (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1)) {
      lua_Number d = lua_tonumber(L, -1);
      if (integral(d)) {
        lua_pushvalue(L, -2);
        lua_pushinteger(L, (lua_Integer)d);
        lua_rawset(L, idx); /* assigning an existing field during traversal is allowed */
      }
    }
    lua_pop(L, 1);
  }
  return NULL;
}

int ps_check_value(lua_State *L, int idx, int depth)
{
  return value_problem(L, idx, depth, NULL, 0) == NULL;
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
  for (i = 0; num_keys[i]; i++)
    if (!normalize_num(L, idx, num_keys[i])) return "timestamps and attempts must be finite numbers";
  s = ps_get_str(L, idx, "secondaryCode", &n);
  if (!s || !ps_is_code(s, n)) return "secondaryCode must be 6 digits";
  lua_getfield(L, idx, "operatorContext");
  i = lua_type(L, -1);
  lua_pop(L, 1);
  if (i != LUA_TTABLE) return "operatorContext must be an object";
  mode = ps_get_str(L, idx, "mode", &n);
  if (!ps_is_known_mode(mode))
    return "mode must be generate or import";
  if (!ps_get_str(L, idx, "status", &n)) return "status must be a string";
  if (decoded) return NULL;
  {
    const void *path[PS_MAX_DEPTH + 3];
    const char *why = value_problem(L, idx, 0, path, 0);
    if (why) return why;
  }
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

/* Copies with a budget of values: a table shared many times over (a DAG) would otherwise
 * be copied once per path to it, exponentially. */
static void copy_bounded(lua_State *L, int idx, int depth, long *left)
{
  idx = lua_absindex(L, idx);
  if (--*left < 0 || lua_type(L, idx) != LUA_TTABLE || depth > PS_MAX_DEPTH + 1) {
    lua_pushvalue(L, idx);
    return;
  }
  luaL_checkstack(L, 6, "pairstore: nesting");
  lua_createtable(L, (int)lua_rawlen(L, idx), 12);
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    if (*left < 0) { /* over budget: the caller drops the partial copy */
      lua_pop(L, 2);
      break;
    }
    lua_pushvalue(L, -2);                  /* key */
    copy_bounded(L, -2, depth + 1, left);  /* copy of value */
    lua_rawset(L, -5);
    lua_pop(L, 1);
  }
}

int ps_copy_bounded(lua_State *L, int idx, long budget)
{
  int top = lua_gettop(L);
  idx = lua_absindex(L, idx);
  copy_bounded(L, idx, 0, &budget);
  if (budget < 0) {
    lua_settop(L, top);
    return -1;
  }
  return 0;
}

void ps_copy_value(lua_State *L, int idx, int depth)
{
  long budget = LONG_MAX;
  copy_bounded(L, idx, depth, &budget);
}

/* ---- pruning ----------------------------------------------------------------------------- */

static int64_t sat_add(int64_t a, int64_t b)
{
  return a > INT64_MAX - b ? INT64_MAX : a + b;
}

/* A terminal session is deleted once now - lastStatusChangeAtMs > retention, compared
 * exactly: now > last + retention (an integer sum, or a float one for a fractional last). */
static int retention_over(lua_State *L, int idx, int64_t now)
{
  int r;
  idx = lua_absindex(L, idx);
  lua_pushinteger(L, (lua_Integer)now);
  lua_getfield(L, idx, "lastStatusChangeAtMs");
  if (lua_isinteger(L, -1) && lua_tointeger(L, -1) > LUA_MAXINTEGER - PS_TERMINAL_RETENTION_MS) {
    lua_pop(L, 2);
    return 0;
  }
  lua_pushinteger(L, PS_TERMINAL_RETENTION_MS);
  lua_arith(L, LUA_OPADD);
  r = lua_compare(L, -1, -2, LUA_OPLT);
  lua_pop(L, 2);
  return r;
}

int64_t ps_next_prune(lua_State *L, int idx)
{
  size_t len;
  if (ps_is_terminal(ps_get_str(L, idx, "status", &len)))
    return sat_add(ps_get_ms(L, idx, "lastStatusChangeAtMs"), PS_TERMINAL_RETENTION_MS);
  return ps_get_ms(L, idx, "expiresAtMs");
}

/* ---- the operations on one session ------------------------------------------------------ */

int ps_is_live(lua_State *L, int sess)
{
  size_t len;
  return !ps_is_terminal(ps_get_str(L, sess, "status", &len));
}

static void touch_status(lua_State *L, int sess, const char *status, int64_t now)
{
  ps_set_str(L, sess, "status", status);
  ps_set_int(L, sess, "lastStatusChangeAtMs", now);
}

int ps_rule_transition(lua_State *L, int sess, const char *to, int64_t now, const char **outcome)
{
  size_t len;
  const char *status = ps_get_str(L, sess, "status", &len);
  *outcome = NULL;
  if (strcmp(status, to) == 0) return PS_RULE_SAME;
  if (!ps_transition_allowed(status, to)) {
    *outcome = "illegal_transition";
    return PS_RULE_SAME;
  }
  touch_status(L, sess, to, now);
  return PS_RULE_CHANGED;
}

int ps_rule_failed_code(lua_State *L, int sess, int64_t now, const char **outcome)
{
  size_t len;
  *outcome = NULL;
  if (ps_is_terminal(ps_get_str(L, sess, "status", &len))) return PS_RULE_SAME; /* no counting after the end */
  if (ps_count_attempt(L, sess)) touch_status(L, sess, "rejected", now);
  return PS_RULE_CHANGED;
}

int ps_rule_verify_code(lua_State *L, int sess, const char *given, int64_t now,
                        const char **outcome)
{
  size_t len;
  const char *status = ps_get_str(L, sess, "status", &len), *code;
  *outcome = NULL;
  if (strcmp(status, "expired") == 0 || strcmp(status, "rejected") == 0) {
    *outcome = strcmp(status, "expired") == 0 ? "expired" : "rejected";
    return PS_RULE_SAME;
  }
  if (strcmp(status, "consumed") == 0 || strcmp(status, "completed") == 0) {
    *outcome = "already_consumed";
    return PS_RULE_SAME;
  }
  if (strcmp(status, "awaiting_scan") != 0 && strcmp(status, "device_connected") != 0) {
    *outcome = "illegal_transition";
    return PS_RULE_SAME;
  }
  code = ps_get_str(L, sess, "secondaryCode", &len);
  if (sodium_memcmp(code, given, 6) != 0) {
    *outcome = "wrong_code";
    if (ps_count_attempt(L, sess)) {
      touch_status(L, sess, "rejected", now);
      *outcome = "attempts_exhausted";
    }
    return PS_RULE_CHANGED;
  }
  if (strcmp(status, "awaiting_scan") == 0) {
    touch_status(L, sess, "device_connected", now);
    return PS_RULE_CHANGED;
  }
  return PS_RULE_SAME;
}

/* Consume's checks, in the reference's order: why the session at sess can no longer be
 * consumed (expired, already_consumed, rejected), or NULL. */
static const char *consume_ended(lua_State *L, int sess, int64_t now)
{
  size_t len;
  const char *status = ps_get_str(L, sess, "status", &len);
  if (ps_after(L, sess, "expiresAtMs", now)) return "expired";
  if (!strcmp(status, "completed") || !strcmp(status, "consumed")) return "already_consumed";
  if (!strcmp(status, "rejected")) return "rejected";
  if (!strcmp(status, "expired")) return "expired";
  return NULL;
}

int ps_rule_consume(lua_State *L, int sess, int64_t now, const char **outcome)
{
  size_t len;
  *outcome = consume_ended(L, sess, now);
  if (!*outcome && !ps_transition_allowed(ps_get_str(L, sess, "status", &len), "consumed"))
    *outcome = "illegal_transition";
  if (*outcome) return PS_RULE_SAME;
  touch_status(L, sess, "consumed", now);
  return PS_RULE_CHANGED;
}

int ps_rule_respond(lua_State *L, int sess, int64_t now, const char **outcome)
{
  size_t len;
  *outcome = consume_ended(L, sess, now);
  if (*outcome) return PS_RULE_SAME; /* a session already ended stays as it is */
  if (strcmp(ps_get_str(L, sess, "status", &len), "device_connected") != 0) {
    *outcome = "not_device_connected"; /* the code was never verified */
    touch_status(L, sess, "rejected", now);
    return PS_RULE_CHANGED;
  }
  return PS_RULE_SAME;
}

int ps_rule_respond_opened(lua_State *L, int sess, int64_t now, const char *why,
                           const char **outcome)
{
  *outcome = NULL;
  if (why && strcmp(why, "unsupported") == 0) {
    *outcome = "unsupported"; /* left as it was: the phone may retry elsewhere */
    return PS_RULE_SAME;
  }
  if (why) {
    *outcome = "decrypt_failed";
    touch_status(L, sess, "rejected", now);
    return PS_RULE_CHANGED;
  }
  touch_status(L, sess, "consumed", now);
  return PS_RULE_CHANGED;
}

void ps_rule_new_session(lua_State *L, const char *sid, int mode, int operator_ctx, int sk,
                         int pk, int code, int64_t now, int64_t ttl)
{
  lua_createtable(L, 0, 12);
  ps_set_str(L, -1, "sid", sid);
  lua_pushvalue(L, sk);
  lua_setfield(L, -2, "skGatewayB64");
  lua_pushvalue(L, pk);
  lua_setfield(L, -2, "pkGatewayB64");
  ps_set_int(L, -1, "createdAtMs", now);
  ps_set_int(L, -1, "expiresAtMs", now + ttl);
  lua_pushvalue(L, code);
  lua_setfield(L, -2, "secondaryCode");
  ps_set_int(L, -1, "secondaryCodeAttempts", 0);
  ps_copy_value(L, operator_ctx, 0);
  lua_setfield(L, -2, "operatorContext");
  lua_pushvalue(L, mode);
  lua_setfield(L, -2, "mode");
  ps_set_str(L, -1, "status", "awaiting_scan");
  ps_set_int(L, -1, "lastStatusChangeAtMs", now);
}

int ps_rule_prune(lua_State *L, int sess, int64_t now)
{
  size_t len;
  int r = PS_PRUNE_KEEP;
  const char *status = ps_get_str(L, sess, "status", &len);
  sess = lua_absindex(L, sess);
  if (!ps_is_terminal(status) && ps_after(L, sess, "expiresAtMs", now)) {
    ps_set_str(L, sess, "status", "expired");
    lua_getfield(L, sess, "expiresAtMs"); /* the moment it expired, as the reference */
    lua_setfield(L, sess, "lastStatusChangeAtMs");
    status = "expired";
    r |= PS_PRUNE_EXPIRED;
  }
  if (ps_is_terminal(status) && retention_over(L, sess, now)) r |= PS_PRUNE_DROP;
  return r;
}
