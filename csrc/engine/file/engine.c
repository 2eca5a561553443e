/*
 * engine.c — the file engine: the whole sessions document behind the engine interface (load
 * with the raw-text scanner and the parsed cache, the sid index and live count, commit as one
 * atomic write). It takes the lock (lock.c) around each transaction and hands the commit of
 * the file (datafile.c) the lock's fence.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PS_FENGINE_MT "pairstore.file_engine"

/* User values of the engine userdata: cjson's decode; the sessions (during a transaction:
 * its array; between transactions: the sessions as last read or written, while cache_valid);
 * each session's JSON text as the file holds it (a weak-keyed table: session table -> string);
 * the text a session changed since was read from (session table -> string: what it keeps of
 * it when written); sid -> position in the sessions array (of the first session with that
 * sid), while index_valid. */
enum { UV_DECODE = 1, UV_SESSIONS, UV_TEXTS, UV_BASES, UV_INDEX, UV_COUNT = UV_INDEX };

typedef struct ps_fengine {
  ps_engine base;
  ps_file f;
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
  /* The transaction. */
  int locked;            /* the lock is held */
  int loaded;            /* the transaction's array is in UV_SESSIONS */
  int readonly;          /* get/list: write back only when pruning deleted something */
  int snapshot;          /* a read without the lock, which this user cannot make: writes nothing */
  int dirty;             /* in-memory sessions differ from the file */
  int cacheable;         /* the loaded sessions are exactly the file's (nothing dropped) */
  int from_cache;        /* the sessions were reused, not parsed */
  int removed;           /* pruned away */
  /* The session last fetched for update, and whether it was live then (it is changed in
   * place before it is put back). */
  char fetch_sid[33];
  int fetch_live;
} ps_fengine;

#define FE(e) ((ps_fengine *)(void *)(e))

/* ---- the sid index -------------------------------------------------------------------------- */

/* index[sid of the session at sess] = at, or nil when at is 0 (index: absolute). */
static void index_put(lua_State *L, int index, int sess, lua_Integer at)
{
  sess = lua_absindex(L, sess);
  lua_getfield(L, sess, "sid");
  if (at) lua_pushinteger(L, at);
  else lua_pushnil(L);
  lua_rawset(L, index);
}

/* Builds the sid index and the live count of the array at arr, unless they are valid. */
static void index_ensure(lua_State *L, ps_fengine *s, int eng, int arr)
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
    if (ps_is_live(L, -1)) s->live++;
    lua_getfield(L, -1, "sid");
    lua_pushvalue(L, -1);
    if (lua_rawget(L, -4) != LUA_TNIL) s->index_dups = 1;
    lua_pop(L, 1);
    lua_pushinteger(L, i);
    lua_rawset(L, -4);
    lua_pop(L, 1);
  }
  lua_setiuservalue(L, eng, UV_INDEX);
  s->index_valid = 1;
}

/* Position of the session with this sid in the array at arr (the transaction's), or 0. */
static lua_Integer find_sid(lua_State *L, ps_fengine *s, int eng, int arr, const char *sid)
{
  lua_Integer at;
  index_ensure(L, s, eng, arr);
  lua_getiuservalue(L, eng, UV_INDEX);
  lua_getfield(L, -1, sid);
  at = lua_tointeger(L, -1);
  lua_pop(L, 2);
  return at;
}

/* Removes the session at position at (its table at sess) from the array at arr, keeping the
 * index and the live count, or dropping the index when it cannot be kept. */
static void remove_at(lua_State *L, ps_fengine *s, int eng, int arr, lua_Integer at, int sess)
{
  lua_Integer n = (lua_Integer)lua_rawlen(L, arr), i;
  int idx = 0;
  if (s->index_valid && !s->index_dups) {
    lua_getiuservalue(L, eng, UV_INDEX);
    idx = lua_gettop(L);
    index_put(L, idx, sess, 0);
    s->live -= ps_is_live(L, sess);
  } else {
    s->index_valid = 0;
  }
  for (i = at; i < n; i++) {
    lua_rawgeti(L, arr, i + 1);
    if (idx) index_put(L, idx, -1, i);
    lua_rawseti(L, arr, i);
  }
  lua_pushnil(L);
  lua_rawseti(L, arr, n);
  if (idx) lua_pop(L, 1);
}

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

