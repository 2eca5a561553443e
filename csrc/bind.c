/*
 * bind.c — the Lua binding pairstore.core, kept thin: the store userdata and its methods
 * (arguments checked, then one transaction each), open's options, the module table.
 */
#include "pairstore.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#define PS_VERSION  "0.1.0"

/* ---- helpers ------------------------------------------------------------------------------- */

static ps_store *check_store(lua_State *L, int idx)
{
  ps_store *s = luaL_checkudata(L, idx, PS_STORE_MT);
  if (!s->eng) luaL_error(L, "pairstore: store is closed");
  return s;
}

/* The one check of a sid argument (the methods below, and the Lua layer through
 * core.sid_error): a string of exactly 32 lowercase hex characters (no NUL, nothing after).
 * Pushes why the value at idx is not one ("pairstore.<fn>: ...") and returns 1, or returns 0. */
static int sid_error(lua_State *L, int idx, const char *fn)
{
  size_t n;
  const char *s;
  idx = lua_absindex(L, idx);
  if (lua_type(L, idx) != LUA_TSTRING) {
    lua_pushfstring(L, "pairstore.%s: sid must be a string, got %s", fn, luaL_typename(L, idx));
    return 1;
  }
  s = lua_tolstring(L, idx, &n);
  if (ps_is_sid(s, n)) return 0;
  /* what was given, as string.format's %q shows it (its first 40 bytes) */
  lua_getfield(L, LUA_REGISTRYINDEX, "_LOADED");
  lua_getfield(L, -1, "string");
  lua_getfield(L, -1, "format");
  lua_replace(L, -3);
  lua_pop(L, 1);
  lua_pushliteral(L, "pairstore.%s: sid must be 32 lowercase hex characters, got %q");
  lua_pushstring(L, fn);
  lua_pushlstring(L, s, n < 40 ? n : 40);
  lua_call(L, 3, 1);
  return 1;
}

/* A sid argument, or raises (without a position: the Lua layer raises at its caller's). */
static const char *check_sid(lua_State *L, int idx, const char *fn)
{
  if (sid_error(L, idx, fn)) lua_error(L);
  return lua_tostring(L, idx);
}

/* create's operator fields are bounded (PS_MAX_FIELD_BYTES each), so that one session cannot
 * crowd out the others. Pushes nil, message, "limit" and returns 3, or returns 0. */
static int field_limit(lua_State *L, int ctx)
{
  static const char *const known[] = { "channel", "senderId", "accountId", NULL };
  int i;
  for (i = 0; known[i]; i++) {
    lua_getfield(L, ctx, known[i]);
    if (lua_type(L, -1) == LUA_TSTRING && lua_rawlen(L, -1) > PS_MAX_FIELD_BYTES) {
      lua_pushnil(L);
      lua_pushfstring(L, "operator.%s is %d bytes, above the limit of %d", known[i],
                      (int)lua_rawlen(L, -2), PS_MAX_FIELD_BYTES);
      lua_pushliteral(L, "limit");
      return 3;
    }
    lua_pop(L, 1);
  }
  return 0;
}

static int run(lua_State *L, ps_op op, int readonly)
{
  check_store(L, 1);
  return ps_txn_run(L, op, readonly);
}

/* ---- methods ------------------------------------------------------------------------------- */

static int m_get(lua_State *L)
{
  check_sid(L, 2, "get");
  lua_settop(L, 2);
  return run(L, PS_OP_GET, 1);
}

static int m_list(lua_State *L)
{
  lua_settop(L, 2);
  return run(L, PS_OP_LIST, 1);
}

/* create(mode, operator, ttl, sid_hex|nil, sk_raw|nil, code|nil). The key pair and the
 * code are made before taking the lock: they do not depend on the file. */
