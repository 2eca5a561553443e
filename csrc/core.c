/*
 * core.c — the Lua binding pairstore.core: the store userdata and the transaction that
 * every operation runs (lock -> load -> validate -> prune -> act -> commit -> unlock), with
 * Lua mutators called under the lock. Storage is reached only through a ps_backend.
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

#define PS_STORE_MT "pairstore.store"
#define PS_VERSION  "0.1.0"

/* User values of a store userdata: options; cjson's decode; the sessions as last read or
 * written (valid while the file's bytes are the cached ones); each session's JSON text as
 * the file holds it (a weak-keyed table: session table -> string); the text a session
 * changed since was read from (session table -> string: what it keeps of it when written);
 * sid -> position in the sessions array (of the first session with that sid), while
 * index_valid. */
enum { UV_OPTS = 1, UV_DECODE, UV_SESSIONS, UV_TEXTS, UV_BASES, UV_INDEX, UV_COUNT = UV_INDEX };

static const char held_key = 'h'; /* registry: stores ("<dir dev>:<dir ino>/<name>") locked by this Lua state */

typedef struct ps_store {
  ps_file f;
  const ps_backend *be;
  int max_sessions;
  size_t max_session_bytes; /* bound of one session's JSON text */
  /* The file's bytes (and identity) as last read or written under the lock. When the next
   * read finds the same file, the parsed sessions in UV_SESSIONS are reused instead of
   * parsing again. Three buffers, swapped rather than allocated, wiped when freed. */
  ps_buf cache, rbuf, wbuf;
  ps_ident cache_id;
  int cache_valid;
  ps_jscan scan; /* where each session of the last file read starts and ends */
  /* With the cache: pruning changes nothing while now <= prune_after. */
  int64_t prune_after;
  /* The sid index and the count of live (non-terminal) sessions of the transaction's array:
   * built in one pass for a new array, then kept up to date by every change made to it
   * (create, update, delete, status changes, expiry, removal). index_dups: the array holds a
   * sid twice (a hand-edited file), so a removal may uncover another position: rebuild. */
  int index_valid;
  int index_dups;
  lua_Integer live;
  /* Inside a transaction (the lock held, its callbacks running): close must wait. */
  int busy;
} ps_store;

typedef enum {
  OP_GET, OP_LIST, OP_CREATE, OP_UPDATE, OP_TRANSITION, OP_FAILED_CODE, OP_VERIFY,
  OP_CONSUME, OP_PRUNE,
} ps_op;

typedef struct ps_txn {
  ps_store *s;
  ps_op op;
  int readonly;          /* get/list: write back only when pruning deleted something */
  int64_t now;
  int dirty;             /* in-memory sessions differ from the file */
  int cacheable;         /* the loaded sessions are exactly the file's (nothing dropped) */
  int from_cache;        /* the sessions were reused, not parsed */
  int committed;
  int removed;           /* pruned away */
  const char *outcome;   /* domain outcome: nil, outcome, outcome */
  int failed;            /* system failure in err */
  ps_err err;
} ps_txn;

/* Body stack: 1 = txn, 2 = store, 3.. = the method's arguments after self. */
#define ARG(i) ((i) + 2)

/* ---- helpers ------------------------------------------------------------------------------- */

static ps_store *check_store(lua_State *L, int idx)
{
  ps_store *s = luaL_checkudata(L, idx, PS_STORE_MT);
  if (!s->f.path) luaL_error(L, "pairstore: store is closed");
  return s;
}

/* A sid argument: exactly 32 lowercase hex characters (no NUL, nothing after). */
static const char *check_sid(lua_State *L, int idx)
{
  size_t n;
  const char *sid = luaL_checklstring(L, idx, &n);
  luaL_argcheck(L, n == 32 && strspn(sid, "0123456789abcdef") == 32, idx,
                "sid must be 32 lowercase hex characters");
  return sid;
}

static void fail(ps_txn *t, const char *code, const char *msg)
{
  t->failed = 1;
  ps_err_set(&t->err, code, "%s", msg);
}

static int is_live(lua_State *L, int sess)
{
  size_t len;
  return !ps_is_terminal(ps_get_str(L, sess, "status", &len));
}

/* Builds the sid index and the live count of the array at arr, unless they are valid. */
static void index_ensure(lua_State *L, ps_store *s, int arr)
{
  lua_Integer n, i;
  if (s->index_valid) return;
  arr = lua_absindex(L, arr);
  n = (lua_Integer)lua_rawlen(L, arr);
  s->live = 0;
  s->index_dups = 0;
  lua_createtable(L, 0, (int)n);
  for (i = n; i >= 1; i--) { /* backwards: the first of duplicate sids wins */
    lua_rawgeti(L, arr, i);
    if (is_live(L, -1)) s->live++;
    lua_getfield(L, -1, "sid");
    lua_pushvalue(L, -1);
    if (lua_rawget(L, -4) != LUA_TNIL) s->index_dups = 1;
    lua_pop(L, 1);
    lua_pushinteger(L, i);
    lua_rawset(L, -4);
    lua_pop(L, 1);
  }
  lua_setiuservalue(L, 2, UV_INDEX);
  s->index_valid = 1;
}

/* Position of the session with this sid in the array at arr (the transaction's), or 0. */
static lua_Integer find_sid(lua_State *L, ps_store *s, int arr, const char *sid)
{
  lua_Integer at;
  index_ensure(L, s, arr);
  lua_getiuservalue(L, 2, UV_INDEX);
  lua_getfield(L, -1, sid);
  at = lua_tointeger(L, -1);
  lua_pop(L, 2);
  return at;
}

/* Removes the session at position at (its table at sess) from the array at arr, keeping the
 * index and the live count, or dropping the index when it cannot be kept. */
static void remove_at(lua_State *L, ps_store *s, int arr, lua_Integer at, int sess)
{
  lua_Integer n = (lua_Integer)lua_rawlen(L, arr), i;
  int idx = 0;
  if (s->index_valid && !s->index_dups) {
    lua_getiuservalue(L, 2, UV_INDEX);
    idx = lua_gettop(L);
    ps_index_put(L, idx, sess, 0);
    s->live -= is_live(L, sess);
  } else {
    s->index_valid = 0;
  }
  for (i = at; i < n; i++) {
    lua_rawgeti(L, arr, i + 1);
    if (idx) ps_index_put(L, idx, -1, i);
    lua_rawseti(L, arr, i);
  }
  lua_pushnil(L);
  lua_rawseti(L, arr, n);
  if (idx) lua_pop(L, 1);
}

static int call_user(lua_State *L, int nargs, int nres);

/* ---- load ------------------------------------------------------------------------------------ */