static void cache_drop(ps_fengine *s)
{
  s->cache_valid = 0;
  s->cache_id.valid = 0;
}

static void buffers_free(ps_fengine *s)
{
  cache_drop(s);
  ps_buf_free(&s->cache);
  ps_buf_free(&s->rbuf);
  ps_buf_free(&s->wbuf);
  ps_json_scan_free(&s->scan);
}

/* The session at sess is about to change in place: the text the file holds for it becomes
 * the base it is written from (what it keeps of it), no longer its text. */
static void stale_text(lua_State *L, int eng, int sess)
{
  sess = lua_absindex(L, sess);
  lua_getiuservalue(L, eng, UV_TEXTS);
  lua_pushvalue(L, sess);
  if (lua_rawget(L, -2) == LUA_TSTRING) {
    lua_getiuservalue(L, eng, UV_BASES);
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
static void changed(lua_State *L, ps_fengine *s, int eng, int sess)
{
  int64_t next = ps_next_prune(L, sess);
  stale_text(L, eng, sess);
  s->dirty = 1;
  if (next < s->prune_after) s->prune_after = next;
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

static int quarantine(ps_fengine *s, const char *why, ps_err *err)
{
  char moved[4096 + 64], detail[300];
  if (s->readonly) {
    ps_err_set(err, "corrupt", "%s is not a valid sessions file (%s); left as it is (only "
               "a writing operation moves it aside)", s->f.path, why);
    return -1;
  }
  if (ps_file_quarantine(&s->f, ps_wall_ms(), why, begins_like_ours(&s->cache), moved,
                         sizeof moved, err) != 0)
    return -1;
  snprintf(detail, sizeof detail, "corrupt sessions file moved aside: %s", why);
  ps_file_event(&s->f, "corrupt", detail, moved, 0, 0, 0);
  s->dirty = 0;
  return 0;
}

/* A well-formed file of another format version (a newer program's) is not corrupt: fail
 * with code unsupported_version and leave it, reads and writes alike. Returns 1 then. */
static int other_version(lua_State *L, ps_fengine *s, int doc, ps_err *err)
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
    ps_err_set(err, "unsupported_version", "%s has format version %d; this pairstore "
               "reads and writes version %d only; left as it is", s->f.path, (int)v,
               PS_FILE_VERSION);
  else
    ps_err_set(err, "unsupported_version", "%s has a format version other than %d, which "
               "this pairstore cannot read or write; left as it is", s->f.path,
               PS_FILE_VERSION);
  return 1;
}

/* The file cannot be used: a corrupt one is moved aside (and the store starts empty). */
static int corrupt(lua_State *L, ps_fengine *s, const char *why, ps_err *err)
{
  if (quarantine(s, why, err) != 0) return -1;
  lua_newtable(L);
  return 0;
}

/* Reads the file. 0: done, the sessions pushed (none: the file is absent; the cached ones: it
 * is the one last read or written); 1: new bytes in s->cache to parse; -1 with err set. */
static int read_file(lua_State *L, ps_fengine *s, int eng, ps_err *err)
{
  int toobig = 0, rc;
  ps_ident id;

  rc = ps_file_load(&s->f, &s->rbuf, s->cache_valid ? &s->cache_id : NULL, &toobig, &id, err);
  if (rc == PS_LOAD_ERROR) return -1;
  if (rc == PS_LOAD_ABSENT) {
    cache_drop(s);
    lua_newtable(L);
    return 0;
  }
  if (rc == PS_LOAD_SAME ||
      (!toobig && s->cache_valid && s->rbuf.len == s->cache.len &&
       memcmp(s->rbuf.p, s->cache.p, s->cache.len) == 0)) {
    s->cache_id = id; /* same bytes: from now on known by this identity */
    lua_getiuservalue(L, eng, UV_SESSIONS);
    s->cacheable = 1;
    s->from_cache = 1;
    return 0;
  }
  cache_drop(s);
  if (toobig) {
    /* Not read, so not known to be corrupt (another store may allow more): left as it is. */
    ps_err_set(err, "limit", "%s is larger than max_file_bytes (%zu): not read, left as it is",
               s->f.path, s->f.max_bytes);
    return -1;
  }
  ps_buf_swap(&s->cache, &s->rbuf); /* these bytes are the file's now */
  s->cache_id = id;
  return 1;
}

/* Decodes s->cache (delimited by ps_json_scan into s->scan) and checks its shape. Pushes the
 * document and returns 0, or returns why it is corrupt (in reason; nothing pushed), or fails
 * (-1, a newer format version: err set). */
static int decode_doc(lua_State *L, ps_fengine *s, int eng, char *reason, size_t n, ps_err *err)
{
  const char *why, *text = s->cache.p;
  int rc;

  if ((why = ps_json_scan(s->cache.p, s->cache.len, &s->scan)) != NULL) {
    snprintf(reason, n, "invalid JSON (%s)", why);
    return 1;
  }
  if (s->scan.lone) {
    /* cjson refuses lone surrogate escapes (JSON.parse takes them): it decodes a copy that
     * reads them as U+FFFD; the file's text, kept, still has them */
    s->rbuf.len = 0;
    ps_buf_add(&s->rbuf, s->cache.p, s->cache.len);
    if (s->rbuf.oom) luaL_error(L, "pairstore: out of memory");
    ps_json_sanitize(s->rbuf.p, s->rbuf.len);
    text = s->rbuf.p;
  }
  lua_getiuservalue(L, eng, UV_DECODE);
  lua_pushlstring(L, text, s->cache.len);
  if (text != s->cache.p) s->rbuf.len = 0;
  rc = lua_pcall(L, 1, 1, 0);
  if (rc != LUA_OK) {
    const char *msg = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    /* Only cjson's own verdict on the bytes makes the file corrupt. Anything else raised
     * meanwhile (out of memory, an "interrupted!" from a SIGINT hook) is not about the
     * file: let it propagate (the lock is released on the way out). */
    if (rc != LUA_ERRRUN || !msg || !ps_is_json_verdict(msg)) lua_error(L);
    snprintf(reason, n, "invalid JSON (%s)", msg);
    lua_pop(L, 1);
    return 1;
  }
  if (other_version(L, s, lua_gettop(L), err)) return -1;
  if (!shape_ok(L, -1, &why)) {
    snprintf(reason, n, "%s", why);
    lua_pop(L, 1);
    return 1;
  }
  return 0;
}

/* Keeps the valid sessions of the array at arr, in place, each with its text as the file
 * holds it (texts[session], from the spans ps_json_scan found). Returns how many it dropped. */
static lua_Integer keep_valid(lua_State *L, ps_fengine *s, int eng, int arr)
{
  const ps_jscan *sc = &s->scan;
  lua_Integer n = (lua_Integer)lua_rawlen(L, arr), i, kept = 0;
  int texts;

  lua_getiuservalue(L, eng, UV_TEXTS);
  texts = lua_gettop(L);
  lua_getiuservalue(L, eng, UV_DECODE);
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
  return n - kept;
}

/* Pushes the array of valid sessions (possibly empty) and returns 0, or returns -1. Each
 * session's text is kept exactly as the file holds it; cjson decodes. */
static int load(lua_State *L, ps_fengine *s, int eng, ps_err *err)
{
  char reason[256];
  lua_Integer dropped;
  int rc, doc;

  if ((rc = read_file(L, s, eng, err)) <= 0) return rc;
  if ((rc = decode_doc(L, s, eng, reason, sizeof reason, err)) != 0)
    return rc < 0 ? -1 : corrupt(L, s, reason, err);
  doc = lua_gettop(L);
  lua_getfield(L, doc, "sessions");
  if ((size_t)lua_rawlen(L, -1) != s->scan.nspans) { /* cannot be: both read the same array */
    lua_pop(L, 2);
    return corrupt(L, s, "the sessions array could not be delimited", err);
  }
  dropped = keep_valid(L, s, eng, doc + 1);
  if (dropped > 0) {
    ps_file_event(&s->f, "invalid_dropped", "invalid session entries were dropped", s->f.path,
                  (long)dropped, 0, 0);
    s->dirty = 1;
  } else {
    s->cacheable = 1;
  }
  lua_remove(L, doc);
  return 0;
}

/* ---- commit --------------------------------------------------------------------------------- */

/* The text of the session at sess as it goes into the file: a fresh one that keeps what it
 * can of its base. Pushes it, or returns -1. */
static int session_text(lua_State *L, int sess, int dec, const char *base, size_t baselen,
                        ps_buf *b, ps_err *err)
{
  if (ps_record_text(L, dec, sess, base, baselen, 0, 0, b, err) < 0) return -1;
  lua_pushlstring(L, b->p, b->len);
  return 0;
}

/* Writes the document of the sessions of the array at arr into s->wbuf: each session's text
 * as the file holds it, or for one changed or new since, its text now (then kept as its
 * text). 0, or -1 with err set. */
static int encode_doc(lua_State *L, ps_fengine *s, int eng, int arr, ps_err *err)
{
  ps_buf *wb = &s->wbuf;
  lua_Integer n = (lua_Integer)lua_rawlen(L, arr), i;
  int texts, bases, dec, top = lua_gettop(L);
  ps_buf one = { 0 };

  lua_getiuservalue(L, eng, UV_TEXTS);
  texts = lua_gettop(L);
  lua_getiuservalue(L, eng, UV_BASES);
  bases = lua_gettop(L);
  lua_getiuservalue(L, eng, UV_DECODE);
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
      if (session_text(L, top + 4, dec, base, blen, &one, err) != 0) {
        ps_buf_free(&one);
        lua_settop(L, top);
        return -1;
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
    ps_err_set(err, "io", "encode: out of memory (ENOMEM)");
    return -1;
  }
  return 0;
}

/* Writes the sessions of the array at arr as the file (the lock's fence checked before the
 * rename). 0, or -1 with err set. */
static int commit(lua_State *L, ps_fengine *s, int eng, int arr, ps_err *err)
{
  ps_buf *wb = &s->wbuf;
  ps_ident id;

  if (encode_doc(L, s, eng, arr, err) != 0) return -1;
  if (wb->len > s->f.max_bytes) {
    ps_err_set(err, "limit",
               "the sessions file would be %zu bytes, above max_file_bytes (%zu): nothing was written",
               wb->len, s->f.max_bytes);
    return -1;
  }
  if (ps_file_commit(&s->f, wb->p, wb->len, ps_lock_fence, &id, err) != 0) return -1;
  /* What we wrote is what the file now holds. */
  ps_buf_swap(&s->cache, wb);
  s->cache_id = id;
  return 0;
}


/* ---- the engine methods ------------------------------------------------------------------- */

/* Pushes the transaction's array, loading (and validating) the file on first use. */
static int sessions(lua_State *L, ps_fengine *s, int eng, ps_err *err)
{
  if (s->loaded) {
    lua_getiuservalue(L, eng, UV_SESSIONS);
    return 0;
  }
  if (load(L, s, eng, err) != 0) return -1;
  if (!s->from_cache) s->index_valid = 0; /* a new array */
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, eng, UV_SESSIONS);
  s->loaded = 1;
  return 0;
}

/* ---- the lock around the file ------------------------------------------------------------ */

/* Each transaction: what does the path name now? The store moves to whatever directory the
 * kernel resolves it to (made when missing); in the one it leaves, its parked sentinel is
 * removed and its pin let go (both are only spares). */
static int resolve(ps_file *f, ps_err *e)
{
  struct stat st;
  int fd, rc = ps_file_locate(f, &fd, &st, e);
  if (rc <= 0) return rc;
  if (f->dirfd >= 0) {
    ps_lock_unpark(f);
    ps_file_unpin(f);
    close(f->dirfd);
  }
  ps_file_enter(f, fd, &st);
  return 0;
}

/* Takes the lock (and sweeps what killed writers left, once per directory). 0, -1, or
 * PS_LOCK_NO_ACCESS. */
static int lock(ps_file *f, ps_err *e)
{
  int rc = ps_lock_acquire(f, e);
  if (rc != 0) return rc;
  if (!f->swept) {
    ps_file_sweep_orphans(f);
    f->swept = 1;
  }
  return 0;
}

static void unlock(ps_file *f)
{
  ps_lock_release(f);
  ps_file_drop_stale(f);
}

static const char *fe_display(ps_engine *e)
{
  return FE(e)->f.path;
}

static int fe_locate(ps_engine *e, lua_State *L, int eng, ps_err *err)
{
  ps_fengine *s = FE(e);
  (void)eng;
  s->f.nevents = 0;
  if (resolve(&s->f, err) != 0) return -1;
  /* the store's identity as the kernel sees it: its directory's device and inode plus the
   * file name, whatever spelling of the path opened it */
  lua_pushfstring(L, "%s/%s", s->f.key, s->f.base);
  return 0;
}

static int fe_begin(ps_engine *e, lua_State *L, int eng, int readonly, const ps_hint *hint,
                    ps_err *err)
{
  ps_fengine *s = FE(e);
  int rc;
  (void)L;
  (void)eng;
  s->f.nowait = hint->nowait;
  rc = lock(&s->f, err);
  e->waited_us = rc == 0 ? s->f.lock.waited_us : 0;
  /* A read where this user cannot make the sentinel (a read-only file system, a directory it
   * may not write) reads without the lock: writers replace the file by rename, so the one
   * file it opens is a whole, consistent snapshot. It then writes nothing back. */
  s->snapshot = rc == PS_LOCK_NO_ACCESS && readonly;
  if (rc != 0 && !s->snapshot) return -1;
  s->locked = 1;
  s->loaded = 0;
  s->readonly = readonly;
  s->dirty = s->cacheable = s->from_cache = s->removed = 0;
  s->fetch_sid[0] = '\0';
  return 0;
}

static int fe_fetch(ps_engine *e, lua_State *L, int eng, const char *sid, ps_err *err)
{
  ps_fengine *s = FE(e);
  lua_Integer at;
  if (sessions(L, s, eng, err) != 0) return -1;
  at = find_sid(L, s, eng, lua_gettop(L), sid);
  if (at == 0) {
    lua_pop(L, 1);
    lua_pushnil(L);
    return 0;
  }
  lua_rawgeti(L, -1, at);
  lua_remove(L, -2);
  snprintf(s->fetch_sid, sizeof s->fetch_sid, "%s", sid);
  s->fetch_live = ps_is_live(L, -1);
  return 0;
}

/* The text the session at sess was last written as, or the base it keeps (pushed; nil for
 * neither). */
static void push_old_text(lua_State *L, int eng, int sess)
{
  lua_getiuservalue(L, eng, UV_TEXTS);
  lua_pushvalue(L, sess);
  if (lua_rawget(L, -2) != LUA_TSTRING) {
    lua_pop(L, 2);
    lua_getiuservalue(L, eng, UV_BASES);
    lua_pushvalue(L, sess);
    lua_rawget(L, -2);
  }
  lua_remove(L, -2);
}

/* texts[session at sess] = the string at text: what goes into the file for it. */
static void set_text(lua_State *L, int eng, int sess, int text)
{
  lua_getiuservalue(L, eng, UV_TEXTS);
  lua_pushvalue(L, sess);
  lua_pushvalue(L, text);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

static int fe_put(ps_engine *e, lua_State *L, int eng, int sess, int text, int flags,
                  ps_err *err)
{
  ps_fengine *s = FE(e);
  size_t len;
  const char *sid;
  lua_Integer at;
  int arr, was_valid = s->index_valid, counted, top = lua_gettop(L);

  sess = lua_absindex(L, sess);
  if (text) text = lua_absindex(L, text);
  sid = ps_get_str(L, sess, "sid", &len);
  if (sessions(L, s, eng, err) != 0) return -1;
  arr = lua_gettop(L);
  at = find_sid(L, s, eng, arr, sid);
  if (at == 0) { /* new */
    lua_Integer n = (lua_Integer)lua_rawlen(L, arr);
    lua_pushvalue(L, sess);
    lua_rawseti(L, arr, n + 1);
    lua_getiuservalue(L, eng, UV_INDEX); /* valid: ensured by find_sid */
    lua_pushinteger(L, n + 1);
    lua_setfield(L, -2, sid);
    s->live += ps_is_live(L, sess);
    changed(L, s, eng, sess);
    if (text) set_text(L, eng, sess, text);
    lua_settop(L, top);
    return 1;
  }
  lua_rawgeti(L, arr, at);
  counted = was_valid && strcmp(sid, s->fetch_sid) == 0 ? s->fetch_live : ps_is_live(L, -1);
  if (flags & PS_PUT_IF_CHANGED) {
    /* Its text as it would be written (keeping what it can of the old one). Encodable?
     * Within the bounds? And changed at all? A mutator that changed nothing costs no
     * write. */
    ps_buf b = { 0 };
    const char *old;
    size_t oldlen = 0;
    int old_sess = lua_gettop(L), rc;
    lua_getiuservalue(L, eng, UV_DECODE);
    push_old_text(L, eng, old_sess);
    old = lua_tolstring(L, -1, &oldlen); /* NULL: a session never written (cannot be) */
    rc = ps_record_text(L, old_sess + 1, sess, old, oldlen, flags, s->max_session_bytes, &b, err);
    if (rc > 0) lua_pushlstring(L, b.p, b.len);
    ps_buf_free(&b);
    if (rc <= 0) {
      lua_settop(L, top);
      return rc;
    }
    /* The new session goes into the file as this text (the commit need not encode it). */
    text = lua_gettop(L);
  }
  changed(L, s, eng, sess);
  if (text) set_text(L, eng, sess, text);
  if (s->index_valid) s->live += ps_is_live(L, sess) - counted;
  if (strcmp(sid, s->fetch_sid) == 0) s->fetch_live = ps_is_live(L, sess);
  lua_pushvalue(L, sess);
  lua_rawseti(L, arr, at);
  lua_settop(L, top);
  return 1;
}

static int fe_remove(ps_engine *e, lua_State *L, int eng, const char *sid, ps_err *err)
{
  ps_fengine *s = FE(e);
  lua_Integer at;
  int arr, top = lua_gettop(L);
  if (sessions(L, s, eng, err) != 0) return -1;
  arr = lua_gettop(L);
  at = find_sid(L, s, eng, arr, sid);
  if (at) {
    lua_rawgeti(L, arr, at);
    remove_at(L, s, eng, arr, at, lua_gettop(L));
    s->dirty = 1;
    s->fetch_sid[0] = '\0';
  }
  lua_settop(L, top);
  return 0;
}

static int fe_count_live(ps_engine *e, lua_State *L, int eng, lua_Integer limit, lua_Integer *n,
                         ps_err *err)
{
  ps_fengine *s = FE(e);
  (void)limit;
  if (sessions(L, s, eng, err) != 0) return -1;
  index_ensure(L, s, eng, -1);
  lua_pop(L, 1);
  *n = s->live;
  return 0;
}

/* Pushes the text of the session at sess as the file holds it (or will: a changed session
 * is written from its base). */
static int push_text(lua_State *L, int eng, int sess, ps_buf *b, ps_err *err)
{
  int top = lua_gettop(L);
  size_t blen = 0;
  const char *base;
  lua_getiuservalue(L, eng, UV_TEXTS);
  lua_pushvalue(L, sess);
  if (lua_rawget(L, -2) == LUA_TSTRING) {
    lua_replace(L, top + 1);
    lua_settop(L, top + 1);
    return 0;
  }
  lua_settop(L, top);
  lua_getiuservalue(L, eng, UV_DECODE);
  push_old_text(L, eng, sess);
  base = lua_tolstring(L, -1, &blen);
  if (session_text(L, sess, top + 1, base, blen, b, err) != 0) {
    lua_settop(L, top);
    return -1;
  }
  lua_replace(L, top + 1);
  lua_settop(L, top + 1);
  return 0;
}

static int fe_text(ps_engine *e, lua_State *L, int eng, int sess, ps_err *err)
{
  ps_buf b = { 0 };
  int rc;
  (void)e;
  rc = push_text(L, eng, lua_absindex(L, sess), &b, err);
  ps_buf_free(&b);
  return rc;
}

/* list's text of a session: push_text with the engine and a scratch buffer. */
typedef struct text_ctx {
  int eng;
  ps_buf b;
} text_ctx;

static int list_text(void *ctx, lua_State *L, int sess, ps_err *err)
{
  text_ctx *c = ctx;
  return push_text(L, c->eng, sess, &c->b, err);
}

static int fe_list(ps_engine *e, lua_State *L, int eng, int flags, ps_err *err)
{
  ps_fengine *s = FE(e);
  text_ctx c = { eng, { 0 } };
  int rc;
  if (sessions(L, s, eng, err) != 0) return -1;
  rc = ps_list_push(L, -1, flags, list_text, &c, err);
  ps_buf_free(&c.b);
  if (rc != 0) {
    lua_pop(L, 1);
    return -1;
  }
  lua_remove(L, -2);
  return 0;
}

/* Expires and drops in place (keeping the sid index up to date unless index is 0); returns
 * the number removed, *expired the number expired, and *next the earliest time after which
 * pruning would change something again. */
static int prune_array(lua_State *L, int eng, int arr, int index, int64_t now, int *expired,
                       int64_t *next)
{
  lua_Integer n = (lua_Integer)lua_rawlen(L, arr), i, out = 0;
  int removed = 0;
  *expired = 0;
  *next = INT64_MAX;
  for (i = 1; i <= n; i++) {
    int64_t until;
    int r;
    lua_rawgeti(L, arr, i);
    r = ps_rule_prune(L, -1, now);
    if (r & PS_PRUNE_EXPIRED) {
      stale_text(L, eng, lua_gettop(L));
      (*expired)++;
    }
    if (r & PS_PRUNE_DROP) {
      removed++;
      if (index) index_put(L, index, -1, 0);
      lua_pop(L, 1);
      continue;
    }
    until = ps_next_prune(L, -1);
    if (until < *next) *next = until;
    out++;
    if (index && out != i) index_put(L, index, -1, out); /* moved down */
    lua_rawseti(L, arr, out);
  }
  for (i = out + 1; i <= n; i++) {
    lua_pushnil(L);
    lua_rawseti(L, arr, i);
  }
  return removed;
}

static int fe_prune_due(ps_engine *e, lua_State *L, int eng, int64_t now, int *removed,
                        ps_err *err)
{
  ps_fengine *s = FE(e);
  int arr, expired = 0;
  *removed = 0;
  if (sessions(L, s, eng, err) != 0) return -1;
  arr = lua_gettop(L);
  if (!s->from_cache || now > s->prune_after) {
    int keep = s->index_valid && !s->index_dups;
    if (keep) lua_getiuservalue(L, eng, UV_INDEX);
    s->removed = prune_array(L, eng, arr, keep ? arr + 1 : 0, now, &expired, &s->prune_after);
    lua_settop(L, arr);
    if (s->removed || expired) s->dirty = 1;
    if (s->removed && !keep) s->index_valid = 0;
    else s->live -= expired; /* expired: live -> terminal; removed: terminal already */
    *removed = s->removed;
  }
  lua_pop(L, 1);
  return 0;
}

static int fe_end(ps_engine *e, lua_State *L, int eng, int how, ps_err *err)
{
  ps_fengine *s = FE(e);
  int rc = 0, committed = 0;
  if (!s->locked) return 0;
  if (how == PS_END_COMMIT && s->loaded) {
    lua_getiuservalue(L, eng, UV_SESSIONS);
    if (!s->snapshot && (s->readonly ? s->removed > 0 : s->dirty)) {
      rc = commit(L, s, eng, lua_gettop(L), err);
      committed = rc == 0;
    }
    lua_pop(L, 1);
    /* The sessions in memory are the file's exactly: reuse them while its bytes stay. */
    if (committed || (rc == 0 && s->cacheable && !s->dirty)) s->cache_valid = 1;
  }
  if (how != PS_END_COMMIT || rc != 0) s->cache_valid = 0;
  unlock(&s->f);
  s->locked = 0;
  s->loaded = 0;
  if (!s->cache_valid) {
    /* Memory may now differ from the file: never trust it again. */
    s->index_valid = 0;
    lua_pushnil(L);
    lua_setiuservalue(L, eng, UV_SESSIONS);
  }
  return rc;
}

static const ps_event *fe_event(ps_engine *e, int i)
{
  ps_fengine *s = FE(e);
  return i < s->f.nevents ? &s->f.events[i] : NULL;
}

static void fe_events_clear(ps_engine *e)
{
  FE(e)->f.nevents = 0;
}

static int fe_watch(ps_engine *e, lua_State *L, int eng, const char *sid, ps_err *err)
{
  (void)eng;
  (void)sid;
  return ps_watch_file(L, FE(e)->f.dir, FE(e)->f.base, err);
}

static void fe_idle(ps_engine *e)
{
  ps_fengine *s = FE(e);
  if (s->f.path) ps_lock_unpark(&s->f);
}

static void fe_close(ps_engine *e)
{
  ps_fengine *s = FE(e);
  if (!s->f.path) return;
  ps_lock_close(&s->f);
  ps_file_unpin(&s->f);
  if (s->f.dirfd >= 0) close(s->f.dirfd);
  s->f.dirfd = -1;
  buffers_free(s);
  free(s->f.path);
  free(s->f.lockpath);
  free(s->f.dir);
  s->f.path = s->f.lockpath = s->f.dir = NULL;
}

static const ps_engine_methods file_methods = {
  PS_ENGINE_VERSION, "file", fe_display, fe_locate, fe_begin, NULL, fe_fetch, fe_put, fe_remove,
  fe_count_live, fe_list, fe_text, fe_prune_due, fe_end, fe_event, fe_events_clear, fe_watch,
  fe_close, NULL, fe_idle,
};

/* ---- making one ---------------------------------------------------------------------------- */

static int fe_gc(lua_State *L)
{
  ps_fengine *s = luaL_checkudata(L, 1, PS_FENGINE_MT);
  fe_close(&s->base);
  return 0;
}

/* Tidies an absolute path in place: no empty or "." components. ".." stays: after a
 * symlink it does not mean what the text says, so only the kernel resolves it (the store is
 * known by the directory it resolves to, not by this text). Returns 0 when the last
 * component names a file, -1 otherwise. */
int ps_file_normalize_path(char *p)
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


ps_engine *ps_file_engine_new(lua_State *L, const char *path, const ps_file_opts *o, int decode)
{
  ps_fengine *s;
  char *slash;
  int i;

  decode = lua_absindex(L, decode);
  s = lua_newuserdatauv(L, sizeof *s, UV_COUNT);
  memset(s, 0, sizeof *s);
  s->base.m = &file_methods;
  ps_lock_init(&s->f);
  s->f.dirfd = -1;
  s->f.pin_fd = s->f.stale_fd = -1;
  if (luaL_newmetatable(L, PS_FENGINE_MT)) { /* before any resource is acquired */
    lua_pushcfunction(L, fe_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  s->f.lock_wait_ms = o->lock_wait_ms;
  s->f.lock_stale_ms = o->lock_stale_ms;
  s->f.max_bytes = o->max_file_bytes;
  s->f.durable = o->durable;
  s->max_session_bytes = o->max_session_bytes;

  s->f.path = strdup(path);
  s->f.lockpath = malloc(strlen(path) + 6);
  s->f.dir = strdup(path);
  if (!s->f.path || !s->f.lockpath || !s->f.dir) {
    fe_close(&s->base);
    luaL_error(L, "pairstore.open: out of memory");
  }
  sprintf(s->f.lockpath, "%s.lock", path);
  slash = strrchr(s->f.dir, '/');
  if (slash == s->f.dir) slash[1] = '\0';
  else *slash = '\0';
  s->f.base = strrchr(s->f.path, '/') + 1;
  s->f.lockbase = s->f.lockpath + (s->f.base - s->f.path);

  lua_pushvalue(L, decode);
  lua_setiuservalue(L, -2, UV_DECODE);
  for (i = UV_TEXTS; i <= UV_BASES; i++) { /* weak keys: they go with their sessions */
    lua_newtable(L);
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_setiuservalue(L, -2, i);
  }
  return &s->base;
}

#ifdef PS_TEST
int ps_file_engine_selfcheck(lua_State *L, int eng)
{
  ps_fengine *s = luaL_testudata(L, eng, PS_FENGINE_MT);
  lua_Integer n, i, live = 0, keys = 0, distinct = 0;
  int arr, idx, seen;
  lua_pushvalue(L, eng);
  lua_replace(L, 1);
  lua_settop(L, 1);
  if (!s || !s->cache_valid || !s->index_valid) {
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
    live += ps_is_live(L, -1);
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
#endif