static int m_create(lua_State *L)
{
  char sk[44], pk[44], code[7];
  const char *v;
  size_t len;

  luaL_checkstring(L, 2);
  luaL_checktype(L, 3, LUA_TTABLE);
  luaL_checkinteger(L, 4);
  lua_settop(L, 7);
  if (field_limit(L, 3)) return 3;
  if (!lua_isnil(L, 5)) {
    v = luaL_checklstring(L, 5, &len);
    luaL_argcheck(L, ps_is_sid(v, len), 5, "sid must be 32 lowercase hex");
  }
  if (!lua_isnil(L, 6)) {
    v = luaL_checklstring(L, 6, &len);
    luaL_argcheck(L, len == 32, 6, "secret key must be 32 bytes");
    ps_keypair_b64u(sk, pk, (const unsigned char *)v);
  } else {
    ps_keypair_b64u(sk, pk, NULL);
  }
  if (!lua_isnil(L, 7)) {
    v = luaL_checklstring(L, 7, &len);
    luaL_argcheck(L, ps_is_code(v, len), 7, "code must be 6 digits");
  } else {
    ps_random_code(code);
    lua_pushstring(L, code);
    lua_replace(L, 7);
    sodium_memzero(code, sizeof code);
  }
  lua_pushstring(L, sk);
  lua_replace(L, 6);
  lua_pushstring(L, pk);  /* 8 */
  sodium_memzero(sk, sizeof sk);
  return run(L, PS_OP_CREATE, 0);
}

static int m_update(lua_State *L)
{
  check_sid(L, 2, "update");
  luaL_checktype(L, 3, LUA_TFUNCTION);
  lua_settop(L, 3);
  return run(L, PS_OP_UPDATE, 0);
}

static int m_transition(lua_State *L)
{
  check_sid(L, 2, "transition");
  if (!ps_is_known_status(luaL_checkstring(L, 3))) return luaL_argerror(L, 3, "unknown status");
  lua_settop(L, 3);
  return run(L, PS_OP_TRANSITION, 0);
}

static int m_reject(lua_State *L)
{
  check_sid(L, 2, "reject");
  lua_settop(L, 2);
  lua_pushliteral(L, "rejected");
  return run(L, PS_OP_TRANSITION, 0);
}

static int m_failed_code(lua_State *L)
{
  check_sid(L, 2, "register_failed_code");
  lua_settop(L, 2);
  return run(L, PS_OP_FAILED_CODE, 0);
}

static int m_verify(lua_State *L)
{
  size_t n;
  const char *code;
  check_sid(L, 2, "verify_code");
  code = luaL_checklstring(L, 3, &n);
  if (!ps_is_code(code, n)) {
    lua_pushnil(L);
    lua_pushstring(L, "bad_code");
    lua_pushstring(L, "bad_code");
    return 3;
  }
  lua_settop(L, 3);
  return run(L, PS_OP_VERIFY, 0);
}

static int m_consume(lua_State *L)
{
  check_sid(L, 2, "consume");
  lua_settop(L, 2);
  return run(L, PS_OP_CONSUME, 0);
}

/* respond(sid, pk_d, nonce, ct, aead): the phone's response (its shape checked by the Lua
 * wrapper) applied as consume's rule with the decryption under the lock. */
static int m_respond(lua_State *L)
{
  check_sid(L, 2, "respond");
  luaL_checkstring(L, 3);
  luaL_checkstring(L, 4);
  luaL_checkstring(L, 5);
  luaL_checkstring(L, 6);
  lua_settop(L, 6);
  return run(L, PS_OP_RESPOND, 0);
}

static int m_prune(lua_State *L)
{
  lua_settop(L, 1);
  return run(L, PS_OP_PRUNE, 0);
}

static int m_export(lua_State *L)
{
  lua_settop(L, 1);
  return run(L, PS_OP_EXPORT, 1);
}

