/*
 * txn.c — the transaction every operation runs (lock -> load -> prune -> act -> commit ->
 * unlock) through the engine interface only: reentrancy, the clock, events, Lua callbacks
 * with a traceback, and each operation's glue (fetch, apply its rule, put).
 */
#include "pairstore.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char held_key = 'h'; /* registry: stores (their engines' identities) locked by this Lua state */

typedef struct ps_txn {
  ps_store *s;
  ps_engine *e;
  const ps_engine_methods *m;
  ps_op op;
  int readonly;
  int64_t now;
  int ended;             /* ended with commit (the lock released) */
  const char *outcome;   /* domain outcome: nil, outcome, outcome */
  char sid[33];          /* create: the sid drawn for it before begin */
  int failed;            /* system failure in err */
  int commit_pending;    /* the engine stopped at its commit for a round trip (io_pending) */
  int yielded;           /* a callback tried to yield: a programming error, raised */
  ps_err err;
} ps_txn;

/* Body stack: 1 = txn, 2 = engine, 3 = store, 4.. = the method's arguments after self. */
#define ENG 2
#define STORE 3
#define ARG(i) ((i) + 3)

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
int ps_call_user(lua_State *L, int nargs, int nres)
{
  int base = lua_gettop(L) - nargs, status;
  lua_pushcfunction(L, traceback);
  lua_insert(L, base);
  status = lua_pcall(L, nargs, nres, base);
  lua_remove(L, base);
  return status;
}

/* ---- the operations, run under the lock ----------------------------------------------------- */

static void fail(ps_txn *t, const char *code, const char *msg)
{
  t->failed = 1;
  ps_err_set(&t->err, code, "%s", msg);
}

/* Pushes a copy of the session at idx and returns 1. */
static int push_copy(lua_State *L, int idx)
{
  ps_copy_value(L, idx, 0);
  return 1;
}

/* Stores the session at sess (changed by its rule); 0, or -1 with t failed. */
static int put(lua_State *L, ps_txn *t, int sess, int flags)
{
  int rc = t->m->put(t->e, L, ENG, sess, 0, flags, &t->err);
  if (rc < 0) t->failed = 1;
  return rc;
}

static int act_update(lua_State *L, ps_txn *t, int sess)
{
  const char *sid = lua_tostring(L, ARG(1)), *why, *newsid;
  size_t len;
  int res, copy, rc;

  push_copy(L, sess); /* the mutator's private copy; kept here to read back in-place edits */
  copy = lua_gettop(L);
  lua_pushvalue(L, ARG(2));
  lua_pushvalue(L, copy);
  if (ps_call_user(L, 1, 1) != LUA_OK) {
    ps_err_set(&t->err, "callback", "mutator failed: %s",
               lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "(error object is not a string)");
    t->yielded = strstr(t->err.msg, "attempt to yield across") != NULL;
    t->failed = 1;
    return 0;
  }
  res = lua_gettop(L);
  if (lua_type(L, res) == LUA_TBOOLEAN && !lua_toboolean(L, res)) {
    if (t->m->remove(t->e, L, ENG, sid, &t->err) != 0) {
      t->failed = 1;
      return 0;
    }
    lua_pushboolean(L, 0);
    return 1;
  }
  if (lua_isnil(L, res)) res = copy; /* edited in place */
  if (lua_type(L, res) != LUA_TTABLE) {
    fail(t, "invalid", "mutator must return a table, false or nothing");
    return 0;
  }
  /* What the caller keeps cannot change what we store. Every value takes at least a byte of
   * JSON: more values than max_session_bytes cannot fit, and are not copied (a table shared
   * along many paths would be copied once per path). */
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
  rc = put(L, t, res, PS_PUT_IF_CHANGED);
  if (rc < 0) return 0;
  return push_copy(L, rc == 0 ? sess : res); /* 0: the mutator changed nothing */
}

/* respond: ARG 1..5 = sid, pk_d, nonce, ct, aead. Consume's rule, then the phone's response
 * decrypted under the lock; pushes plaintext, the stored session. */