static int shape_ok(lua_State *L, int doc, const char **why)
{
  lua_Integer n, count = 0;
  doc = lua_absindex(L, doc);
  *why = "top level must be an object";
  if (lua_type(L, doc) != LUA_TTABLE) return 0;
  lua_getfield(L, doc, "version");
  n = lua_isinteger(L, -1) ? lua_tointeger(L, -1)
      : (lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) == 1.0) ? 1 : -1;
  lua_pop(L, 1);
  *why = "version must be 1";
  if (n != PS_FILE_VERSION) return 0;
  *why = "sessions must be an array";
  lua_getfield(L, doc, "sessions");
  if (lua_type(L, -1) != LUA_TTABLE) { lua_pop(L, 1); return 0; }
  n = (lua_Integer)lua_rawlen(L, -1);
  lua_pushnil(L);
  while (lua_next(L, -2) != 0) {
    lua_pop(L, 1);
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 || lua_tointeger(L, -1) > n) {
      lua_pop(L, 2);
      return 0;
    }
    count++;
  }
  lua_pop(L, 1);
  if (count != n) return 0;
  *why = "numbers must be finite";
  if (!ps_check_value(L, doc, -2)) return 0; /* doc -2, sessions -1, each session 0 */
  return 1;
}

static void cache_drop(ps_store *s)
{
  s->cache_valid = 0;
  s->cache_id.valid = 0;
}

static void buffers_free(ps_store *s)
{
  cache_drop(s);
  ps_buf_free(&s->cache);
  ps_buf_free(&s->rbuf);
  ps_buf_free(&s->wbuf);
  ps_json_scan_free(&s->scan);
}

/* The session at sess is about to change in place: the text the file holds for it becomes
 * the base it is written from (what it keeps of it), no longer its text. */
static void stale_text(lua_State *L, int sess, void *ud)
{
  (void)ud;
  sess = lua_absindex(L, sess);
  lua_getiuservalue(L, 2, UV_TEXTS);
  lua_pushvalue(L, sess);
  if (lua_rawget(L, -2) == LUA_TSTRING) {
    lua_getiuservalue(L, 2, UV_BASES);
    lua_pushvalue(L, sess);
    lua_pushvalue(L, -3);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    lua_pushvalue(L, sess);
    lua_pushnil(L);
    lua_rawset(L, -4);
  }
  lua_pop(L, 2);
}

/* The session at sess changed (or is new), after the change: the file must be written, and
 * it may need pruning earlier than the others. */
static void changed(lua_State *L, ps_txn *t, int sess)
{
  int64_t next = ps_next_prune(L, sess);
  stale_text(L, sess, NULL);
  t->dirty = 1;
  if (next < t->s->prune_after) t->s->prune_after = next;
}

/* The file cannot be parsed as sessions (why). A read fails and leaves it exactly as it is;
 * a write moves it aside (if the backend finds it plausibly ours) and starts empty. */
/* Whether text begins like a sessions file (a JSON object), or holds nothing but blanks (a
 * file emptied by a crash of a writer that does not fsync): only such a file is moved aside.
 * A private key or a script given as the path by mistake is not. */
static int begins_like_ours(const ps_buf *b)
{
  size_t i = 0;
  while (i < b->len && strchr(" \t\r\n", b->p[i]) && b->p[i]) i++;
  return i == b->len || b->p[i] == '{';
}

static void quarantine(ps_txn *t, const char *why)
{
  char moved[4096 + 64], detail[300];
  ps_store *s = t->s;
  if (t->readonly) {
    ps_err_set(&t->err, "corrupt", "%s is not a valid sessions file (%s); left as it is (only "
               "a writing operation moves it aside)", s->f.path, why);
    t->failed = 1;
    return;
  }
  if (s->be->quarantine(&s->f, ps_wall_ms(), why, begins_like_ours(&s->cache), moved, sizeof moved,
                       &t->err) != 0) {
    t->failed = 1;
    return;
  }
  snprintf(detail, sizeof detail, "corrupt sessions file moved aside: %s", why);
  ps_file_event(&s->f, "corrupt", detail, moved, 0, 0, 0);
  t->dirty = 0;
}

/* A well-formed file of another format version (a newer program's) is not corrupt: fail
 * with code unsupported_version and leave it, reads and writes alike. Returns 1 then. */
static int other_version(lua_State *L, ps_txn *t, int doc)
{
  lua_Number v;
  if (lua_type(L, doc) != LUA_TTABLE) return 0;
  lua_getfield(L, doc, "version");
  v = lua_type(L, -1) == LUA_TNUMBER ? lua_tonumber(L, -1) : (lua_Number)PS_FILE_VERSION;
  lua_pop(L, 1);
  if (v == (lua_Number)PS_FILE_VERSION) return 0;
  /* The number is said only when it is a plausible version (0..999): nothing read from the
   * file that could be a code or a key goes into a message. */
  if (v >= 0 && v <= 999 && v == (lua_Number)(int)v)
    ps_err_set(&t->err, "unsupported_version", "%s has format version %d; this pairstore "
               "reads and writes version %d only; left as it is", t->s->f.path, (int)v,
               PS_FILE_VERSION);
  else
    ps_err_set(&t->err, "unsupported_version", "%s has a format version other than %d, which "
               "this pairstore cannot read or write; left as it is", t->s->f.path,
               PS_FILE_VERSION);
  t->failed = 1;
  return 1;
}

/* Whether an error message is cjson's decoding verdict ("Expected value but found invalid
 * token at character 2", "Found too many nested data structures (21) at character 9", ...). */
static int is_json_verdict(const char *msg)
{
  return strstr(msg, " at character ") != NULL || strstr(msg, "UTF-16 or UTF-32") != NULL;
}

/* The file cannot be used: a corrupt one is moved aside (and the store starts empty). */
static void corrupt(lua_State *L, ps_txn *t, const char *why)
{
  quarantine(t, why);
  lua_newtable(L);
}

/* Pushes the array of valid sessions (possibly empty), or sets t->failed. Each session's
 * text is kept exactly as the file holds it (found by ps_json_scan); cjson decodes. */