/* import(texts): an array of strings (checked here: the wrapper raises at its caller). */
static int m_import(lua_State *L)
{
  lua_Integer n, i;
  check_store(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  n = (lua_Integer)lua_rawlen(L, 2);
  for (i = 1; i <= n; i++) {
    if (lua_rawgeti(L, 2, i) != LUA_TSTRING)
      return luaL_argerror(L, 2, "an array of session texts (strings)");
    lua_pop(L, 1);
  }
  return run(L, PS_OP_IMPORT, 0);
}

/* watch(sid) -> watcher | nil, message, code: wakes when the session may have changed. */
static int m_watch(lua_State *L)
{
  ps_store *s = check_store(L, 1);
  ps_err e;
  const char *sid = check_sid(L, 2, "watch");
  lua_settop(L, 2);
  lua_getiuservalue(L, 1, PS_UV_ENGINE);
  if (s->eng->m->watch(s->eng, L, 3, sid, &e) != 0) return ps_push_err(L, &e);
  return 1;
}

/* now() -> the store's clock: the `now` option, else the engine's (a server's: one
 * transaction that only reads it), else the local wall clock. */
static int m_now(lua_State *L)
{
  ps_store *s = check_store(L, 1);
  lua_settop(L, 1);
  lua_getiuservalue(L, 1, PS_UV_OPTS);
  lua_getfield(L, -1, "now");
  if (!lua_isnil(L, -1)) { /* the caller's clock, as the caller wrote it */
    lua_call(L, 0, 1);
    return 1;
  }
  if (!s->eng->m->clock) {
    lua_pushinteger(L, (lua_Integer)ps_wall_ms());
    return 1;
  }
  lua_settop(L, 1);
  return run(L, PS_OP_NOW, 1);
}

/* c:wait_mode(mode [, deadline, tries]): how the next transaction waits for a busy lock
 * (PS_WAIT_*: 0 in the engine, 1 a new cooperative wait, 2 the same cooperative wait again,
 * with the deadline and tries its last lock_busy answer gave). */
static int m_wait_mode(lua_State *L)
{
  ps_store *s = check_store(L, 1);
  lua_Integer mode = luaL_checkinteger(L, 2);
  luaL_argcheck(L, mode >= PS_WAIT_BLOCK && mode <= PS_WAIT_CONTINUE, 2, "unknown wait mode");
  if (mode == PS_WAIT_CONTINUE) {
    lua_Integer deadline = luaL_checkinteger(L, 3), tries = luaL_checkinteger(L, 4);
    luaL_argcheck(L, tries >= 0 && tries < 1000000000, 4, "tries out of range");
    s->wait_deadline = (int64_t)deadline;
    s->wait_tries = (int)tries;
  }
  s->wait_mode = (int)mode;
  return 0;
}

/* c:use_engine(h): the next transaction runs on h, a deferred engine of this store
 * (c:pg_handle), instead of the store's own; c:use_engine(nil): on the store's own. */
static int m_use_engine(lua_State *L)
{
  check_store(L, 1);
  luaL_argcheck(L, lua_isnoneornil(L, 2) || ps_pg_is_engine(L, 2), 2,
                "expected a handle from store:pg_handle()");
  lua_settop(L, 2);
  lua_setiuservalue(L, 1, PS_UV_NEXT);
  return 0;
}

/* c:pg_handle([listen]) -> a deferred engine (its own connection, opened when first used)
 * for this PostgreSQL store: its round trips run where the caller says (pg_perform). */
static int m_pg_handle(lua_State *L)
{
  ps_store *s = check_store(L, 1);
  int listen = lua_toboolean(L, 2);
  lua_getiuservalue(L, 1, PS_UV_ENGINE);
  luaL_argcheck(L, ps_pg_is_engine(L, -1), 1, "not a PostgreSQL store");
  lua_getiuservalue(L, 1, PS_UV_DECODE);
  ps_pg_engine_clone(L, s->eng, -1, listen);
  return 1;
}

/* c:announce(sid) -> true | nil, message, code: says that someone waits for the session's
 * change (a store whose waits are watched elsewhere; see store:wait in nginx). */
static int m_announce(lua_State *L)
{
  check_sid(L, 2, "wait");
  lua_settop(L, 2);
  return run(L, PS_OP_ANNOUNCE, 1);
}

/* c:deadline(ms): the next transaction or watch connects and gets its answers by this
 * monotonic ms (PostgreSQL; a file store's lock wait is bounded by wait_mode's deadline). */
static int m_deadline(lua_State *L)
{
  ps_store *s = check_store(L, 1);
  lua_Integer deadline = luaL_checkinteger(L, 2);
  luaL_argcheck(L, deadline > 0, 2, "deadline must be positive");
  if (!strcmp(s->eng->m->name, "postgresql")) ps_pg_until(s->eng, (int64_t)deadline);
  return 0;
}

/* c:idle(): lets go of what the store keeps between transactions (a parked lock sentinel, a
 * connection): a process about to fork workers (nginx's master in init_by_lua) keeps none. */
static int m_idle(lua_State *L)
{
  ps_store *s = check_store(L, 1);
  if (!s->busy && s->eng->m->idle) s->eng->m->idle(s->eng);
  return 0;
}

/* c:lock_waited() -> the seconds the last transaction waited inside the core for a lock
 * another held (the file's lock, a PostgreSQL row), or nil: it did not wait there. */
static int m_lock_waited(lua_State *L)
{
  ps_store *s = check_store(L, 1);
  if (s->eng->waited_us <= 0) return 0;
  lua_pushnumber(L, (lua_Number)s->eng->waited_us / 1e6);
  return 1;
}

/* c:server(timeout_ms) -> { host, port, reached, primary, version, rows } | nil, message, code: the
 * server a PostgreSQL store's connection reaches (`pairstore stats`), asked on its own
 * connection, outside a transaction, within timeout_ms. */
static int m_server(lua_State *L)
{
  ps_store *s = check_store(L, 1);
  lua_Integer ms = luaL_checkinteger(L, 2);
  ps_err e;
  luaL_argcheck(L, ms > 0, 2, "timeout_ms must be positive");
  if (strcmp(s->eng->m->name, "postgresql") != 0) {
    ps_err_set(&e, "unsupported", "not a PostgreSQL store: %s", s->eng->m->display(s->eng));
    return ps_push_err(L, &e);
  }
  if (s->busy) return luaL_error(L, "pairstore: server() called while a transaction of this store runs");
  if (ps_pg_server(s->eng, L, ps_mono_ms() + (int64_t)ms, &e) != 0) return ps_push_err(L, &e);
  return 1;
}

static int m_backend(lua_State *L)
{
  ps_store *s = check_store(L, 1);
  lua_pushstring(L, s->eng->m->name);
  return 1;
}

static int m_close(lua_State *L)
{
  ps_store *s = luaL_checkudata(L, 1, PS_STORE_MT);
  if (s->busy) {
    /* from its own mutator or clock: the transaction still needs it (no position: the Lua
     * wrapper raises it at its caller's level) */
    lua_pushliteral(L, "pairstore.close: the store is in use by its own transaction (called "
                       "from inside a mutator or the clock); close it after the call returns");
    return lua_error(L);
  }
  if (s->eng) s->eng->m->close(s->eng);
  s->eng = NULL;
  return 0;
}

static int m_path(lua_State *L)
{
  ps_store *s = check_store(L, 1);
  lua_pushstring(L, s->eng->m->display(s->eng));
  return 1;
}

static int m_tostring(lua_State *L)
{
  ps_store *s = luaL_checkudata(L, 1, PS_STORE_MT);
  lua_pushfstring(L, "pairstore.store (%s)", s->eng ? s->eng->m->display(s->eng) : "closed");
  return 1;
}

/* ---- module functions ---------------------------------------------------------------------- */

static int opt_int(lua_State *L, int opts, const char *key, int dflt, int lo, int hi)
{
  lua_Integer v;
  int isnum;
  lua_getfield(L, opts, key);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return dflt;
  }
  v = lua_tointegerx(L, -1, &isnum);
  lua_pop(L, 1);
  if (!isnum || v < lo || v > hi) { /* no position: the Lua wrapper raises it at its caller's */
    lua_pushfstring(L, "pairstore.open: option %s must be an integer in [%d, %d]", key, lo, hi);
    return lua_error(L);
  }
  return (int)v;
}