static int act_respond(lua_State *L, ps_txn *t, int sess)
{
  int r = ps_rule_respond(L, sess, t->now, &t->outcome);
  if (!t->outcome) {
    const char *why;
    lua_pushcfunction(L, ps_crypto_open);
    lua_getfield(L, sess, "skGatewayB64");
    lua_pushvalue(L, ARG(2));
    lua_pushvalue(L, ARG(1));
    lua_pushvalue(L, ARG(3));
    lua_pushvalue(L, ARG(4));
    lua_pushvalue(L, ARG(5));
    if (ps_call_user(L, 6, 2) != LUA_OK) {
      ps_err_set(&t->err, "callback", "decryption failed: %s",
                 lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "(error object is not a string)");
      t->failed = 1;
      return 0;
    }
    why = lua_isnil(L, -2) ? lua_tostring(L, -1) : NULL;
    r = ps_rule_respond_opened(L, sess, t->now, why, &t->outcome);
    lua_pop(L, 1); /* the plaintext (or nil) stays */
  }
  if (r == PS_RULE_CHANGED && put(L, t, sess, 0) < 0) return 0;
  if (t->outcome) return 0;
  push_copy(L, sess);
  return 2;
}

/* The per-sid operations: fetch the session, apply the operation's rule, put it back. */
static int act_on_sid(lua_State *L, ps_txn *t)
{
  const char *sid = lua_tostring(L, ARG(1));
  int sess, r;

  if (t->m->fetch_for_update(t->e, L, ENG, sid, &t->err) != 0) {
    t->failed = 1;
    return 0;
  }
  if (lua_isnil(L, -1)) {
    t->outcome = "not_found";
    return 0;
  }
  sess = lua_gettop(L);

  switch (t->op) {
  case PS_OP_GET:
    return push_copy(L, sess);
  case PS_OP_UPDATE:
    return act_update(L, t, sess);
  case PS_OP_RESPOND:
    return act_respond(L, t, sess);
  case PS_OP_TRANSITION:
    r = ps_rule_transition(L, sess, lua_tostring(L, ARG(2)), t->now, &t->outcome);
    break;
  case PS_OP_FAILED_CODE:
    r = ps_rule_failed_code(L, sess, t->now, &t->outcome);
    break;
  case PS_OP_VERIFY:
    r = ps_rule_verify_code(L, sess, lua_tostring(L, ARG(2)), t->now, &t->outcome);
    break;
  case PS_OP_CONSUME:
    push_copy(L, sess); /* the record as it was before */
    r = ps_rule_consume(L, sess, t->now, &t->outcome);
    if (r == PS_RULE_CHANGED && put(L, t, sess, 0) < 0) return 0;
    return t->outcome ? 0 : 1;
  default:
    return luaL_error(L, "pairstore: internal error: op %d", (int)t->op);
  }
  if (r == PS_RULE_CHANGED && put(L, t, sess, 0) < 0) return 0;
  return t->outcome ? 0 : push_copy(L, sess);
}

/* create: ARG 1..7 = mode, operator, ttl, sid_hex|nil, sk_b64u, code, pk_b64u */
static int act_create(lua_State *L, ps_txn *t)
{
  char sid[33];
  int64_t ttl = (int64_t)lua_tointeger(L, ARG(3));
  lua_Integer live;
  int tries, taken;

  if (t->m->count_live(t->e, L, ENG, t->s->max_sessions, &live, &t->err) != 0) {
    t->failed = 1;
    return 0;
  }
  if (live >= t->s->max_sessions) {
    ps_err_set(&t->err, "limit", "too many live sessions (max_sessions = %d)", t->s->max_sessions);
    t->failed = 1;
    return 0;
  }
  for (tries = 0;; tries++) {
    if (lua_isstring(L, ARG(4))) snprintf(sid, sizeof sid, "%s", lua_tostring(L, ARG(4)));
    else if (tries == 0) memcpy(sid, t->sid, sizeof sid); /* drawn before begin: the hint's */
    else ps_random_hex(sid, 16);
    if (t->m->fetch_for_update(t->e, L, ENG, sid, &t->err) != 0) {
      t->failed = 1;
      return 0;
    }
    taken = !lua_isnil(L, -1);
    lua_pop(L, 1);
    if (!taken) break;
    if (lua_isstring(L, ARG(4))) {
      fail(t, "invalid", "the sid hook returned a sid that is already in use");
      return 0;
    }
    if (tries > 8) { fail(t, "invalid", "could not draw an unused sid"); return 0; }
  }
  ps_rule_new_session(L, sid, ARG(1), ARG(2), ARG(5), ARG(7), ARG(6), t->now, ttl);
  if (put(L, t, lua_gettop(L), 0) < 0) return 0;
  return push_copy(L, lua_gettop(L));
}