static void load(lua_State *L, ps_txn *t)
{
  ps_store *s = t->s;
  int toobig = 0, rc, doc, arr, texts;
  ps_ident id;
  const char *why = NULL, *text;
  lua_Integer n, i, kept = 0;
  char reason[256];
  ps_jscan *sc = &s->scan; /* kept and reused: nothing to free on any way out */

  rc = s->be->load(&s->f, &s->rbuf, s->cache_valid ? &s->cache_id : NULL, &toobig, &id, &t->err);
  if (rc == PS_LOAD_ERROR) { t->failed = 1; return; }
  if (rc == PS_LOAD_ABSENT) {
    cache_drop(s);
    lua_newtable(L);
    return;
  }
  if (rc == PS_LOAD_SAME ||
      (!toobig && s->cache_valid && s->rbuf.len == s->cache.len &&
       memcmp(s->rbuf.p, s->cache.p, s->cache.len) == 0)) {
    s->cache_id = id; /* same bytes: from now on known by this identity */
    lua_getiuservalue(L, 2, UV_SESSIONS);
    t->cacheable = 1;
    t->from_cache = 1;
    return;
  }
  cache_drop(s);
  if (toobig) {
    /* Not read, so not known to be corrupt (another store may allow more): left as it is. */
    ps_err_set(&t->err, "limit", "%s is larger than max_file_bytes (%zu): not read, left as it is",
               s->f.path, s->f.max_bytes);
    t->failed = 1;
    return;
  }
  ps_buf_swap(&s->cache, &s->rbuf); /* these bytes are the file's now */
  s->cache_id = id;
  why = ps_json_scan(s->cache.p, s->cache.len, sc);
  if (why) {
    snprintf(reason, sizeof reason, "invalid JSON (%s)", why);
    corrupt(L, t, reason);
    return;
  }
  text = s->cache.p;
  if (sc->lone) {
    /* cjson refuses lone surrogate escapes (JSON.parse takes them): it decodes a copy that
     * reads them as U+FFFD; the file's text, kept, still has them */
    s->rbuf.len = 0;
    ps_buf_add(&s->rbuf, s->cache.p, s->cache.len);
    if (s->rbuf.oom) luaL_error(L, "pairstore: out of memory");
    ps_json_sanitize(s->rbuf.p, s->rbuf.len);
    text = s->rbuf.p;
  }
  lua_getiuservalue(L, 2, UV_DECODE);
  lua_pushlstring(L, text, s->cache.len);
  if (text != s->cache.p) s->rbuf.len = 0;
  rc = lua_pcall(L, 1, 1, 0);
  if (rc != LUA_OK) {
    const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    /* Only cjson's own verdict on the bytes makes the file corrupt. Anything else raised
     * meanwhile (out of memory, an "interrupted!" from a SIGINT hook) is not about the
     * file: let it propagate (the lock is released on the way out). */
    if (rc != LUA_ERRRUN || !msg || !is_json_verdict(msg)) lua_error(L);
    snprintf(reason, sizeof reason, "invalid JSON (%s)", msg);
    lua_pop(L, 1);
    corrupt(L, t, reason);
    return;
  }
  doc = lua_gettop(L);
  if (other_version(L, t, doc)) return;
  if (!shape_ok(L, doc, &why)) {
    lua_pop(L, 1);
    corrupt(L, t, why);
    return;
  }
  lua_getfield(L, doc, "sessions");
  arr = lua_gettop(L);
  n = (lua_Integer)lua_rawlen(L, arr);
  if ((size_t)n != sc->nspans) { /* cannot be: both read the same array */
    lua_pop(L, 2);
    corrupt(L, t, "the sessions array could not be delimited");
    return;
  }
  lua_getiuservalue(L, 2, UV_TEXTS);
  texts = lua_gettop(L);
  lua_getiuservalue(L, 2, UV_DECODE);
  for (i = 1; i <= n; i++) {
    const ps_jspan *sp = &sc->spans[i - 1];
    lua_rawgeti(L, arr, i);
    if (sp->bigint && ps_json_fixup(L, texts + 1, s->cache.p + sp->off, sp->len, -1, 0) != 0)
      luaL_error(L, "pairstore: out of memory");
    if (ps_validate_session(L, -1, 1) == NULL) { /* shape_ok checked its values */
      lua_pushvalue(L, -1);
      lua_pushlstring(L, s->cache.p + sp->off, sp->len);
      lua_rawset(L, texts); /* texts[session] = its text in the file */
      lua_rawseti(L, arr, ++kept);
    } else {
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 2);
  for (i = kept + 1; i <= n; i++) {
    lua_pushnil(L);
    lua_rawseti(L, arr, i);
  }
  if (kept < n) {
    ps_file_event(&s->f, "invalid_dropped", "invalid session entries were dropped", s->f.path,
                  (long)(n - kept), 0, 0);
    t->dirty = 1;
  } else {
    t->cacheable = 1;
  }
  lua_remove(L, doc);
}

/* ---- commit --------------------------------------------------------------------------------- */

/* The text of the session at sess as it goes into the file: the one the file holds, or,
 * for a session changed or new, a fresh one that keeps what it can of its base. Pushes it,
 * or returns -1 with t failed. */
static int session_text(lua_State *L, ps_txn *t, int sess, int dec, const char *base,
                        size_t baselen, ps_buf *b)
{
  const char *why;
  b->len = 0;
  b->oom = 0;
  why = ps_json_encode(L, dec, base, baselen, sess, &ps_session_order, b);
  if (why) {
    ps_err_set(&t->err, "invalid", "a session cannot be written as JSON: %s", why);
    t->failed = 1;
    return -1;
  }
  lua_pushlstring(L, b->p, b->len);
  return 0;
}

static void commit(lua_State *L, ps_txn *t, int arr)
{
  ps_store *s = t->s;
  ps_buf *wb = &s->wbuf;
  ps_ident id;
  lua_Integer n = (lua_Integer)lua_rawlen(L, arr), i;
  int texts, bases, dec, top = lua_gettop(L);
  ps_buf one = { 0 };

  lua_getiuservalue(L, 2, UV_TEXTS);
  texts = lua_gettop(L);
  lua_getiuservalue(L, 2, UV_BASES);
  bases = lua_gettop(L);
  lua_getiuservalue(L, 2, UV_DECODE);
  dec = lua_gettop(L);
  wb->len = 0;
  wb->oom = 0;
  ps_buf_reserve(wb, s->cache.len + 1024); /* about the size of the last file */
  ps_buf_lit(wb, "{\"version\":1,\"sessions\":[");
  for (i = 1; i <= n; i++) {
    size_t tlen;
    const char *text;
    if (i > 1) ps_buf_lit(wb, ",");
    lua_rawgeti(L, arr, i);
    lua_pushvalue(L, -1);
    if (lua_rawget(L, texts) != LUA_TSTRING) { /* changed or new since it was last written */
      size_t blen = 0;
      const char *base;
      lua_pop(L, 1);
      lua_pushvalue(L, -1);
      lua_rawget(L, bases);
      base = lua_tolstring(L, -1, &blen);
      if (session_text(L, t, top + 4, dec, base, blen, &one) != 0) {
        ps_buf_free(&one);
        lua_settop(L, top);
        return;
      }
      lua_remove(L, -2);
      lua_pushvalue(L, -2);
      lua_pushvalue(L, -2);
      lua_rawset(L, texts); /* texts[session] = its JSON, as written */
      lua_pushvalue(L, -2);
      lua_pushnil(L);
      lua_rawset(L, bases);
    }
    text = lua_tolstring(L, -1, &tlen);
    ps_buf_add(wb, text, tlen);
    lua_settop(L, dec);
  }
  ps_buf_free(&one);
  ps_buf_lit(wb, "]}");
  lua_settop(L, top);
  if (wb->oom) {
    fail(t, "io", "encode: out of memory (ENOMEM)");
    return;
  }
  if (wb->len > s->f.max_bytes) {
    ps_err_set(&t->err, "limit",
               "the sessions file would be %zu bytes, above max_file_bytes (%zu): nothing was written",
               wb->len, s->f.max_bytes);
    t->failed = 1;
    return;
  }
  if (s->be->commit(&s->f, wb->p, wb->len, &id, &t->err) != 0) {
    t->failed = 1;
    return;
  }
  /* What we wrote is what the file now holds. */
  ps_buf_swap(&s->cache, wb);
  s->cache_id = id;
  t->committed = 1;
}

/* ---- the operations, run under the lock ----------------------------------------------------- */

/* Pushes a copy of the session at idx and returns 1. */
static int push_copy(lua_State *L, int idx)
{
  ps_copy_value(L, idx, 0);
  return 1;
}

static void touch_status(lua_State *L, ps_txn *t, int sess, const char *status)
{
  if (t->s->index_valid) t->s->live += !ps_is_terminal(status) - is_live(L, sess);
  ps_set_str(L, sess, "status", status);
  ps_set_int(L, sess, "lastStatusChangeAtMs", t->now);
}

static int act_list(lua_State *L, int arr);
static int act_create(lua_State *L, ps_txn *t, int arr);
static int act_update(lua_State *L, ps_txn *t, int arr, lua_Integer at, int sess);

/* The per-sid operations: find the session, then act on it. */
static int act_on_sid(lua_State *L, ps_txn *t, int arr)
{
  const char *sid = lua_tostring(L, ARG(1));
  lua_Integer at = find_sid(L, t->s, arr, sid);
  const char *status, *to;
  int sess;
  size_t len;

  if (at == 0) {
    t->outcome = "not_found";
    return 0;
  }
  lua_rawgeti(L, arr, at);
  sess = lua_gettop(L);
  status = ps_get_str(L, sess, "status", &len);

  switch (t->op) {
  case OP_GET:
    return push_copy(L, sess);

  case OP_UPDATE:
    return act_update(L, t, arr, at, sess);

  case OP_TRANSITION:
    to = lua_tostring(L, ARG(2));
    if (strcmp(status, to) == 0) return push_copy(L, sess);
    if (!ps_transition_allowed(status, to)) {
      t->outcome = "illegal_transition";
      return 0;
    }
    touch_status(L, t, sess, to);
    changed(L, t, sess);
    return push_copy(L, sess);

  case OP_FAILED_CODE:
    if (ps_is_terminal(status)) return push_copy(L, sess); /* no counting after the end */
    if (ps_count_attempt(L, sess)) touch_status(L, t, sess, "rejected");
    changed(L, t, sess);
    return push_copy(L, sess);

  case OP_VERIFY: {
    const char *given = lua_tostring(L, ARG(2)), *code;
    if (strcmp(status, "expired") == 0 || strcmp(status, "rejected") == 0) {
      t->outcome = strcmp(status, "expired") == 0 ? "expired" : "rejected";
      return 0;
    }
    if (strcmp(status, "consumed") == 0 || strcmp(status, "completed") == 0) {
      t->outcome = "already_consumed";
      return 0;
    }
    if (strcmp(status, "awaiting_scan") != 0 && strcmp(status, "device_connected") != 0) {
      t->outcome = "illegal_transition";
      return 0;
    }
    code = ps_get_str(L, sess, "secondaryCode", &len);
    if (sodium_memcmp(code, given, 6) != 0) {
      t->outcome = "wrong_code";
      if (ps_count_attempt(L, sess)) {
        touch_status(L, t, sess, "rejected");
        t->outcome = "attempts_exhausted";
      }
      changed(L, t, sess);
      return 0;
    }
    if (strcmp(status, "awaiting_scan") == 0) {
      touch_status(L, t, sess, "device_connected");
      changed(L, t, sess);
    }
    return push_copy(L, sess);
  }

  case OP_CONSUME:
    if (ps_after(L, sess, "expiresAtMs", t->now)) t->outcome = "expired";
    else if (!strcmp(status, "completed") || !strcmp(status, "consumed")) t->outcome = "already_consumed";
    else if (!strcmp(status, "rejected")) t->outcome = "rejected";
    else if (!strcmp(status, "expired")) t->outcome = "expired";
    else if (!ps_transition_allowed(status, "consumed")) t->outcome = "illegal_transition";
    if (t->outcome) return 0;
    push_copy(L, sess); /* the record as it was before */
    touch_status(L, t, sess, "consumed");
    changed(L, t, sess);
    return 1;

  default:
    return luaL_error(L, "pairstore: internal error: op %d", (int)t->op);
  }
}

static int act_update(lua_State *L, ps_txn *t, int arr, lua_Integer at, int sess)
{
  const char *sid = lua_tostring(L, ARG(1)), *why, *newsid;
  size_t len;
  int res, copy;

  push_copy(L, sess); /* the mutator's private copy; kept here to read back in-place edits */
  copy = lua_gettop(L);
  lua_pushvalue(L, ARG(2));
  lua_pushvalue(L, copy);
  if (call_user(L, 1, 1) != LUA_OK) {
    ps_err_set(&t->err, "callback", "mutator failed: %s",
               lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "(error object is not a string)");
    t->failed = 1;
    return 0;
  }
  res = lua_gettop(L);
  if (lua_type(L, res) == LUA_TBOOLEAN && !lua_toboolean(L, res)) {
    remove_at(L, t->s, arr, at, sess);
    t->dirty = 1;
    lua_pushboolean(L, 0);
    return 1;
  }
  if (lua_isnil(L, res)) res = copy; /* edited in place */
  if (lua_type(L, res) != LUA_TTABLE) {
    fail(t, "invalid", "mutator must return a table, false or nothing");
    return 0;
  }
  /* What the caller keeps cannot change what we store. Every value takes at least a byte of
   * JSON: more values than max_session_bytes cannot fit, and are not copied. */
  if (ps_copy_bounded(L, res, (long)t->s->max_session_bytes) != 0) {
    ps_err_set(&t->err, "limit", "mutator result has more values than max_session_bytes (%zu) allows",
               t->s->max_session_bytes);
    t->failed = 1;
    return 0;
  }
  res = lua_gettop(L);
  why = ps_validate_session(L, res, 0);
  if (why) {
    ps_err_set(&t->err, "invalid", "mutator result is not a valid session: %s", why);
    t->failed = 1;
    return 0;
  }
  newsid = ps_get_str(L, res, "sid", &len);
  if (strcmp(newsid, sid) != 0) {
    fail(t, "invalid", "mutator result is not a valid session: sid may not change");
    return 0;
  }
  {
    /* Its text as it would be written (keeping what it can of the old one). Encodable?
     * Within the bounds? And changed at all? A mutator that changed nothing costs no
     * write. */
    ps_buf b = { 0 };
    const char *old;
    size_t oldlen = 0;
    int texts, bases, dec, rc, same;
    lua_getiuservalue(L, 2, UV_TEXTS);
    texts = lua_gettop(L);
    lua_getiuservalue(L, 2, UV_BASES);
    bases = lua_gettop(L);
    lua_getiuservalue(L, 2, UV_DECODE);
    dec = lua_gettop(L);
    lua_pushvalue(L, sess);
    if (lua_rawget(L, texts) != LUA_TSTRING) {
      lua_pop(L, 1);
      lua_pushvalue(L, sess);
      lua_rawget(L, bases);
    }
    old = lua_tolstring(L, -1, &oldlen); /* NULL: a session never written (cannot be) */
    rc = session_text(L, t, res, dec, old, oldlen, &b);
    /* A mutator's result is bounded (what the file held already is not: the reference bounds
     * nothing, and its sessions must stay writable). */
    if (rc == 0 && b.len > t->s->max_session_bytes && b.len > oldlen) {
      ps_err_set(&t->err, "limit", "the mutator's result would take %zu bytes of JSON, above "
                 "max_session_bytes (%zu)", b.len, t->s->max_session_bytes);
      t->failed = 1;
      rc = -1;
    }
    same = rc == 0 && old && b.len == oldlen && memcmp(b.p, old, oldlen) == 0;
    ps_buf_free(&b);
    if (rc != 0) return 0;
    if (same) {
      lua_settop(L, res);
      return push_copy(L, sess);
    }
    /* The new session goes into the file as this text (the commit need not encode it). */
    lua_pushvalue(L, res);
    lua_insert(L, -2);
    lua_rawset(L, texts);
    lua_settop(L, res);
    changed(L, t, res);
  }
  if (t->s->index_valid) t->s->live += is_live(L, res) - is_live(L, sess);
  lua_pushvalue(L, res);
  lua_rawseti(L, arr, at);
  return push_copy(L, res);
}


typedef struct { lua_Number created; const char *sid; lua_Integer idx; } sort_entry;

static int cmp_entry(const void *a, const void *b)
{
  const sort_entry *x = a, *y = b;
  if (x->created != y->created) return x->created < y->created ? -1 : 1;
  return strcmp(x->sid, y->sid);
}

static int act_list(lua_State *L, int arr)
{
  lua_Integer n = (lua_Integer)lua_rawlen(L, arr), i, k = 0;
  int active_only = lua_toboolean(L, ARG(1));
  sort_entry *e = malloc((size_t)(n ? n : 1) * sizeof *e);
  if (!e) return luaL_error(L, "pairstore: out of memory");
  for (i = 1; i <= n; i++) {
    size_t len;
    const char *status;
    lua_rawgeti(L, arr, i);
    status = ps_get_str(L, -1, "status", &len);
    if (!active_only || !strcmp(status, "awaiting_scan") || !strcmp(status, "device_connected")) {
      lua_getfield(L, -1, "createdAtMs");
      e[k].created = lua_tonumber(L, -1);
      lua_pop(L, 1);
      e[k].sid = ps_get_str(L, -1, "sid", &len);
      e[k].idx = i;
      k++;
    }
    lua_pop(L, 1);
  }
  for (i = 1; i < k && cmp_entry(&e[i - 1], &e[i]) <= 0; i++) {}
  if (i < k) qsort(e, (size_t)k, sizeof *e, cmp_entry); /* creates append: usually sorted */
  lua_createtable(L, (int)k, 0);
  for (i = 0; i < k; i++) {
    lua_rawgeti(L, arr, e[i].idx);
    ps_copy_value(L, -1, 0);
    lua_rawseti(L, -3, i + 1);
    lua_pop(L, 1);
  }
  free(e);
  return 1;
}

/* create: ARG 1..7 = mode, operator, ttl, sid_hex|nil, sk_b64u, code, pk_b64u */
static int act_create(lua_State *L, ps_txn *t, int arr)
{
  lua_Integer n = (lua_Integer)lua_rawlen(L, arr);
  char sid[33];
  int64_t ttl = (int64_t)lua_tointeger(L, ARG(3));
  int tries;

  index_ensure(L, t->s, arr);
  if (t->s->live >= t->s->max_sessions) {
    ps_err_set(&t->err, "limit", "too many live sessions (max_sessions = %d)", t->s->max_sessions);
    t->failed = 1;
    return 0;
  }
  if (lua_isstring(L, ARG(4))) {
    snprintf(sid, sizeof sid, "%s", lua_tostring(L, ARG(4)));
    if (find_sid(L, t->s, arr, sid)) {
      fail(t, "invalid", "the sid hook returned a sid that is already in use");
      return 0;
    }
  } else {
    for (tries = 0;; tries++) {
      ps_random_hex(sid, 16);
      if (!find_sid(L, t->s, arr, sid)) break;
      if (tries > 8) { fail(t, "invalid", "could not draw an unused sid"); return 0; }
    }
  }
  lua_createtable(L, 0, 12);
  ps_set_str(L, -1, "sid", sid);
  lua_pushvalue(L, ARG(5));
  lua_setfield(L, -2, "skGatewayB64");
  lua_pushvalue(L, ARG(7));
  lua_setfield(L, -2, "pkGatewayB64");
  ps_set_int(L, -1, "createdAtMs", t->now);
  ps_set_int(L, -1, "expiresAtMs", t->now + ttl);
  lua_pushvalue(L, ARG(6));
  lua_setfield(L, -2, "secondaryCode");
  ps_set_int(L, -1, "secondaryCodeAttempts", 0);
  ps_copy_value(L, ARG(2), 0);
  lua_setfield(L, -2, "operatorContext");
  lua_pushvalue(L, ARG(1));
  lua_setfield(L, -2, "mode");
  ps_set_str(L, -1, "status", "awaiting_scan");
  ps_set_int(L, -1, "lastStatusChangeAtMs", t->now);
  lua_pushvalue(L, -1);
  lua_rawseti(L, arr, n + 1);
  lua_getiuservalue(L, 2, UV_INDEX); /* valid: ensured above, and nothing since dropped it */
  lua_pushinteger(L, n + 1);
  lua_setfield(L, -2, sid);
  lua_pop(L, 1);
  t->s->live++;
  changed(L, t, -1);
  return push_copy(L, lua_gettop(L));
}

/* ---- the transaction -------------------------------------------------------------------------- */

static int read_clock(lua_State *L, ps_txn *t)
{
  int isnum = 0;
  lua_Integer v;
  lua_getiuservalue(L, 2, UV_OPTS);
  lua_getfield(L, -1, "now");
  lua_remove(L, -2);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    t->now = ps_wall_ms();
    return 0;
  }
  if (call_user(L, 0, 1) != LUA_OK) {
    ps_err_set(&t->err, "callback", "clock failed: %s",
               lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?");
    t->failed = 1;
    lua_pop(L, 1);
    return -1;
  }
  isnum = lua_isinteger(L, -1); /* not a string, not a float: a clock's own bug shows */
  v = isnum ? lua_tointeger(L, -1) : 0;
  if (!isnum || v < 0 || v > PS_CLOCK_MAX) {
    ps_err_set(&t->err, "invalid",
               "the clock returned %s; it must return an integer number of ms in [0, %lld]",
               isnum ? "an integer out of range" : luaL_typename(L, -1), (long long)PS_CLOCK_MAX);
    lua_pop(L, 1);
    t->failed = 1;
    return -1;
  }
  lua_pop(L, 1);
  t->now = (int64_t)v;
  return 0;
}

static int txn_body(lua_State *L)
{
  ps_txn *t = lua_touserdata(L, 1);
  int arr, nres = 0, expired = 0;

  if (read_clock(L, t) != 0) return 0;
  load(L, t);
  if (t->failed) return 0;
  arr = lua_gettop(L);
  if (!t->from_cache) t->s->index_valid = 0; /* a new array */
  if (!t->from_cache || t->now > t->s->prune_after) {
    ps_store *s = t->s;
    int keep = s->index_valid && !s->index_dups, top = lua_gettop(L);
    if (keep) lua_getiuservalue(L, 2, UV_INDEX);
    t->removed = ps_prune(L, arr, stale_text, NULL, keep ? top + 1 : 0, t->now, &expired,
                          &s->prune_after);
    lua_settop(L, top);
    if (t->removed || expired) t->dirty = 1;
    if (t->removed && !keep) s->index_valid = 0;
    else s->live -= expired; /* expired: live -> terminal; removed: terminal already */
  }

  switch (t->op) {
  case OP_LIST:   nres = act_list(L, arr); break;
  case OP_CREATE: nres = act_create(L, t, arr); break;
  case OP_PRUNE:
    lua_pushinteger(L, t->removed);
    nres = 1;
    break;
  default:        nres = act_on_sid(L, t, arr); break;
  }
  if (t->failed) return 0;
  if (t->readonly ? t->removed > 0 : t->dirty) {
    commit(L, t, arr);
    if (t->failed) return 0;
  }
  /* The sessions in memory are the file's exactly: reuse them while its bytes stay. */
  if (t->committed || (t->cacheable && !t->dirty)) {
    lua_pushvalue(L, arr);
    lua_setiuservalue(L, 2, UV_SESSIONS);
    t->s->cache_valid = 1;
  }
  return nres;
}

static void deliver_events(lua_State *L, ps_store *s, int self)
{
  int i;
  if (s->f.nevents == 0) return;
  lua_getiuservalue(L, self, UV_OPTS);
  lua_getfield(L, -1, "on_event");
  lua_remove(L, -2);
  for (i = 0; i < s->f.nevents && lua_isfunction(L, -1); i++) {
    ps_event *ev = &s->f.events[i];
    lua_pushvalue(L, -1);
    lua_pushstring(L, ev->name);
    lua_createtable(L, 0, 5);
    lua_pushstring(L, ev->detail);
    lua_setfield(L, -2, "message");
    if (ev->path[0]) { lua_pushstring(L, ev->path); lua_setfield(L, -2, "path"); }
    if (ev->count) { lua_pushinteger(L, ev->count); lua_setfield(L, -2, "count"); }
    if (!strcmp(ev->name, "lock_broken")) {
      lua_pushinteger(L, ev->age_ms); lua_setfield(L, -2, "age_ms");
      lua_pushinteger(L, ev->pid); lua_setfield(L, -2, "pid");
    }
    if (call_user(L, 2, 0) != LUA_OK) lua_pop(L, 1); /* a failing listener changes nothing */
  }
  lua_pop(L, 1);
  s->f.nevents = 0;
}

/* The store's identity as the kernel sees it (resolved by be->resolve): its directory's
 * device and inode plus the file name, whatever spelling of the path opened it. */
static void push_held_key(lua_State *L, ps_store *s)
{
  lua_pushfstring(L, "%s/%s", s->f.key, s->f.base);
}

static int held_get(lua_State *L, ps_store *s)
{
  int held;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &held_key);
  push_held_key(L, s);
  held = lua_rawget(L, -2) != LUA_TNIL;
  lua_pop(L, 2);
  return held;
}