/* The file engine for path (pushed), with its options from opts (max_session_bytes and
 * lock_wait_ms: the store's, read once). */
static void open_file(lua_State *L, const char *path, size_t len, int opts, int decode,
                      const ps_store *st)
{
  ps_file_opts o;
  char *abs;
  char cwd[4096];

  luaL_argcheck(L, len > 0 && len < 3500 && strlen(path) == len, 1, "invalid path");
  {
    const char *last = strrchr(path, '/');
    last = last ? last + 1 : path;
    luaL_argcheck(L, *last && strcmp(last, ".") != 0 && strcmp(last, "..") != 0, 1,
                  "path names a directory");
  }
  o.lock_wait_ms = st->lock_wait_ms;
  o.lock_stale_ms = opt_int(L, opts, "lock_stale_ms", PS_LOCK_STALE_MS, 1, INT_MAX);
  o.max_file_bytes = (size_t)opt_int(L, opts, "max_file_bytes", (int)PS_MAX_FILE_BYTES, 64, INT_MAX);
  o.max_session_bytes = st->max_session_bytes;
  lua_getfield(L, opts, "durable");
  o.durable = lua_isnil(L, -1) ? 1 : lua_toboolean(L, -1);
  lua_pop(L, 1);

  if (path[0] == '/') {
    lua_pushstring(L, path);
  } else {
    if (!getcwd(cwd, sizeof cwd)) luaL_error(L, "pairstore.open: getcwd failed");
    lua_pushfstring(L, "%s/%s", cwd, path);
  }
  /* a copy to tidy in place (a Lua buffer: nothing leaks if it raises) */
  abs = lua_newuserdatauv(L, lua_rawlen(L, -1) + 1, 0);
  memcpy(abs, lua_tostring(L, -2), lua_rawlen(L, -2) + 1);
  if (ps_file_normalize_path(abs) != 0) luaL_argerror(L, 1, "path names a directory");
  ps_file_engine_new(L, abs, &o, decode);
  lua_replace(L, -3);
  lua_pop(L, 1);
}