/* import: ARG 1 = an array of session texts. Each whose sid the store lacks is stored as it
 * is; one it holds with the same text counts as the same; another text there fails it all.
 * Pushes added, same. */
static int act_import(lua_State *L, ps_txn *t)
{
  lua_Integer n = (lua_Integer)lua_rawlen(L, ARG(1)), i, added = 0, same = 0;
  ps_buf tmp = { 0 };
  int dec, top;
  lua_getiuservalue(L, STORE, PS_UV_DECODE);
  dec = lua_gettop(L);
  for (i = 1; i <= n; i++) {
    size_t len, sidlen, have_len;
    const char *text, *why, *sid, *have;
    top = lua_gettop(L);
    lua_rawgeti(L, ARG(1), i);
    text = lua_tolstring(L, -1, &len);
    why = ps_record_decode(L, dec, text, len, &tmp);
    if (why) {
      ps_buf_free(&tmp);
      ps_err_set(&t->err, "invalid", "session text %lld is not a session: %s", (long long)i, why);
      t->failed = 1;
      return 0;
    }
    sid = ps_get_str(L, -1, "sid", &sidlen);
    if (t->m->fetch_for_update(t->e, L, ENG, sid, &t->err) != 0) {
      ps_buf_free(&tmp);
      t->failed = 1;
      return 0;
    }
    if (lua_isnil(L, -1)) {
      if (t->m->put(t->e, L, ENG, top + 2, top + 1, 0, &t->err) < 0) {
        ps_buf_free(&tmp);
        t->failed = 1;
        return 0;
      }
      added++;
    } else {
      if (t->m->text(t->e, L, ENG, lua_gettop(L), &t->err) != 0) {
        ps_buf_free(&tmp);
        t->failed = 1;
        return 0;
      }
      have = lua_tolstring(L, -1, &have_len);
      if (have_len != len || memcmp(have, text, len) != 0) {
        ps_buf_free(&tmp);
        ps_err_set(&t->err, "conflict", "session %s is already in %s with other contents; "
                   "nothing was imported", sid, t->m->display(t->e));
        t->failed = 1;
        return 0;
      }
      same++;
    }
    lua_settop(L, top);
  }
  ps_buf_free(&tmp);
  lua_pushinteger(L, added);
  lua_pushinteger(L, same);
  return 2;
}

/* ---- the transaction -------------------------------------------------------------------------- */

static int read_clock(lua_State *L, ps_txn *t)
{
  int isnum = 0;
  lua_Integer v;
  lua_getiuservalue(L, STORE, PS_UV_OPTS);
  lua_getfield(L, -1, "now");
  lua_remove(L, -2);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    if (!t->m->clock) {
      t->now = ps_wall_ms();
      return 0;
    }
    if (t->m->clock(t->e, L, ENG, &t->now, &t->err) != 0) {
      t->failed = 1;
      return -1;
    }
    return 0;
  }
  if (t->e->cont.have_now) { /* a transaction run again reads the clock it first read */
    lua_pop(L, 1);
    t->now = t->e->cont.now;
    return 0;
  }
  if (ps_call_user(L, 0, 1) != LUA_OK) {
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
  t->e->cont.now = t->now;
  t->e->cont.have_now = 1;
  return 0;
}