static void held_set(lua_State *L, ps_store *s, int on)
{
  lua_rawgetp(L, LUA_REGISTRYINDEX, &held_key);
  push_held_key(L, s);
  if (on) lua_pushboolean(L, 1);
  else lua_pushnil(L);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

/* Runs op as one transaction; the method's arguments are 1..top (1 = self). */
static int run(lua_State *L, ps_op op, int readonly)
{
  ps_store *s = check_store(L, 1);
  int nargs = lua_gettop(L), i, status, base;
  ps_txn t;

  memset(&t, 0, sizeof t);
  t.s = s;
  t.op = op;
  t.readonly = readonly;
  s->f.nevents = 0;
  if (s->be->resolve(&s->f, &t.err) != 0) return ps_push_err(L, &t.err);
  if (held_get(L, s)) {
    ps_err_set(&t.err, "reentrant",
               "store call made while this process holds the lock on %s (from inside a mutator?)",
               s->f.path);
    return ps_push_err(L, &t.err);
  }
  if (s->be->lock(&s->f, &t.err) != 0) {
    deliver_events(L, s, 1);
    return ps_push_err(L, &t.err);
  }
  held_set(L, s, 1);
  s->busy = 1;

  base = lua_gettop(L);
  lua_pushcfunction(L, txn_body);
  lua_pushlightuserdata(L, &t);
  for (i = 1; i <= nargs; i++) lua_pushvalue(L, i);
  status = lua_pcall(L, nargs + 1, LUA_MULTRET, 0);

  s->be->unlock(&s->f);
  held_set(L, s, 0);
  s->busy = 0;
  if (status != LUA_OK || t.failed || !s->cache_valid) {
    /* Memory may now differ from the file: never trust it again. */
    s->cache_valid = 0;
    s->index_valid = 0;
    lua_pushnil(L);
    lua_setiuservalue(L, 1, UV_SESSIONS);
  }
  if (status != LUA_OK) return lua_error(L); /* out of memory or a bug: lock already released */
  deliver_events(L, s, 1);
  if (t.failed) return ps_push_err(L, &t.err);
  if (t.outcome) {
    lua_settop(L, base);
    lua_pushnil(L);
    lua_pushstring(L, t.outcome);
    lua_pushstring(L, t.outcome);
    return 3;
  }
  return lua_gettop(L) - base;
}

/* ---- calling Lua from C ------------------------------------------------------------------------- */

static int traceback(lua_State *L)
{
  const char *msg = lua_tostring(L, 1);
  if (!msg) msg = luaL_typename(L, 1);
  luaL_traceback(L, L, msg, 1);
  return 1;
}

/* lua_pcall of the function below its nargs arguments, with a traceback handler. On error
 * the message (with traceback) is left on the stack. */
static int call_user(lua_State *L, int nargs, int nres)
{
  int base = lua_gettop(L) - nargs, status;
  lua_pushcfunction(L, traceback);
  lua_insert(L, base);
  status = lua_pcall(L, nargs, nres, base);
  lua_remove(L, base);
  return status;
}

/* ---- methods ------------------------------------------------------------------------------- */

static int m_get(lua_State *L)
{
  check_sid(L, 2);
  lua_settop(L, 2);
  return run(L, OP_GET, 1);
}

static int m_list(lua_State *L)
{
  lua_settop(L, 2);
  return run(L, OP_LIST, 1);
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
  if (!lua_isnil(L, 5)) {
    v = luaL_checklstring(L, 5, &len);
    luaL_argcheck(L, len == 32 && strspn(v, "0123456789abcdef") == 32, 5, "sid must be 32 lowercase hex");
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
    luaL_argcheck(L, len == 6 && strspn(v, "0123456789") == 6, 7, "code must be 6 digits");
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
  return run(L, OP_CREATE, 0);
}

static int m_update(lua_State *L)
{
  check_sid(L, 2);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  lua_settop(L, 3);
  return run(L, OP_UPDATE, 0);
}

static int m_transition(lua_State *L)
{
  check_sid(L, 2);
  if (!ps_is_known_status(luaL_checkstring(L, 3))) return luaL_argerror(L, 3, "unknown status");
  lua_settop(L, 3);
  return run(L, OP_TRANSITION, 0);
}

static int m_reject(lua_State *L)
{
  check_sid(L, 2);
  lua_settop(L, 2);
  lua_pushliteral(L, "rejected");
  return run(L, OP_TRANSITION, 0);
}

static int m_failed_code(lua_State *L)
{
  check_sid(L, 2);
  lua_settop(L, 2);
  return run(L, OP_FAILED_CODE, 0);
}

static int m_verify(lua_State *L)
{
  size_t n;
  const char *code;
  check_sid(L, 2);
  code = luaL_checklstring(L, 3, &n);
  if (n != 6 || strspn(code, "0123456789") != 6) {
    lua_pushnil(L);
    lua_pushstring(L, "bad_code");
    lua_pushstring(L, "bad_code");
    return 3;
  }
  lua_settop(L, 3);
  return run(L, OP_VERIFY, 0);
}

static int m_consume(lua_State *L)
{
  check_sid(L, 2);
  lua_settop(L, 2);
  return run(L, OP_CONSUME, 0);
}

static int m_prune(lua_State *L)
{
  lua_settop(L, 1);
  return run(L, OP_PRUNE, 0);
}

/* For tests: whether the sid index and the live count agree with the cached sessions.
 * Returns true, "indexed" | "not indexed", or false, what disagrees. Reads memory only. */
static int m_selfcheck(lua_State *L)
{
  ps_store *s = check_store(L, 1);
  lua_Integer n, i, live = 0, keys = 0, distinct = 0;
  int arr, idx, seen;
  lua_settop(L, 1);
  if (!s->cache_valid || !s->index_valid) {
    lua_pushboolean(L, 1);
    lua_pushliteral(L, "not indexed");
    return 2;
  }
  lua_getiuservalue(L, 1, UV_SESSIONS);
  arr = 2;
  lua_getiuservalue(L, 1, UV_INDEX);
  idx = 3;
  lua_newtable(L);
  seen = 4;
  n = (lua_Integer)lua_rawlen(L, arr);
  for (i = 1; i <= n; i++) {
    lua_Integer at;
    lua_rawgeti(L, arr, i);
    live += is_live(L, -1);
    lua_getfield(L, -1, "sid");
    lua_pushvalue(L, -1);
    if (lua_rawget(L, seen) == LUA_TNIL) distinct++;
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_pushboolean(L, 1);
    lua_rawset(L, seen);
    lua_pushvalue(L, -1);
    lua_rawget(L, idx);
    at = lua_tointeger(L, -1);
    if (at < 1 || at > i) {
      lua_pushboolean(L, 0);
      lua_pushfstring(L, "position %d: sid indexed at %d", (int)i, (int)at);
      return 2;
    }
    lua_rawgeti(L, arr, at);
    lua_getfield(L, -1, "sid");
    if (!lua_rawequal(L, -1, -4)) {
      lua_pushboolean(L, 0);
      lua_pushfstring(L, "position %d: index points at %d, another sid", (int)i, (int)at);
      return 2;
    }
    lua_settop(L, seen);
  }
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    keys++;
    lua_pop(L, 1);
  }
  if (keys != distinct || live != s->live) {
    lua_pushboolean(L, 0);
    lua_pushfstring(L, "index has %d sids for %d distinct; live %d, counted %d", (int)keys,
                    (int)distinct, (int)s->live, (int)live);
    return 2;
  }
  lua_pushboolean(L, 1);
  lua_pushliteral(L, "indexed");
  return 2;
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
  ps_lock_close(&s->f);
  ps_file_unpin(&s->f);
  buffers_free(s);
  free(s->f.path);
  free(s->f.lockpath);
  free(s->f.dir);
  s->f.path = s->f.lockpath = s->f.dir = NULL;
  return 0;
}

static int m_path(lua_State *L)
{
  ps_store *s = check_store(L, 1);
  lua_pushstring(L, s->f.path);
  return 1;
}

static int m_tostring(lua_State *L)
{
  ps_store *s = luaL_checkudata(L, 1, PS_STORE_MT);
  lua_pushfstring(L, "pairstore.store (%s)", s->f.path ? s->f.path : "closed");
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

/* Tidies an absolute path in place: no empty or "." components. ".." stays: after a
 * symlink it does not mean what the text says, so only the kernel resolves it (the store is
 * known by the directory it resolves to, not by this text). Returns 0 when the last
 * component names a file, -1 otherwise. */
static int normalize_path(char *p)
{
  char *out = p, *in = p;
  while (*in) {
    char *seg;
    size_t n;
    while (*in == '/') in++;
    seg = in;
    while (*in && *in != '/') in++;
    n = (size_t)(in - seg);
    if (n == 0 || (n == 1 && seg[0] == '.')) continue;
    *out++ = '/';
    memmove(out, seg, n);
    out += n;
  }
  *out = '\0';
  if (out == p) return -1;
  /* the original's last component must have been a name, not "", "." or ".." */
  return 0;
}

/* open(path, opts) -> store. opts: the normalised options table (kept as a user value). */
static int f_open(lua_State *L)
{
  size_t len;
  const char *path = luaL_checklstring(L, 1, &len);
  ps_store *s;
  char *abs, *slash;
  char cwd[4096];
  int i;

  luaL_checktype(L, 2, LUA_TTABLE);
  luaL_argcheck(L, len > 0 && len < 3500 && strlen(path) == len, 1, "invalid path");
  {
    const char *last = strrchr(path, '/');
    last = last ? last + 1 : path;
    luaL_argcheck(L, *last && strcmp(last, ".") != 0 && strcmp(last, "..") != 0, 1,
                  "path names a directory");
  }

  s = lua_newuserdatauv(L, sizeof *s, UV_COUNT);
  memset(s, 0, sizeof *s);
  ps_lock_init(&s->f);
  s->f.pin_fd = s->f.stale_fd = -1;
  s->be = &ps_file_backend;
  luaL_setmetatable(L, PS_STORE_MT); /* before any resource is acquired */

  s->f.lock_wait_ms = opt_int(L, 2, "lock_wait_ms", PS_LOCK_WAIT_MS, 0, 3600000);
  s->f.lock_stale_ms = opt_int(L, 2, "lock_stale_ms", PS_LOCK_STALE_MS, 1, INT_MAX);
  s->max_sessions = opt_int(L, 2, "max_sessions", PS_MAX_SESSIONS, 1, INT_MAX);
  s->f.max_bytes = (size_t)opt_int(L, 2, "max_file_bytes", (int)PS_MAX_FILE_BYTES, 64, INT_MAX);
  s->max_session_bytes =
      (size_t)opt_int(L, 2, "max_session_bytes", PS_MAX_SESSION_BYTES, 256, INT_MAX);
  lua_getfield(L, 2, "durable");
  s->f.durable = lua_isnil(L, -1) ? 1 : lua_toboolean(L, -1);
  lua_pop(L, 1);

  if (path[0] == '/') {
    abs = strdup(path);
  } else {
    if (!getcwd(cwd, sizeof cwd)) return luaL_error(L, "pairstore.open: getcwd failed");
    abs = malloc(strlen(cwd) + len + 2);
    if (abs) sprintf(abs, "%s/%s", cwd, path);
  }
  if (!abs) return luaL_error(L, "pairstore.open: out of memory");
  s->f.path = abs;
  if (normalize_path(abs) != 0) return luaL_argerror(L, 1, "path names a directory");
  s->f.lockpath = malloc(strlen(abs) + 6);
  s->f.dir = strdup(abs);
  if (!s->f.lockpath || !s->f.dir) return luaL_error(L, "pairstore.open: out of memory");
  sprintf(s->f.lockpath, "%s.lock", abs);
  slash = strrchr(s->f.dir, '/');
  if (slash == s->f.dir) slash[1] = '\0';
  else *slash = '\0';
  s->f.base = strrchr(s->f.path, '/') + 1;
  s->f.lockbase = s->f.lockpath + (s->f.base - s->f.path);

  lua_pushvalue(L, 2);
  lua_setiuservalue(L, -2, UV_OPTS);
  lua_getfield(L, lua_upvalueindex(1), "decode");
  lua_setiuservalue(L, -2, UV_DECODE);
  for (i = UV_TEXTS; i <= UV_BASES; i++) { /* weak keys: they go with their sessions */
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_setiuservalue(L, -2, i);
  }
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

static int f_is_terminal(lua_State *L)
{
  lua_pushboolean(L, ps_is_terminal(luaL_checkstring(L, 1)));
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

static int f_now_ms(lua_State *L)
{
  lua_pushinteger(L, (lua_Integer)ps_wall_ms());
  return 1;
}

static int f_fault(lua_State *L)
{
  ps_fault_arm((long)luaL_optinteger(L, 1, 0), (int)luaL_optinteger(L, 2, 0), lua_toboolean(L, 3));
  return 0;
}

static int f_fault_coarse_ctime(lua_State *L)
{
  ps_fault_set_coarse_ctime(lua_toboolean(L, 1));
  return 0;
}

static int f_fault_state(lua_State *L)
{
  lua_pushboolean(L, ps_fault_available());
  lua_pushinteger(L, ps_fault_calls());
  lua_pushboolean(L, ps_fault_hit());
  return 3;
}

static int f_errno(lua_State *L)
{
  static const struct { const char *name; int value; } names[] = {
    { "ENOSPC", ENOSPC }, { "EIO", EIO }, { "EACCES", EACCES }, { "EDQUOT", EDQUOT },
    { "EROFS", EROFS }, { "EINTR", EINTR }, { "EFBIG", EFBIG }, { "EPERM", EPERM },
    { "EOPNOTSUPP", EOPNOTSUPP },
  };
  const char *n = luaL_checkstring(L, 1);
  size_t i;
  for (i = 0; i < sizeof names / sizeof names[0]; i++)
    if (!strcmp(names[i].name, n)) {
      lua_pushinteger(L, names[i].value);
      return 1;
    }
  return luaL_argerror(L, 1, "unknown errno name");
}

static const luaL_Reg store_methods[] = {
  { "get", m_get }, { "list", m_list }, { "create", m_create }, { "update", m_update },
  { "transition", m_transition }, { "reject", m_reject }, { "register_failed_code", m_failed_code },
  { "verify_code", m_verify }, { "consume", m_consume }, { "prune", m_prune },
  { "close", m_close }, { "path", m_path }, { "_selfcheck", m_selfcheck }, { NULL, NULL },
};

static const luaL_Reg module_funcs[] = {
  { "redact", f_redact }, { "json_encode", f_json_encode }, { "now_ms", f_now_ms }, { "is_terminal", f_is_terminal }, { "clamp_ttl", f_clamp_ttl },
  { "_fault", f_fault }, { "_fault_state", f_fault_state }, { "_errno", f_errno },
  { "_fault_coarse_ctime", f_fault_coarse_ctime },
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

int luaopen_pairstore_core(lua_State *L);

__attribute__((visibility("default"))) int luaopen_pairstore_core(lua_State *L)
{
  if (sodium_init() < 0) return luaL_error(L, "pairstore: libsodium failed to initialise");

  lua_rawgetp(L, LUA_REGISTRYINDEX, &held_key);
  if (lua_isnil(L, -1)) {
    lua_newtable(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &held_key);
  }
  lua_pop(L, 1);

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
  lua_pushliteral(L, PS_VERSION);
  lua_setfield(L, -2, "_VERSION");
  return 1;
}