/* A store's name (the one check): 1 to 200 bytes of UTF-8 without control characters. */
static int store_name_ok(const char *s, size_t n)
{
  size_t i;
  if (n == 0 || n > 200 || !ps_utf8_valid((const unsigned char *)s, n)) return 0;
  for (i = 0; i < n; i++)
    if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) return 0;
  return 1;
}

/* The PostgreSQL engine for target (pushed), with its options from opts (max_session_bytes and
 * lock_wait_ms: the store's, read once). */
static void open_pg(lua_State *L, const char *target, size_t len, int opts, int decode,
                    const ps_store *st)
{
  ps_pg_opts o;
  size_t n;
  luaL_argcheck(L, strlen(target) == len && len < 8192, 1, "invalid target");
  lua_getfield(L, opts, "store");
  if (lua_isnil(L, -1)) {
    o.store = "default";
  } else {
    o.store = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
    if (!o.store || !store_name_ok(o.store, n)) {
      lua_pushliteral(L, "pairstore.open: option store must be a name of 1 to 200 bytes of "
                         "printable UTF-8");
      lua_error(L);
    }
  }
  lua_getfield(L, opts, "listen_target");
  o.listen_target = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
  if (o.listen_target && !ps_pg_is_target(o.listen_target)) {
    lua_pushliteral(L, "pairstore.open: option listen_target must be a PostgreSQL target");
    lua_error(L);
  }
  lua_pop(L, 1); /* (the options table keeps the string) */
  o.lock_wait_ms = st->lock_wait_ms;
  o.connect_timeout_ms = opt_int(L, opts, "connect_timeout_ms", 10000, 1, 3600000);
  o.statement_timeout_ms = opt_int(L, opts, "statement_timeout_ms", 30000, 1, 3600000);
  o.max_session_bytes = st->max_session_bytes;
  lua_getfield(L, opts, "durable");
  o.durable = lua_isnil(L, -1) ? 1 : lua_toboolean(L, -1);
  lua_pop(L, 1);
  ps_pg_engine_new(L, target, &o, decode);
  lua_replace(L, -2); /* the store name's string is kept by the engine */
}

/* open(target, opts) -> store: a file path or a PostgreSQL target. opts: the normalised
 * options table (kept as a user value). */