static int txn_body(lua_State *L)
{
  ps_txn *t = lua_touserdata(L, 1);
  int nres = 0, removed = 0;

  if (t->op == PS_OP_ANNOUNCE) {
    if (t->m->announce(t->e, L, ENG, lua_tostring(L, ARG(1)), &t->err) != 0) {
      t->failed = 1;
      return 0;
    }
    lua_pushboolean(L, 1);
    return 1; /* (a read: nothing to end on the server) */
  }
  if (read_clock(L, t) != 0) return 0;
  if (t->m->prune_due(t->e, L, ENG, t->now, &removed, &t->err) != 0) {
    t->failed = 1;
    return 0;
  }
  switch (t->op) {
  case PS_OP_LIST:
  case PS_OP_EXPORT:
    if (t->m->list(t->e, L, ENG, t->op == PS_OP_EXPORT ? PS_LIST_TEXT
                                 : lua_toboolean(L, ARG(1)) ? PS_LIST_ACTIVE : 0, &t->err) != 0)
      t->failed = 1;
    else nres = 1;
    break;
  case PS_OP_IMPORT: nres = act_import(L, t); break;
  case PS_OP_NOW:
    lua_pushinteger(L, (lua_Integer)t->now);
    nres = 1;
    break;
  case PS_OP_CREATE: nres = act_create(L, t); break;
  case PS_OP_PRUNE:
    lua_pushinteger(L, removed);
    nres = 1;
    break;
  default:        nres = act_on_sid(L, t); break;
  }
  if (t->failed) return 0;
  if (t->m->end(t->e, L, ENG, PS_END_COMMIT, &t->err) != 0) {
    if (ps_is_pending(&t->err)) { /* the commit's round trip is due: its results wait */
      t->commit_pending = 1;
      return nres;
    }
    t->ended = 1;
    t->failed = 1;
    return 0;
  }
  t->ended = 1;
  return nres;
}

static void deliver_events(lua_State *L, ps_txn *t, int self)
{
  const ps_event *ev;
  int i;
  if (!t->m->event(t->e, 0)) return;
  lua_getiuservalue(L, self, PS_UV_OPTS);
  lua_getfield(L, -1, "on_event");
  lua_remove(L, -2);
  for (i = 0; (ev = t->m->event(t->e, i)) != NULL && lua_isfunction(L, -1); i++) {
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
    if (ps_call_user(L, 2, 0) != LUA_OK) lua_pop(L, 1); /* a failing listener changes nothing */
  }
  lua_pop(L, 1);
  t->m->events_clear(t->e);
}

/* Whether this Lua state holds the store whose identity is at key; or marks it so. */
static int held_get(lua_State *L, int key)
{
  int held;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &held_key);
  lua_pushvalue(L, key);
  held = lua_rawget(L, -2) != LUA_TNIL;
  lua_pop(L, 2);
  return held;
}

static void held_set(lua_State *L, int key, int on)
{
  lua_rawgetp(L, LUA_REGISTRYINDEX, &held_key);
  lua_pushvalue(L, key);
  if (on) lua_pushboolean(L, 1);
  else lua_pushnil(L);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

void ps_txn_init(lua_State *L)
{
  lua_rawgetp(L, LUA_REGISTRYINDEX, &held_key);
  if (lua_isnil(L, -1)) {
    lua_newtable(L);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &held_key);
  }
  lua_pop(L, 1);
}

/* A cooperative wait: its deadline (set when its first attempt starts, lock_wait_ms on)
 * and how many times it slept. Taken from the store when a transaction starts, so that
 * nothing run meanwhile on the same store (an on_event callback, another request of an
 * nginx worker) changes it: the caller keeps it between attempts. */
typedef struct ps_wait {
  int coop;
  int64_t deadline;
  int tries;
} ps_wait;

/* A transaction found a lock held and, waiting cooperatively, did not wait for it: unless
 * the deadline has passed, which is the timeout the engine would have given, pushes nil,
 * message, "lock_busy", the ms to sleep before the next attempt (1, 2, 4, then
 * PS_COOP_SLICE_MS, never past the deadline), the deadline and the tries: the caller hands
 * the last two to the next attempt (c:wait_mode(CONTINUE, deadline, tries)). */
static int lock_busy(lua_State *L, ps_wait *w, ps_err *e)
{
  int64_t now = ps_mono_ms(), slice;
  if (now >= w->deadline) {
    e->code = "timeout";
    return ps_push_err(L, e);
  }
  slice = w->tries < 3 ? (int64_t)1 << w->tries : PS_COOP_SLICE_MS;
  w->tries++;
  if (slice > w->deadline - now) slice = w->deadline - now;
  ps_push_err(L, e);
  lua_pushinteger(L, (lua_Integer)slice);
  lua_pushinteger(L, (lua_Integer)w->deadline);
  lua_pushinteger(L, (lua_Integer)w->tries);
  return 6;
}

/* The failure of a transaction (nothing done): a busy lock of a cooperative wait is said as
 * such; anything else is returned as it is. */
static int txn_failed(lua_State *L, ps_wait *w, ps_err *e)
{
  int busy = e->code && !strcmp(e->code, "lock_busy");
  if (busy && w->coop) return lock_busy(L, w, e);
  if (busy) e->code = "timeout"; /* cannot be: only a cooperative wait asks for it */
  return ps_push_err(L, e);
}

/* nil, message, "io_pending": the transaction waits for a round trip (see ps_cont). */
static int push_pending(lua_State *L, ps_txn *t)
{
  return ps_push_err(L, &t->err);
}

/* The results of a transaction that stopped at its commit, kept until it is run again:
 * registry[saved_key][engine] = { results... }. */
static const char saved_key = 's';

static void saved_push(lua_State *L, ps_engine *e)
{
  lua_rawgetp(L, LUA_REGISTRYINDEX, &saved_key);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &saved_key);
  }
  lua_rawgetp(L, -1, e);
  lua_pushnil(L);
  lua_rawsetp(L, -3, e);
  lua_remove(L, -2);
}

static void saved_keep(lua_State *L, ps_engine *e, int from, int to)
{
  int i;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &saved_key);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &saved_key);
  }
  lua_createtable(L, to - from + 1, 0);
  for (i = from; i <= to; i++) {
    lua_pushvalue(L, i);
    lua_rawseti(L, -2, i - from + 1);
  }
  lua_rawsetp(L, -2, e);
  lua_pop(L, 1);
}

/* Runs again a transaction that stopped at its commit: only the commit (the operation's
 * work and its callbacks are done), then its saved results. */
static int resume_commit(lua_State *L, ps_txn *t, int eng, ps_wait *w)
{
  ps_cont *cont = &t->e->cont;
  int rc, i, n = cont->nres;
  cont->stage = PS_STAGE_NONE;
  rc = t->m->end(t->e, L, eng, PS_END_COMMIT, &t->err);
  if (rc != 0 && ps_is_pending(&t->err)) {
    cont->stage = PS_STAGE_COMMIT;
    return push_pending(L, t);
  }
  saved_push(L, t->e);
  deliver_events(L, t, 1);
  if (rc != 0) return txn_failed(L, w, &t->err);
  if (cont->outcome) {
    lua_pushnil(L);
    lua_pushstring(L, cont->outcome);
    lua_pushstring(L, cont->outcome);
    return 3;
  }
  luaL_checkstack(L, n + 1, "too many results");
  rc = lua_gettop(L);
  for (i = 1; i <= n; i++) lua_rawgeti(L, rc, i);
  return n;
}