static int f_open(lua_State *L)
{
  size_t len;
  const char *target = luaL_checklstring(L, 1, &len);
  ps_store *s;
  char why[512];

  luaL_checktype(L, 2, LUA_TTABLE);
  if (ps_target_refused(target, why, sizeof why)) return luaL_error(L, "pairstore.open: %s", why);
  s = lua_newuserdatauv(L, sizeof *s, PS_UV_COUNT); /* 3 */
  memset(s, 0, sizeof *s);
  luaL_setmetatable(L, PS_STORE_MT); /* before any resource is acquired */
  s->max_sessions = opt_int(L, 2, "max_sessions", PS_MAX_SESSIONS, 1, INT_MAX);
  s->max_session_bytes =
      (size_t)opt_int(L, 2, "max_session_bytes", PS_MAX_SESSION_BYTES, 256, INT_MAX);
  s->lock_wait_ms = opt_int(L, 2, "lock_wait_ms", PS_LOCK_WAIT_MS, 0, 3600000);
  lua_getfield(L, lua_upvalueindex(1), "decode"); /* 4 */
  lua_pushvalue(L, 4);
  lua_setiuservalue(L, 3, PS_UV_DECODE);
  if (ps_pg_is_target(target)) open_pg(L, target, len, 2, 4, s);
  else open_file(L, target, len, 2, 4, s);
  lua_setiuservalue(L, 3, PS_UV_ENGINE);
  lua_getiuservalue(L, 3, PS_UV_ENGINE);
  s->eng = lua_touserdata(L, -1);
  if (s->eng->m->version < PS_ENGINE_VERSION) /* the methods it must have are missing */
    return luaL_error(L, "pairstore.open: engine %s has interface version %d, not %d",
                      s->eng->m->name, s->eng->m->version, PS_ENGINE_VERSION);
  lua_settop(L, 3);
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, 3, PS_UV_OPTS);
  return 1;
}

static int f_redact(lua_State *L)
{
  luaL_checktype(L, 1, LUA_TTABLE);
  if (ps_copy_bounded(L, 1, 1000000) != 0)
    return luaL_argerror(L, 1, "a session table with more than a million values");
  lua_pushliteral(L, "[redacted]");
  lua_setfield(L, -2, "skGatewayB64");
  lua_pushliteral(L, "[redacted]");
  lua_setfield(L, -2, "secondaryCode");
  return 1;
}

/* json_encode(value) -> text | nil, why, "invalid": a Lua value written as the store writes
 * new values (JSON.stringify's numbers; strings must be UTF-8). For the CLI's --json. */
static int f_json_encode(lua_State *L)
{
  ps_buf b = { 0 };
  const char *why;
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  why = ps_json_encode(L, 1, NULL, 0, 1, NULL, &b);
  if (why) {
    ps_buf_free(&b);
    lua_pushnil(L);
    lua_pushstring(L, why);
    lua_pushliteral(L, "invalid");
    return 3;
  }
  lua_pushlstring(L, b.p ? b.p : "", b.len);
  ps_buf_free(&b);
  return 1;
}

/* sid_error(fn, v) -> nil, or the message a method named fn raises for the sid v. */
static int f_sid_error(lua_State *L)
{
  const char *fn = luaL_checkstring(L, 1);
  lua_settop(L, 2);
  if (!sid_error(L, 2, fn)) lua_pushnil(L);
  return 1;
}

static int f_is_sid(lua_State *L)
{
  size_t n;
  const char *s = lua_type(L, 1) == LUA_TSTRING ? lua_tolstring(L, 1, &n) : NULL;
  lua_pushboolean(L, s && ps_is_sid(s, n));
  return 1;
}

static int f_is_code(lua_State *L)
{
  size_t n;
  const char *s = lua_type(L, 1) == LUA_TSTRING ? lua_tolstring(L, 1, &n) : NULL;
  lua_pushboolean(L, s && ps_is_code(s, n));
  return 1;
}

static int f_is_known_status(lua_State *L)
{
  lua_pushboolean(L, lua_type(L, 1) == LUA_TSTRING && ps_is_known_status(lua_tostring(L, 1)));
  return 1;
}

static int f_is_known_mode(lua_State *L)
{
  lua_pushboolean(L, lua_type(L, 1) == LUA_TSTRING && ps_is_known_mode(lua_tostring(L, 1)));
  return 1;
}