int ps_txn_run(lua_State *L, ps_op op, int readonly)
{
  ps_store *s = luaL_checkudata(L, 1, PS_STORE_MT);
  int nargs = lua_gettop(L), i, status, base, eng, key;
  ps_txn t;
  ps_hint hint;
  ps_wait w;
  ps_cont *cont;

  if (!s->eng) return luaL_error(L, "pairstore: store is closed");
  memset(&t, 0, sizeof t);
  /* The engine: the one handed for this call (c:use_engine), else the store's. */
  if (lua_getiuservalue(L, 1, PS_UV_NEXT) == LUA_TNIL) {
    lua_pop(L, 1);
    lua_getiuservalue(L, 1, PS_UV_ENGINE);
  } else {
    lua_pushnil(L);
    lua_setiuservalue(L, 1, PS_UV_NEXT);
  }
  eng = lua_gettop(L);
  t.s = s;
  t.e = lua_touserdata(L, eng);
  t.m = t.e->m;
  t.op = op;
  t.readonly = readonly;
  cont = &t.e->cont;
  /* The wait mode is for this transaction only; one run again keeps the wait it began. */
  if (cont->stage == PS_STAGE_NONE) {
    memset(cont, 0, sizeof *cont);
    t.e->waited_us = 0;
    cont->coop = s->wait_mode != PS_WAIT_BLOCK;
    cont->deadline = s->wait_mode == PS_WAIT_CONTINUE ? s->wait_deadline : ps_mono_ms() + s->lock_wait_ms;
    cont->tries = s->wait_mode == PS_WAIT_CONTINUE ? s->wait_tries : 0;
  }
  s->wait_mode = PS_WAIT_BLOCK;
  w.coop = cont->coop;
  w.deadline = cont->deadline;
  w.tries = cont->tries;
  if (cont->stage == PS_STAGE_COMMIT) return resume_commit(L, &t, eng, &w);
  if (t.m->locate(t.e, L, eng, &t.err) != 0) {
    cont->stage = PS_STAGE_NONE;
    return ps_push_err(L, &t.err);
  }
  key = lua_gettop(L);
  if (held_get(L, key)) {
    cont->stage = PS_STAGE_NONE;
    ps_err_set(&t.err, "reentrant",
               "store call made while this process holds the lock on %s (from inside a mutator?)",
               t.m->display(t.e));
    return ps_push_err(L, &t.err);
  }
  /* What the transaction will ask the engine for first, and whether it may wait. */
  memset(&hint, 0, sizeof hint);
  hint.nowait = w.coop;
  hint.resume = cont->stage == PS_STAGE_BODY;
  switch (op) {
  case PS_OP_CREATE:
    if (!hint.resume) {
      if (lua_isstring(L, 5)) snprintf(cont->sid, sizeof cont->sid, "%s", lua_tostring(L, 5));
      else ps_random_hex(cont->sid, 16);
    }
    memcpy(t.sid, cont->sid, sizeof t.sid);
    hint.sid = t.sid;
    hint.count_live = s->max_sessions;
    break;
  case PS_OP_LIST:
    hint.list = 1;
    hint.list_flags = lua_toboolean(L, 2) ? PS_LIST_ACTIVE : 0;
    break;
  case PS_OP_EXPORT:
    hint.list = 1;
    hint.list_flags = PS_LIST_TEXT;
    break;
  case PS_OP_PRUNE: case PS_OP_IMPORT: case PS_OP_NOW: case PS_OP_ANNOUNCE: break;
  default: hint.sid = lua_tostring(L, 2); break;
  }
  cont->stage = PS_STAGE_NONE;
  if (op == PS_OP_ANNOUNCE && !t.m->announce) {
    lua_pushboolean(L, 1); /* nothing to say: the engine watches by itself */
    return 1;
  }
  if (t.m->begin(t.e, L, eng, readonly, &hint, &t.err) != 0) {
    deliver_events(L, &t, 1);
    return txn_failed(L, &w, &t.err);
  }
  held_set(L, key, 1);
  s->busy = 1;

  base = lua_gettop(L);
  lua_pushcfunction(L, txn_body);
  lua_pushlightuserdata(L, &t);
  lua_pushvalue(L, eng);
  for (i = 1; i <= nargs; i++) lua_pushvalue(L, i);
  status = lua_pcall(L, nargs + 2, LUA_MULTRET, 0);
  held_set(L, key, 0);
  s->busy = 0;

  if (status == LUA_OK && t.failed && ps_is_pending(&t.err)) {
    cont->stage = PS_STAGE_BODY; /* run again from the start, replaying what it did */
    lua_settop(L, base);
    return push_pending(L, &t);
  }
  if (status == LUA_OK && t.commit_pending) {
    cont->stage = PS_STAGE_COMMIT;
    cont->outcome = t.outcome;
    cont->nres = lua_gettop(L) - base;
    saved_keep(L, t.e, base + 1, lua_gettop(L));
    lua_settop(L, base);
    return push_pending(L, &t);
  }
  if (!t.ended) t.m->end(t.e, L, eng, PS_END_ROLLBACK, NULL); /* never fails */
  if (status != LUA_OK) return lua_error(L); /* out of memory or a bug: lock already released */
  if (t.yielded) /* nothing was stored: raised, as the programming error it is */
    return luaL_error(L, "pairstore: a mutator may not yield (ngx.sleep, ngx.exit, ngx.redirect, "
                      "a cosocket...): it runs while the lock is held; nothing was changed (%s)",
                      t.err.msg);
  deliver_events(L, &t, 1);
  if (t.failed) return txn_failed(L, &w, &t.err);
  if (t.outcome) {
    lua_settop(L, base);
    lua_pushnil(L);
    lua_pushstring(L, t.outcome);
    lua_pushstring(L, t.outcome);
    return 3;
  }
  return lua_gettop(L) - base;
}