static void set_list(lua_State *L, const char *name, const char *const *list)
{
  int i;
  lua_newtable(L);
  for (i = 0; list[i]; i++) {
    lua_pushstring(L, list[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, name);
}

static int f_is_terminal(lua_State *L)
{
  lua_pushboolean(L, ps_is_terminal(luaL_checkstring(L, 1)));
  return 1;
}

/* next_prune(session) -> the ms after which pruning changes it (it expires, or goes). */
static int f_next_prune(lua_State *L)
{
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_pushinteger(L, (lua_Integer)ps_next_prune(L, 1));
  return 1;
}

static int f_clamp_ttl(lua_State *L)
{
  lua_Integer ttl = PS_DEFAULT_TTL_MS;
  if (lua_type(L, 1) == LUA_TNUMBER) {
    lua_Number d = lua_tonumber(L, 1);
    if (lua_isinteger(L, 1)) {
      lua_Integer v = lua_tointeger(L, 1);
      if (v > 0) ttl = v;
    } else if (d > 0 && !isnan(d)) {
      ttl = d >= (lua_Number)PS_MAX_TTL_MS ? PS_MAX_TTL_MS : (lua_Integer)d;
    }
  }
  if (ttl < PS_MIN_TTL_MS) ttl = PS_MIN_TTL_MS;
  if (ttl > PS_MAX_TTL_MS) ttl = PS_MAX_TTL_MS;
  lua_pushinteger(L, ttl);
  return 1;
}

static int f_is_pg_target(lua_State *L)
{
  lua_pushboolean(L, ps_pg_is_target(luaL_checkstring(L, 1)));
  return 1;
}

/* target_refused(target) -> why a target is refused (a URI of a scheme pairstore does not
 * support), or nil */
static int f_target_refused(lua_State *L)
{
  char why[512];
  const char *r = ps_target_refused(luaL_checkstring(L, 1), why, sizeof why);
  if (r) lua_pushstring(L, r);
  else lua_pushnil(L);
  return 1;
}

/* pg_display(target [, store]) -> how messages and store.path show the target | nil, why */
static int f_pg_display(lua_State *L)
{
  const char *target = luaL_checkstring(L, 1), *store = luaL_optstring(L, 2, "default");
  luaL_argcheck(L, ps_pg_is_target(target), 1, "not a PostgreSQL target");
  return ps_pg_push_display(L, target, store);
}

static int f_pg_schema_sql(lua_State *L)
{
  lua_pushstring(L, ps_pg_schema_sql);
  return 1;
}

static int f_now_ms(lua_State *L)
{
  lua_pushinteger(L, (lua_Integer)ps_wall_ms());
  return 1;
}

static const luaL_Reg store_methods[] = {
  { "get", m_get }, { "list", m_list }, { "create", m_create }, { "update", m_update },
  { "transition", m_transition }, { "reject", m_reject }, { "register_failed_code", m_failed_code },
  { "verify_code", m_verify }, { "consume", m_consume }, { "respond", m_respond }, { "prune", m_prune },
  { "export", m_export }, { "import", m_import }, { "watch", m_watch }, { "backend", m_backend },
  { "now", m_now }, { "wait_mode", m_wait_mode }, { "deadline", m_deadline },
  { "use_engine", m_use_engine }, { "idle", m_idle }, { "lock_waited", m_lock_waited }, { "server", m_server }, { "pg_handle", m_pg_handle }, { "announce", m_announce },
  { "close", m_close }, { "path", m_path }, { NULL, NULL },
};

static const luaL_Reg module_funcs[] = {
  { "redact", f_redact }, { "json_encode", f_json_encode }, { "now_ms", f_now_ms }, { "is_terminal", f_is_terminal }, { "clamp_ttl", f_clamp_ttl },
  { "next_prune", f_next_prune }, { "is_sid", f_is_sid }, { "sid_error", f_sid_error },
  { "is_code", f_is_code },
  { "is_known_status", f_is_known_status }, { "is_known_mode", f_is_known_mode },
#ifdef PS_TEST
  { "test_hooks", ps_test_hooks },
#endif
  { "is_pg_target", f_is_pg_target },
  { "pg_schema_sql", f_pg_schema_sql }, { "pg_display", f_pg_display },
  { "target_refused", f_target_refused },
  { NULL, NULL },
};

static void set_int(lua_State *L, const char *name, lua_Integer v)
{
  lua_pushinteger(L, v);
  lua_setfield(L, -2, name);
}

static void json_cfg(lua_State *L, const char *name, int is_bool, int value)
{
  lua_getfield(L, -1, name);
  if (is_bool) lua_pushboolean(L, value);
  else lua_pushinteger(L, value);
  lua_call(L, 1, 0);
}

/* A private cjson instance for decoding (what is written is json.c's), strict: no
 * NaN/Infinity/hex numbers, nesting bounded. The host's shared cjson module keeps its own
 * settings. */
static void push_json(lua_State *L)
{
  lua_getglobal(L, "require");
  lua_pushliteral(L, "cjson");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "new");
  lua_call(L, 0, 1);
  lua_remove(L, -2);
  json_cfg(L, "decode_invalid_numbers", 1, 0);
  json_cfg(L, "decode_max_depth", 0, PS_MAX_DEPTH + 4);
}

static void ps_stats_register(lua_State *L); /* (at the end) */
int luaopen_pairstore_core(lua_State *L);

__attribute__((visibility("default"))) int luaopen_pairstore_core(lua_State *L)
{
  if (sodium_init() < 0) return luaL_error(L, "pairstore: libsodium failed to initialise");

  ps_txn_init(L);

  if (luaL_newmetatable(L, PS_STORE_MT)) {
    luaL_newlib(L, store_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, m_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, m_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, m_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);

  luaL_newlib(L, module_funcs);
  push_json(L);
  lua_pushcclosure(L, f_open, 1);
  lua_setfield(L, -2, "open");
  ps_crypto_register(L);
  ps_qr_register(L);
  ps_wait_register(L);
  ps_pg_register(L);
  ps_stats_register(L);
  set_int(L, "FILE_VERSION", PS_FILE_VERSION);
  set_int(L, "DEFAULT_TTL_MS", PS_DEFAULT_TTL_MS);
  set_int(L, "MIN_TTL_MS", PS_MIN_TTL_MS);
  set_int(L, "MAX_TTL_MS", PS_MAX_TTL_MS);
  set_int(L, "TERMINAL_RETENTION_MS", PS_TERMINAL_RETENTION_MS);
  set_int(L, "MAX_CODE_ATTEMPTS", PS_MAX_CODE_ATTEMPTS);
  set_int(L, "LOCK_STALE_MS", PS_LOCK_STALE_MS);
  set_int(L, "LOCK_WAIT_MS", PS_LOCK_WAIT_MS);
  set_int(L, "MAX_SESSIONS", PS_MAX_SESSIONS);
  set_int(L, "MAX_FILE_BYTES", PS_MAX_FILE_BYTES);
  set_int(L, "MAX_SESSION_BYTES", PS_MAX_SESSION_BYTES);
  set_int(L, "MAX_FIELD_BYTES", PS_MAX_FIELD_BYTES);
  set_list(L, "STATUSES", ps_statuses);
  set_list(L, "MODES", ps_modes);
  lua_pushliteral(L, PS_VERSION);
  lua_setfield(L, -2, "_VERSION");
  return 1;
}

/* ---- for pairstore.metrics and pairstore.stats (issue 21) ----------------------------------
 * A clock for durations, and the read of `pairstore stats` that no transaction makes: the
 * files beside a sessions file (engine/file/beside.c; the PostgreSQL server is the store's
 * own c:server()). Neither takes a lock or changes anything. */

/* clock() -> monotonic seconds, a float with ns resolution. */
static int f_clock(lua_State *L)
{
  lua_pushnumber(L, ps_mono_s());
  return 1;
}

/* files_beside(path) -> what lies beside a sessions file (see ps_file_beside) | nil,
 * message, "io". */
static int f_files_beside(lua_State *L)
{
  ps_err e;
  if (ps_file_beside(L, luaL_checkstring(L, 1), &e) != 0) return ps_push_err(L, &e);
  return 1;
}

static const luaL_Reg stats_funcs[] = {
  { "clock", f_clock }, { "files_beside", f_files_beside },
  { NULL, NULL },
};

static void ps_stats_register(lua_State *L)
{
  luaL_setfuncs(L, stats_funcs, 0);
}
