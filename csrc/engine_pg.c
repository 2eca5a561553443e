/*
 * engine_pg.c — the PostgreSQL engine: one row per session (the store's name and the sid as
 * key, the session's JSON text kept verbatim, the columns pruning and listing need), behind
 * the engine interface. A write transaction locks the rows it touches (SELECT ... FOR
 * UPDATE; a create also the store's own row, so that creates never pass max_sessions); a read
 * is one statement on one snapshot and never blocks writers. Pruning is set-based SQL run
 * when due. A COMMIT whose answer is lost is looked up afterwards by the transaction token
 * written with it. The bytes travel through a link (pg_link.c): on this thread, or, for a
 * deferred engine (an nginx worker's), on a worker thread while the request waits: then a
 * transaction stops where a round trip is due (code "io_pending") and runs again once it
 * is done, replaying the round trips it already made.
 */
#include "pg.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <sodium.h>

#define PS_PGENGINE_MT "pairstore.pg_engine"
/* lock_timeout (ms) of a write that waits cooperatively (ps_hint.nowait): a row lock held
 * longer gives up, and the caller sleeps instead of the server blocking this thread. */
#define PS_PG_NOWAIT_MS "1"


/* User values: cjson's decode; the transaction's sessions (sid -> table, the engine's own);
 * their texts as stored (sid -> string); the rows the store holds (sid -> txn token: the
 * row exists); sessions changed in memory since read (sid -> true); pending writes (sid ->
 * text to store, or false: delete); sids read (sid -> true); the sids a list read, in
 * order; until when someone waits for a change of a session read for update (sid -> ms). */
enum { UV_DECODE = 1, UV_ROWS, UV_TEXTS, UV_TOKENS, UV_DIRTY, UV_PENDING, UV_SEEN, UV_LISTED,
       UV_WAITED, UV_COUNT = UV_WAITED };

/* A round trip a deferred transaction made, with its outcome (the results are its own). */
typedef struct rt_entry {
  uint64_t hash;
  int n, rc, lost, cancel;
  int news;              /* what the link noted meanwhile (link_news) */
  char state[6];
  PGresult **res;
  ps_err err;
} rt_entry;

typedef struct pg_eng {
  ps_engine base;
  pg_link *k;            /* the connection and how to reach it */
  pg_link *lk;           /* where waits LISTEN (the listen_target option), or NULL: k */
  int64_t until;         /* the next transaction or watch ends by then (monotonic ms; 0: no bound) */
  int64_t armed;         /* until, as the call starting now took it (pe_locate) */
  int deferred;          /* round trips run elsewhere (a worker thread): see the file's head */
  size_t max_session_bytes;
  int watchers;
  /* the transaction */
  int in_txn, readonly, began, rt1;
  int lost;              /* the last round trip lost its answer */
  ps_hint hint;
  char hint_sid[33];
  lua_Integer count_limit;
  int64_t now;
  int have_now;
  int64_t next_prune;    /* INT64_MAX: nothing to prune */
  lua_Integer live;
  int have_live;
  char token[33];        /* written into every row this transaction changes */
  int removed;
  ps_event events[PS_MAX_EVENTS];
  int nevents;
  char invalid_first[200]; /* the first invalid row's sid and why, for a later count's message */
  unsigned reconnects_seen, moves_seen; /* the link's counts, as the last events told them */
  /* a deferred transaction: its round trips so far, the next one's index when it runs
   * again, and where its commit began */
  rt_entry *log;
  int nlog, caplog, seq, commit_seq, in_commit, commit_nevents;
} pg_eng;

#define PE(e) ((pg_eng *)(void *)(e))

/* ---- fault hook for the tests (test_hooks; the test build only) -------------------------------- */

#ifdef PS_TEST
/* The next n commits send COMMIT and then lose the connection before its answer. */
static int cut_commits;

void ps_pg_fault_cut_commits(int n)
{
  cut_commits = n;
}
#endif

/* ---- targets and messages --------------------------------------------------------------------- */




static void add_event(pg_eng *p, const char *name, const char *detail)
{
  ps_event *ev;
  if (p->nevents >= PS_MAX_EVENTS) return;
  ev = &p->events[p->nevents++];
  memset(ev, 0, sizeof *ev);
  snprintf(ev->name, sizeof ev->name, "%s", name);
  /* (our own text: a sid, what is wrong, a server's host and port) */
  snprintf(ev->detail, sizeof ev->detail, "%.*s", (int)sizeof ev->detail - 1, detail);
}

/* What the transport noted on the link since the engine last told it: a connection made
 * again after one broke (reconnected), one that reached another server than the connection
 * before it (failover). Taken inside a transaction only, whose events say it (outside one,
 * the next transaction's first round trip takes it). */
#define NEWS_RECONNECTED 1
#define NEWS_FAILOVER 2

static int link_news(pg_eng *p)
{
  pg_link *k = p->k;
  int news = 0;
  if (!p->in_txn) return 0;
  if (k->reconnects != p->reconnects_seen) news |= NEWS_RECONNECTED;
  if (k->moves != p->moves_seen) news |= NEWS_FAILOVER;
  p->reconnects_seen = k->reconnects;
  p->moves_seen = k->moves;
  return news;
}

static void add_news(pg_eng *p, int news)
{
  char d[640];
  if (news & NEWS_RECONNECTED) {
    snprintf(d, sizeof d, "a PostgreSQL connection broke (lost, no answer in time, or a server "
             "that would not take writes) and was made again, to %s", p->k->server);
    add_event(p, "reconnected", d);
  }
  if (news & NEWS_FAILOVER) {
    snprintf(d, sizeof d, "a new PostgreSQL connection reached another server: %s (before: %s)",
             p->k->server, p->k->server_before);
    add_event(p, "failover", d);
  }
}

/* A row whose text is not a valid session: one invalid_dropped event per transaction, its
 * count the rows found (info.count, as the file engine's counts the entries it dropped). */
static void add_invalid(pg_eng *p, const char *sid, const char *why)
{
  char detail[320];
  int i;
  for (i = 0; i < p->nevents; i++) {
    ps_event *ev = &p->events[i];
    if (strcmp(ev->name, "invalid_dropped") != 0) continue;
    ev->count++;
    snprintf(ev->detail, sizeof ev->detail, "%ld sessions in the database are not valid sessions: left as "
             "they are, read as absent (the first: %s)", ev->count, p->invalid_first);
    return;
  }
  snprintf(p->invalid_first, sizeof p->invalid_first, "session %.32s, %s", sid, why);
  snprintf(detail, sizeof detail, "session %.32s in the database is not a valid session (%s): "
           "left as it is, read as absent", sid, why);
  add_event(p, "invalid_dropped", detail);
  if (p->nevents > 0 && !strcmp(p->events[p->nevents - 1].name, "invalid_dropped"))
    p->events[p->nevents - 1].count = 1;
}

/* ---- round trips ---------------------------------------------------------------------------------- */

/* Waiting cooperatively (ps_hint.nowait), a row lock held by another transaction gives up
 * at once (55P03); so does the 1 ms lock_timeout that expires as the lock is granted (the
 * holder committing), reported as 57014 "canceling statement due to user request". Nothing
 * was done: the caller sleeps and runs the transaction again. */
static void lock_busy_code(pg_eng *p, const char *state, int cancel, ps_err *err)
{
  if (!p->in_txn || !p->hint.nowait || !err->code || strcmp(err->code, "timeout") != 0) return;
  if (!strcmp(state, "55P03") || (!strcmp(state, "57014") && cancel)) err->code = "lock_busy";
}

/* Runs a round trip (the statements as one pipeline; see pg_roundtrip). A deferred engine
 * takes the outcome of a round trip it made before when the transaction runs again, or the
 * one a worker thread just ran for it; otherwise it hands the round trip over and fails
 * with code "io_pending". The results belong to the engine until rt_clear. retry: nothing
 * was done yet, so that a broken connection found first may be opened again once. */
static int rt(pg_eng *p, const pgq *qs, int n, PGresult **res, int64_t budget, int retry,
              ps_err *err)
{
  pg_link *k = p->k;
  rt_entry *x;
  uint64_t h;
  int i;
  if (!p->deferred) {
    int rc = pg_exchange(k, qs, n, res, budget, 0, retry, err);
    add_news(p, link_news(p));
    p->lost = k->lost;
    if (rc != 0) lock_busy_code(p, k->state, k->cancel, err);
    return rc;
  }
  h = pg_hash(qs, n);
  if (p->seq == p->nlog) {
    if (!k->done || !k->res || k->pend_hash != h || k->pend_n != n) {
      if (pg_link_hand_over(k, qs, n, budget, retry, h) != 0) {
        ps_err_set(err, "unavailable", "PostgreSQL %s: out of memory", k->display);
        return -1;
      }
      ps_err_set(err, "io_pending", "PostgreSQL %s: a round trip is due", k->display);
      return -1;
    }
    if (p->nlog == p->caplog) {
      int cap = p->caplog ? 2 * p->caplog : 4;
      rt_entry *nl = realloc(p->log, (size_t)cap * sizeof *nl);
      if (!nl) {
        ps_err_set(err, "unavailable", "PostgreSQL %s: out of memory", k->display);
        return -1;
      }
      p->log = nl;
      p->caplog = cap;
    }
    x = &p->log[p->nlog++];
    x->hash = h;
    x->n = n;
    x->news = link_news(p);
    x->rc = k->rc;
    x->lost = k->lost;
    x->cancel = k->cancel;
    memcpy(x->state, k->state, sizeof x->state);
    x->res = k->res;
    x->err = k->err;
    k->res = NULL;
    k->done = 0;
  }
  x = &p->log[p->seq++];
  if (x->hash != h || x->n != n) {
    ps_err_set(err, "busy", "PostgreSQL %s: the transaction did not run again as it first "
               "ran; nothing was done (run it again)", k->display);
    return -1;
  }
  for (i = 0; i < n; i++) res[i] = x->res[i];
  add_news(p, x->news); /* (again each time the transaction runs again: its events start over) */
  p->lost = x->lost;
  if (x->rc != 0) {
    *err = x->err;
    lock_busy_code(p, x->state, x->cancel, err);
  }
  return x->rc;
}

/* The results of rt are done with (a deferred engine keeps them until the transaction ends). */
static void rt_clear(pg_eng *p, PGresult **res, int n)
{
  int i;
  for (i = 0; i < n; i++) {
    if (!p->deferred) PQclear(res[i]);
    res[i] = NULL;
  }
}

static void free_log(pg_eng *p)
{
  int i, j;
  for (i = 0; i < p->nlog; i++) {
    for (j = 0; j < p->log[i].n; j++) PQclear(p->log[i].res[j]);
    free(p->log[i].res);
  }
  p->nlog = p->seq = p->commit_seq = p->in_commit = 0;
}

/* The transaction's own settings, first in a pipeline: they end with it (a read's implicit
 * transaction) or with the transaction it begins, so nothing is left on a connection that
 * a pooler may hand to someone else. */
typedef struct settings_buf {
  char stmt_ms[24], lock_ms[24];
} settings_buf;

static void add_settings(pg_eng *p, pgq *q, int *n, int write, settings_buf *b)
{
  snprintf(b->stmt_ms, sizeof b->stmt_ms, "%d", p->k->stmt_ms);
  snprintf(b->lock_ms, sizeof b->lock_ms, "%d", p->k->lock_wait_ms);
  q[*n].q = Q_SQL;
  q[*n].v[0] = b->stmt_ms;
  if (!write) {
    q[*n].sql = "SELECT set_config('statement_timeout', $1, true)";
  } else {
    q[*n].v[1] = p->hint.nowait && p->in_txn ? PS_PG_NOWAIT_MS : b->lock_ms;
    q[*n].sql = p->k->durable
      ? "SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $2, true)"
      : "SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $2, true), "
        "set_config('synchronous_commit', 'off', true)";
  }
  (*n)++;
}
/* ---- rows into sessions ------------------------------------------------------------------------- */

/* Pushes the transaction's table uv, made on first use (a transaction makes only the tables
 * it uses: a get needs four of them). */
static void push_uv(lua_State *L, int eng, int uv)
{
  if (lua_getiuservalue(L, eng, uv) == LUA_TTABLE) return;
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushvalue(L, -1);
  lua_setiuservalue(L, eng < 0 ? eng - 2 : eng, uv);
}

/* Pushes uv[key]. */
static void uv_get(lua_State *L, int eng, int uv, const char *key)
{
  push_uv(L, eng, uv);
  lua_getfield(L, -1, key);
  lua_remove(L, -2);
}

/* uv[key] = the value on top (popped). */
static void uv_set(lua_State *L, int eng, int uv, const char *key)
{
  push_uv(L, eng, uv);
  lua_insert(L, -2);
  lua_setfield(L, -2, key);
  lua_pop(L, 1);
}

/* Records a row the store holds (sid, body, live, txn of column 0.., of row i of r, starting
 * at column c0) as the transaction's session for sid, or that there is none (body NULL). */
static void take_row(lua_State *L, pg_eng *p, int eng, const char *sid, PGresult *r, int i, int c0)
{
  const char *body, *why;
  int live;
  ps_buf tmp = { 0 };

  lua_pushboolean(L, 1);
  uv_set(L, eng, UV_SEEN, sid);
  if (PQntuples(r) <= i || PQgetisnull(r, i, c0)) return;
  body = PQgetvalue(r, i, c0);
  live = PQgetvalue(r, i, c0 + 1)[0] == 't';
  lua_pushstring(L, PQgetvalue(r, i, c0 + 2));
  uv_set(L, eng, UV_TOKENS, sid);
  if (PQnfields(r) > c0 + 3) { /* a fetch for update */
    lua_pushinteger(L, (lua_Integer)strtoll(PQgetvalue(r, i, c0 + 3), NULL, 10));
    uv_set(L, eng, UV_WAITED, sid);
  }
  lua_pushlstring(L, body, (size_t)PQgetlength(r, i, c0));
  uv_set(L, eng, UV_TEXTS, sid);
  lua_getiuservalue(L, eng, UV_DECODE);
  why = ps_record_decode(L, -1, body, (size_t)PQgetlength(r, i, c0), &tmp);
  ps_buf_free(&tmp);
  if (!why) { /* a text that names another session (a hand edit, a wrong restore) is not sid's */
    size_t n;
    const char *own = ps_get_str(L, -1, "sid", &n);
    if (!own || strlen(sid) != n || memcmp(own, sid, n) != 0) {
      lua_pop(L, 1);
      why = "its text names another sid";
    }
  }
  if (why) {
    lua_pop(L, 1);
    add_invalid(p, sid, why);
    return;
  }
  lua_remove(L, -2);
  if (!live && ps_is_live(L, -1)) {
    /* Pruning marked it expired without rewriting its text: the expiry, as the rule makes it. */
    ps_rule_prune(L, -1, INT64_MAX);
    lua_pushboolean(L, 1);
    uv_set(L, eng, UV_DIRTY, sid);
  }
  uv_set(L, eng, UV_ROWS, sid);
}

/* Pushes the transaction's session for sid, pruned at now (nil when there is none or it
 * is past its retention). */
static void push_pruned(lua_State *L, pg_eng *p, int eng, const char *sid)
{
  int r;
  uv_get(L, eng, UV_ROWS, sid);
  if (lua_isnil(L, -1)) return;
  r = ps_rule_prune(L, -1, p->now);
  if (r & PS_PRUNE_EXPIRED) {
    lua_pushboolean(L, 1);
    uv_set(L, eng, UV_DIRTY, sid);
  }
  if (r & PS_PRUNE_DROP) {
    lua_pop(L, 1);
    lua_pushnil(L);
  }
}

/* ---- the transaction ---------------------------------------------------------------------------- */

/* Forgets what the transaction read and decided (its round trips are kept: free_log). */
static void reset_rows(lua_State *L, pg_eng *p, int eng)
{
  int i;
  for (i = UV_ROWS; i <= UV_WAITED; i++) { /* nothing of it kept past the transaction */
    lua_pushnil(L);
    lua_setiuservalue(L, eng, i);
  }
  p->in_txn = p->began = p->rt1 = p->have_now = p->have_live = p->removed = 0;
  p->next_prune = INT64_MAX;
}

static void finish(lua_State *L, pg_eng *p, int eng)
{
  reset_rows(L, p, eng);
  free_log(p);
  p->k->bound = 0;
}

static const char *pe_display(ps_engine *e)
{
  return PE(e)->k->display;
}

static int pe_locate(ps_engine *e, lua_State *L, int eng, ps_err *err)
{
  (void)eng;
  (void)err;
  /* every transaction starts here: the caller's deadline is this call's, or none (one that
   * fails before it begins, as reentrant, leaves none behind for a later one) */
  PE(e)->armed = PE(e)->until;
  PE(e)->until = 0;
  /* the same database may be named in many ways: the target and store name identify it
   * well enough for the reentrancy check (a mutator using another spelling of the target
   * waits for the row lock, bounded by lock_wait_ms, instead of failing fast) */
  lua_pushfstring(L, "pg\n%s\n%s", PE(e)->k->conninfo, PE(e)->k->store);
  return 0;
}

static int pe_begin(ps_engine *e, lua_State *L, int eng, int readonly, const ps_hint *hint,
                    ps_err *err)
{
  pg_eng *p = PE(e);
  (void)err;
  p->nevents = 0; /* (a transaction that runs again makes its events again) */
  if (hint->resume) {
    reset_rows(L, p, eng);
    p->seq = 0;
  } else {
    finish(L, p, eng);
    if (!readonly) ps_random_hex(p->token, 16);
    p->k->bound = p->deferred ? 0 : p->armed; /* for this transaction only */
    p->armed = 0;
  }
  p->in_txn = 1;
  p->readonly = readonly;
  p->hint = *hint;
  p->hint_sid[0] = '\0';
  if (hint->sid) snprintf(p->hint_sid, sizeof p->hint_sid, "%s", hint->sid);
  p->hint.sid = hint->sid ? p->hint_sid : NULL;
  p->count_limit = hint->count_live;
  return 0;
}

/* Reads the rows of the first round trip's answers (see first_roundtrip). */
static void take_first(lua_State *L, pg_eng *p, int eng, int now_known, PGresult **res,
                       int i_read, int i_clock, int i_count, int i_fetch)
{
  if (i_read >= 0) {
    PGresult *r = res[i_read];
    int i, rows = PQntuples(r);
    if (!now_known) /* no row: nothing to prune, any clock will do */
      p->now = rows > 0 && !PQgetisnull(r, 0, 0) ? (int64_t)strtoll(PQgetvalue(r, 0, 0), NULL, 10)
                                                 : ps_wall_ms();
    if (p->hint.sid) {
      take_row(L, p, eng, p->hint.sid, r, 0, 1);
    } else {
      lua_createtable(L, rows, 0); /* the sids listed, in the rows' order */
      for (i = 0; i < rows; i++) {
        const char *sid;
        if (PQgetisnull(r, i, 1)) continue;
        sid = PQgetvalue(r, i, 4);
        take_row(L, p, eng, sid, r, i, 1);
        lua_pushstring(L, sid);
        lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
      }
      lua_setiuservalue(L, eng, UV_LISTED);
    }
  }
  if (i_clock >= 0) {
    PGresult *r = res[i_clock];
    if (!now_known) p->now = (int64_t)strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    p->next_prune = PQgetisnull(r, 0, 1) ? INT64_MAX : (int64_t)strtoll(PQgetvalue(r, 0, 1), NULL, 10);
  }
  if (i_count >= 0) {
    p->live = (lua_Integer)strtoll(PQgetvalue(res[i_count], 0, 0), NULL, 10);
    p->have_live = 1;
  }
  if (i_fetch >= 0) take_row(L, p, eng, p->hint.sid, res[i_fetch], 0, 0);
  p->have_now = 1;
}

/* Adds how long a row lock (Q_LOCK_STORE's or Q_FETCH's, its column col) was waited for,
 * as the server measured it, to what the transaction waited: a wait of a millisecond or
 * less is not one (a cooperative wait's 1 ms lock_timeout lets as much pass). Only a
 * blocking wait is counted here: a cooperative one waits outside, and is timed there. */
static void add_lock_wait(pg_eng *p, PGresult *r, int col)
{
  int64_t us;
  if (p->hint.nowait || PQntuples(r) < 1 || PQnfields(r) <= col || PQgetisnull(r, 0, col)) return;
  us = (int64_t)strtoll(PQgetvalue(r, 0, col), NULL, 10);
  if (us > 1000) p->base.waited_us += us;
}

/* The first round trip: what the hint says the transaction needs first, and its clock.
 * A read is one statement; a write begins the transaction and locks what it will change.
 * now_known: the caller's clock gave p->now. A connection found broken before anything was
 * done in it is opened again once (the server restarted, or failed over, meanwhile). */
static int first_roundtrip(lua_State *L, pg_eng *p, int eng, int now_known, ps_err *err)
{
  pgq q[8];
  PGresult *res[8] = { 0 };
  char now_s[24], limit_s[24];
  settings_buf sb;
  int n = 0, i_clock = -1, i_count = -1, i_fetch = -1, i_read = -1, i_lock = -1;
  int64_t budget = p->k->stmt_ms;

  if (p->rt1) return 0;
  memset(q, 0, sizeof q);
  snprintf(now_s, sizeof now_s, "%lld", (long long)p->now);
  snprintf(limit_s, sizeof limit_s, "%lld", (long long)p->count_limit);
  if (!p->readonly) {
    q[n].q = Q_SQL;
    q[n++].sql = "BEGIN";
  }
  add_settings(p, q, &n, !p->readonly, &sb);
  if (p->readonly && (p->hint.sid || p->hint.list)) {
    i_read = n;
    q[n].q = p->hint.sid ? Q_GET : Q_LIST;
    q[n].v[0] = p->k->store;
    q[n++].v[1] = p->hint.sid ? p->hint.sid : (p->hint.list_flags & PS_LIST_ACTIVE) ? "t" : "f";
  } else {
    i_clock = n;
    q[n].q = Q_CLOCK;
    q[n++].v[0] = p->k->store;
    if (p->hint.count_live && !p->readonly) {
      i_lock = n;
      q[n].q = Q_LOCK_STORE;
      q[n++].v[0] = p->k->store;
      i_count = n;
      q[n].q = Q_COUNT;
      q[n].v[0] = p->k->store;
      q[n].v[1] = now_known ? now_s : NULL;
      q[n++].v[2] = limit_s;
      if (!p->hint.nowait) budget += p->k->lock_wait_ms; /* (a cooperative wait waits outside) */
    }
    if (p->hint.sid && !p->readonly) {
      i_fetch = n;
      q[n].q = Q_FETCH;
      q[n].v[0] = p->k->store;
      q[n++].v[1] = p->hint.sid;
      if (!p->hint.nowait) budget += p->k->lock_wait_ms;
    }
    if (p->hint.nowait && !p->readonly) {
      /* the row locks are taken: what the rest of the transaction may wait for (the notify
       * queue's lock at COMMIT, an index entry another transaction inserts) is waited for
       * in the server again, as without the cooperative wait */
      q[n].q = Q_SQL;
      q[n].sql = "SELECT set_config('lock_timeout', $1, true)";
      q[n++].v[0] = sb.lock_ms;
    }
  }
  p->began = !p->readonly; /* from now on the server may be inside the transaction */
  if (rt(p, q, n, res, budget, 1, err) != 0) {
    rt_clear(p, res, n);
    return -1;
  }
  p->rt1 = 1;
  take_first(L, p, eng, now_known, res, i_read, i_clock, i_count, i_fetch);
  if (i_lock >= 0) add_lock_wait(p, res[i_lock], 0);
  if (i_fetch >= 0) add_lock_wait(p, res[i_fetch], 4);
  rt_clear(p, res, n);
  return 0;
}

static int pe_clock(ps_engine *e, lua_State *L, int eng, int64_t *now, ps_err *err)
{
  pg_eng *p = PE(e);
  if (first_roundtrip(L, p, eng, 0, err) != 0) return -1;
  *now = p->now;
  return 0;
}

static int pe_prune_due(ps_engine *e, lua_State *L, int eng, int64_t now, int *removed,
                        ps_err *err)
{
  pg_eng *p = PE(e);
  char now_s[24], ret_s[24];
  pgq q[2];
  PGresult *res[2] = { 0 };
  *removed = 0;
  if (!p->rt1) {
    p->now = now;
    if (first_roundtrip(L, p, eng, 1, err) != 0) return -1;
  }
  p->now = now;
  /* A read prunes only what it returns (in memory); a write prunes the store when due. */
  if (p->readonly || p->next_prune == INT64_MAX || now <= p->next_prune) return 0;
  memset(q, 0, sizeof q);
  snprintf(now_s, sizeof now_s, "%lld", (long long)now);
  snprintf(ret_s, sizeof ret_s, "%lld", (long long)PS_TERMINAL_RETENTION_MS);
  q[0].q = Q_EXPIRE;
  q[0].v[0] = p->k->store;
  q[0].v[1] = now_s;
  q[0].v[2] = ret_s;
  q[1].q = Q_DROP;
  q[1].v[0] = p->k->store;
  q[1].v[1] = now_s;
  if (rt(p, q, 2, res, p->k->stmt_ms, 0, err) != 0) {
    rt_clear(p, res, 2);
    return -1;
  }
  p->removed = *removed = atoi(PQcmdTuples(res[1]));
  rt_clear(p, res, 2);
  return 0;
}

static int pe_fetch(ps_engine *e, lua_State *L, int eng, const char *sid, ps_err *err)
{
  pg_eng *p = PE(e);
  pgq q[2];
  PGresult *r[2] = { NULL, NULL };
  settings_buf sb;
  int n = 0;

  if (!p->rt1 && first_roundtrip(L, p, eng, p->have_now, err) != 0) return -1;
  uv_get(L, eng, UV_SEEN, sid);
  if (lua_isnil(L, -1)) { /* not read yet in this transaction */
    memset(q, 0, sizeof q);
    if (p->readonly) add_settings(p, q, &n, 0, &sb);
    q[n].q = p->readonly ? Q_GET : Q_FETCH;
    q[n].v[0] = p->k->store;
    q[n++].v[1] = sid;
    if (rt(p, q, n, r, p->k->stmt_ms + (p->readonly ? 0 : p->k->lock_wait_ms), 0, err) != 0) {
      lua_pop(L, 1);
      rt_clear(p, r, n);
      return -1;
    }
    take_row(L, p, eng, sid, r[n - 1], 0, p->readonly ? 1 : 0);
    if (!p->readonly) add_lock_wait(p, r[n - 1], 4);
    rt_clear(p, r, n);
  }
  lua_pop(L, 1);
  push_pruned(L, p, eng, sid);
  return 0;
}

static int pe_put(ps_engine *e, lua_State *L, int eng, int sess, int text, int flags,
                  ps_err *err)
{
  pg_eng *p = PE(e);
  size_t len, baselen = 0;
  const char *sid, *base;
  char key[64];
  int top = lua_gettop(L), rc;
  ps_buf b = { 0 };

  sess = lua_absindex(L, sess);
  if (text) text = lua_absindex(L, text);
  sid = ps_get_str(L, sess, "sid", &len);
  snprintf(key, sizeof key, "%s", sid);
  if (text) {
    lua_pushvalue(L, text);
  } else {
    lua_getiuservalue(L, eng, UV_DECODE);
    uv_get(L, eng, UV_TEXTS, key);
    base = lua_tolstring(L, -1, &baselen);
    if (!(flags & PS_PUT_IF_CHANGED)) { /* a rule's change: written from the text read */
      rc = ps_record_text(L, top + 1, sess, base, baselen, 0, 0, &b, err);
    } else {
      int dirty;
      uv_get(L, eng, UV_DIRTY, key);
      dirty = lua_toboolean(L, -1);
      lua_pop(L, 1);
      rc = ps_record_text(L, top + 1, sess, base, baselen, flags, p->max_session_bytes, &b, err);
      if (rc == 0 && dirty) rc = 1; /* the same as the text read, but not as what it shows */
    }
    if (rc > 0) lua_pushlstring(L, b.p, b.len);
    ps_buf_free(&b);
    if (rc <= 0) {
      lua_settop(L, top);
      return rc;
    }
  }
  uv_set(L, eng, UV_PENDING, key);
  lua_pushvalue(L, sess);
  uv_set(L, eng, UV_ROWS, key);
  lua_settop(L, top);
  return 1;
}

static int pe_remove(ps_engine *e, lua_State *L, int eng, const char *sid, ps_err *err)
{
  (void)e;
  (void)err;
  lua_pushboolean(L, 0);
  uv_set(L, eng, UV_PENDING, sid);
  lua_pushnil(L);
  uv_set(L, eng, UV_ROWS, sid);
  return 0;
}

static int pe_count_live(ps_engine *e, lua_State *L, int eng, lua_Integer limit, lua_Integer *n,
                         ps_err *err)
{
  pg_eng *p = PE(e);
  if (!p->have_live) { /* not asked in the first round trip: ask now */
    pgq q;
    PGresult *r = NULL;
    char now_s[24], limit_s[24];
    if (!p->rt1 && first_roundtrip(L, p, eng, p->have_now, err) != 0) return -1;
    memset(&q, 0, sizeof q);
    snprintf(now_s, sizeof now_s, "%lld", (long long)p->now);
    snprintf(limit_s, sizeof limit_s, "%lld", (long long)limit);
    q.q = Q_COUNT;
    q.v[0] = p->k->store;
    q.v[1] = now_s;
    q.v[2] = limit_s;
    if (rt(p, &q, 1, &r, p->k->stmt_ms, 0, err) != 0) {
      rt_clear(p, &r, 1);
      return -1;
    }
    p->live = (lua_Integer)strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    p->have_live = 1;
    rt_clear(p, &r, 1);
  }
  *n = p->live;
  return 0;
}

/* Pushes the text stored for the transaction's session sid as it stands now (its session
 * at sess): the text read, unless the session changed since (then written from it). */
static int push_text(lua_State *L, pg_eng *p, int eng, const char *sid, int sess, ps_err *err)
{
  int dirty, top = lua_gettop(L);
  size_t baselen = 0;
  const char *base;
  ps_buf b = { 0 };
  (void)p;
  uv_get(L, eng, UV_PENDING, sid);
  if (lua_type(L, -1) == LUA_TSTRING) return 0;
  lua_pop(L, 1);
  uv_get(L, eng, UV_DIRTY, sid);
  dirty = lua_toboolean(L, -1);
  lua_pop(L, 1);
  uv_get(L, eng, UV_TEXTS, sid);
  if (!dirty && lua_type(L, -1) == LUA_TSTRING) return 0;
  base = lua_tolstring(L, -1, &baselen);
  lua_getiuservalue(L, eng, UV_DECODE);
  if (ps_record_text(L, top + 2, sess, base, baselen, 0, 0, &b, err) < 0) {
    ps_buf_free(&b);
    lua_settop(L, top);
    return -1;
  }
  lua_pushlstring(L, b.p, b.len);
  ps_buf_free(&b);
  lua_replace(L, top + 1);
  lua_settop(L, top + 1);
  return 0;
}

static int pe_text(ps_engine *e, lua_State *L, int eng, int sess, ps_err *err)
{
  size_t len;
  char sid[64];
  sess = lua_absindex(L, sess);
  snprintf(sid, sizeof sid, "%s", ps_get_str(L, sess, "sid", &len));
  return push_text(L, PE(e), eng, sid, sess, err);
}

/* list's text of a session: push_text for its sid. */
typedef struct text_ctx {
  pg_eng *p;
  int eng;
} text_ctx;

static int list_text(void *ctx, lua_State *L, int sess, ps_err *err)
{
  text_ctx *c = ctx;
  size_t len;
  char sid[64];
  snprintf(sid, sizeof sid, "%s", ps_get_str(L, sess, "sid", &len));
  return push_text(L, c->p, c->eng, sid, sess, err);
}

static int pe_list(ps_engine *e, lua_State *L, int eng, int flags, ps_err *err)
{
  pg_eng *p = PE(e);
  text_ctx c = { p, eng };
  lua_Integer i, n;
  int sids, arr;

  if (!p->rt1 && first_roundtrip(L, p, eng, p->have_now, err) != 0) return -1;
  push_uv(L, eng, UV_LISTED); /* the sids the list read, in its order */
  sids = lua_gettop(L);
  n = (lua_Integer)lua_rawlen(L, sids);
  lua_createtable(L, (int)n, 0); /* the sessions kept after pruning */
  arr = lua_gettop(L);
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, sids, i);
    push_pruned(L, p, eng, lua_tostring(L, -1));
    lua_remove(L, -2);
    if (lua_isnil(L, -1)) lua_pop(L, 1);
    else lua_rawseti(L, arr, (lua_Integer)lua_rawlen(L, arr) + 1);
  }
  if (ps_list_push(L, arr, flags, list_text, &c, err) != 0) {
    lua_settop(L, sids - 1);
    return -1;
  }
  lua_replace(L, sids);
  lua_settop(L, sids);
  return 0;
}

/* The numbers of a session's columns, as text. */
typedef struct cols {
  char created[32], changed[32], expires[32], prune[24];
} cols;

static void num_text(lua_State *L, int sess, const char *key, char *out, size_t n)
{
  lua_getfield(L, sess, key);
  if (lua_isinteger(L, -1)) snprintf(out, n, "%lld", (long long)lua_tointeger(L, -1));
  else snprintf(out, n, "%.17g", lua_type(L, -1) == LUA_TNUMBER ? (double)lua_tonumber(L, -1) : 0.0);
  lua_pop(L, 1);
}

/* After a COMMIT whose answer was lost: whether it happened, from the row of sid (what it
 * should hold now: our token, or, for a removal, nothing) on a new connection. 1 committed,
 * 0 not, -1 cannot tell, -2 the lookup is due (io_pending: pending set). */
static int look_up_outcome(pg_eng *p, const char *sid, int removal, const char *old_token,
                           ps_err *pending)
{
  pgq q[2];
  PGresult *r[2] = { NULL, NULL };
  settings_buf sb;
  ps_err e2;
  int verdict = -1, n = 0;
  memset(q, 0, sizeof q);
  memset(&e2, 0, sizeof e2);
  add_settings(p, q, &n, 0, &sb);
  q[n].q = Q_OUTCOME;
  q[n].v[0] = p->k->store;
  q[n++].v[1] = sid;
  if (rt(p, q, n, r, p->k->stmt_ms, 0, &e2) == 0) {
    PGresult *x = r[n - 1];
    if (PQntuples(x) == 0) verdict = removal ? 1 : old_token ? -1 : 0;
    else if (!strcmp(PQgetvalue(x, 0, 0), p->token)) verdict = 1;
    else if (old_token && !strcmp(PQgetvalue(x, 0, 0), old_token)) verdict = 0;
  } else if (ps_is_pending(&e2)) {
    *pending = e2;
    verdict = -2;
  }
  rt_clear(p, r, n);
  return verdict;
}

/* Ends a write transaction without its changes: ROLLBACK on the server, or the connection
 * closed where that cannot be done here (the server rolls back as it goes). */
static int end_rollback(lua_State *L, pg_eng *p, int eng)
{
  pg_link *k = p->k;
  if (k->conn && !pg_link_idle(k)) {
    if (p->deferred) {
      pg_link_drop(k); /* (a round trip would have to wait for a worker thread) */
    } else {
      pgq q = { Q_SQL, "ROLLBACK", { 0 } };
      PGresult *r = NULL;
      ps_err e2;
      if (pg_roundtrip(k, &q, 1, &r, k->stmt_ms, 1, &e2) != 0) pg_link_break(k);
      PQclear(r);
    }
  }
  finish(L, p, eng);
  return 0;
}

/* The statements of the commit: each pending write (insert, update or delete), a
 * notification for each session someone waits on, COMMIT. Fills key (the first write's sid,
 * its old token, whether it is a removal) for a lost answer's lookup. n statements; -1 out
 * of memory. q, cs: room for 2 * pending + 1 and pending. */
typedef struct commit_key {
  char sid[64];
  const char *old;
  int removal;
} commit_key;

static int commit_statements(lua_State *L, pg_eng *p, int eng, int pend, pgq *q, cols *cs,
                             commit_key *key)
{
  static const char live_s[2][2] = { "t", "f" };
  int n = 0, i = 0;
  push_uv(L, eng, UV_ROWS);    /* pend + 1 */
  push_uv(L, eng, UV_TOKENS);  /* pend + 2 */
  lua_newtable(L);             /* pend + 3: notifications' payloads, kept alive until sent */
  push_uv(L, eng, UV_WAITED);  /* pend + 4 */
  lua_pushnil(L);
  while (lua_next(L, pend) != 0) {
    const char *sid = lua_tostring(L, -2);
    int is_new;
    lua_getfield(L, pend + 2, sid);
    is_new = lua_isnil(L, -1);
    if (!key->sid[0]) {
      snprintf(key->sid, sizeof key->sid, "%s", sid);
      key->old = lua_tostring(L, -1); /* kept alive by UV_TOKENS */
      key->removal = lua_type(L, -2) == LUA_TBOOLEAN;
    }
    lua_pop(L, 1);
    if (lua_type(L, -1) == LUA_TBOOLEAN) { /* remove */
      q[n].q = Q_DELETE;
      q[n].v[0] = p->k->store;
      q[n++].v[1] = sid;
    } else {
      int sess;
      size_t len;
      lua_getfield(L, pend + 1, sid);
      sess = lua_gettop(L);
      num_text(L, sess, "createdAtMs", cs[i].created, sizeof cs[i].created);
      num_text(L, sess, "lastStatusChangeAtMs", cs[i].changed, sizeof cs[i].changed);
      num_text(L, sess, "expiresAtMs", cs[i].expires, sizeof cs[i].expires);
      snprintf(cs[i].prune, sizeof cs[i].prune, "%lld", (long long)ps_next_prune(L, sess));
      q[n].q = is_new ? Q_INSERT : Q_UPDATE;
      q[n].v[0] = p->k->store;
      q[n].v[1] = sid;
      q[n].v[2] = ps_get_str(L, sess, "status", &len);
      q[n].v[3] = live_s[!ps_is_live(L, sess)];
      q[n].v[4] = cs[i].created;
      q[n].v[5] = cs[i].changed;
      q[n].v[6] = cs[i].expires;
      q[n].v[7] = cs[i].prune;
      q[n].v[8] = p->token;
      q[n++].v[9] = lua_tostring(L, -2);
      lua_pop(L, 1); /* the session stays in UV_ROWS: its strings stay alive */
      i++;
    }
    lua_getfield(L, pend + 4, sid);
    if (lua_tointeger(L, -1) >= p->now) { /* awaited */
      lua_pushfstring(L, "%s%s", sid, p->k->store);
      q[n].q = Q_NOTIFY;
      q[n++].v[0] = lua_tostring(L, -1);
      lua_rawseti(L, pend + 3, (lua_Integer)lua_rawlen(L, pend + 3) + 1);
    }
    lua_pop(L, 2);
  }
  q[n].q = Q_SQL;
  q[n++].sql = "COMMIT";
  return n;
}

/* Test hook: the whole commit sent, then the connection lost before its answer. */
static void cut_commit(pg_eng *p, const pgq *q, int n)
{
  int j;
  PGconn *c = p->k->conn;
  if (c && PQpipelineStatus(c) == PQ_PIPELINE_OFF) PQenterPipelineMode(c);
  for (j = 0; j < n && c; j++) {
    const pgq *x = &q[j];
    if (x->q < Q_NSTMT)
      PQsendQueryParams(c, pg_stmt_sql[x->q], pg_stmt_nparams[x->q], NULL, x->v, NULL, NULL, 0);
    else
      PQsendQueryParams(c, x->sql, 0, NULL, NULL, NULL, NULL, 0);
  }
  if (c) {
    PQpipelineSync(c);
    for (j = 0; j < 5000 && PQflush(c) == 1; j++) usleep(1000);
    usleep(200000); /* let the server run it before the connection goes */
  }
  pg_link_break(p->k); /* (as a connection lost) */
}

/* Which session the server refused, and why in our terms (err's code "database"). */
static void refused(pg_eng *p, const pgq *q, PGresult **res, int n, ps_err *err)
{
  int i;
  for (i = 0; i < n; i++) {
    const char *state;
    if (!res[i] || PQresultStatus(res[i]) != PGRES_FATAL_ERROR) continue;
    state = PQresultErrorField(res[i], PG_DIAG_SQLSTATE);
    if (q[i].q == Q_INSERT || q[i].q == Q_UPDATE) {
      if (state && !strcmp(state, "22021"))
        ps_err_set(err, "invalid", "PostgreSQL %s: session %.64s holds bytes that are not "
                   "valid UTF-8, which PostgreSQL cannot store as text; nothing was stored",
                   p->k->display, q[i].v[1]);
      else if (state && !strcmp(state, "23505"))
        ps_err_set(err, "invalid", "PostgreSQL %s: session %.64s was just stored by another "
                   "transaction; nothing was stored", p->k->display, q[i].v[1]);
    }
    break;
  }
}

/* Commits: one round trip with the writes and COMMIT. Its answer lost, the outcome is
 * looked up; a deferred engine may stop at either round trip (io_pending, the transaction
 * kept) and run this again. */
static int end_commit(lua_State *L, pg_eng *p, int eng, ps_err *err)
{
  int top = lua_gettop(L), rc, n, cap, pend, cut, i;
  lua_Integer npend = 0;
  pgq *q;
  PGresult **res;
  cols *cs;
  commit_key key;

  if (p->deferred) { /* run again: the same round trips, from where the commit began */
    if (p->in_commit) {
      p->seq = p->commit_seq;
      p->nevents = p->commit_nevents; /* (and the events they make, made again) */
    } else {
      p->in_commit = 1;
      p->commit_seq = p->seq;
      p->commit_nevents = p->nevents;
    }
  }
  push_uv(L, eng, UV_PENDING);
  pend = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, pend) != 0) {
    npend++;
    lua_pop(L, 1);
  }
  cap = (int)(2 * npend + 1);
  q = calloc((size_t)cap, sizeof *q);
  res = calloc((size_t)cap, sizeof *res);
  cs = calloc((size_t)(npend ? npend : 1), sizeof *cs);
  if (!q || !res || !cs) {
    free(q);
    free(res);
    free(cs);
    lua_settop(L, top);
    finish(L, p, eng); /* then rollback: nothing more to do here than let it go */
    return luaL_error(L, "pairstore: out of memory");
  }
  memset(&key, 0, sizeof key);
  n = commit_statements(L, p, eng, pend, q, cs, &key);
#ifdef PS_TEST
  cut = !p->deferred && cut_commits > 0 && npend > 0;
#else
  cut = 0;
#endif
  if (cut) {
#ifdef PS_TEST
    cut_commits--;
#endif
    cut_commit(p, q, n);
    p->lost = 1;
    rc = -1;
    ps_err_set(err, "unavailable", "PostgreSQL %s: connection lost during COMMIT (test hook)",
               p->k->display);
  } else {
    rc = rt(p, q, n, res, p->k->stmt_ms, 0, err);
  }
  if (rc != 0 && ps_is_pending(err)) goto keep;
  if (rc != 0 && npend > 0 && p->lost) {
    /* The answer to COMMIT may have been lost after the server committed: find out. */
    ps_err pending;
    int v = look_up_outcome(p, key.sid, key.removal, key.old, &pending);
    if (v == -2) {
      *err = pending;
      goto keep;
    }
    if (v == 1) {
      rc = 0;
      add_event(p, "commit_confirmed", "the connection was lost during COMMIT; the change "
                "was found committed");
    } else if (v == 0) {
      size_t l = strlen(err->msg);
      snprintf(err->msg + l, sizeof err->msg - l, "; the change was not applied");
    } else {
      size_t l = strlen(err->msg);
      err->code = "outcome_unknown";
      snprintf(err->msg + l, sizeof err->msg - l, "; whether the change was committed "
               "cannot be told (read the session again)");
    }
  } else if (rc != 0 && !p->deferred && p->k->conn && !pg_link_idle(p->k)) {
    /* a statement failed: the server's transaction is aborted, end it (a worker thread
     * did so already for a deferred engine) */
    pgq rb = { Q_SQL, "ROLLBACK", { 0 } };
    PGresult *r = NULL;
    ps_err e2;
    if (pg_roundtrip(p->k, &rb, 1, &r, p->k->stmt_ms, 1, &e2) != 0) pg_link_break(p->k);
    PQclear(r);
  }
  if (rc != 0 && err->code && !strcmp(err->code, "database")) refused(p, q, res, n, err);
  rt_clear(p, res, n);
  free(q);
  free(res);
  free(cs);
  lua_settop(L, top);
  finish(L, p, eng);
  return rc;

keep: /* io_pending: the transaction stays as it is, to be run again */
  for (i = 0; i < n; i++) res[i] = NULL;
  free(q);
  free(res);
  free(cs);
  lua_settop(L, top);
  return -1;
}

static int pe_end(ps_engine *e, lua_State *L, int eng, int how, ps_err *err)
{
  pg_eng *p = PE(e);
  if (!p->in_txn) return 0;
  if (!p->began) { /* a read, or nothing done: nothing to end on the server */
    finish(L, p, eng);
    return 0;
  }
  if (how != PS_END_COMMIT) return end_rollback(L, p, eng);
  return end_commit(L, p, eng, err);
}

static const ps_event *pe_event(ps_engine *e, int i)
{
  pg_eng *p = PE(e);
  return i < p->nevents ? &p->events[i] : NULL;
}

static void pe_events_clear(ps_engine *e)
{
  PE(e)->nevents = 0;
}

/* ---- waiting: LISTEN / NOTIFY ------------------------------------------------------------------- */

/* How long a watch announces itself for (ms): store:wait watches again before it ends. */
#define PS_PG_WAIT_HORIZON "3600000"

/* Says on the session's row that someone waits for its change (see Q_WAIT). */
static int announce(pg_eng *p, const char *sid, int listen_first, ps_err *err)
{
  pgq q[3];
  PGresult *r[3] = { NULL, NULL, NULL };
  settings_buf sb;
  int n = 0, rc;
  memset(q, 0, sizeof q);
  if (listen_first) {
    q[n].q = Q_SQL;
    q[n++].sql = "LISTEN " PG_NOTIFY_CHANNEL;
  }
  add_settings(p, q, &n, 1, &sb);
  q[n].q = Q_WAIT;
  q[n].v[0] = p->k->store;
  q[n].v[1] = sid;
  q[n++].v[2] = PS_PG_WAIT_HORIZON;
  rc = rt(p, q, n, r, p->k->stmt_ms + p->k->lock_wait_ms, 0, err);
  rt_clear(p, r, n);
  return rc;
}

static int pe_announce(ps_engine *e, lua_State *L, int eng, const char *sid, ps_err *err)
{
  (void)L;
  (void)eng;
  return announce(PE(e), sid, 0, err);
}

typedef struct pg_watch {
  pg_eng *p;             /* kept alive by the watcher (its user value is the engine) */
  unsigned gen;          /* the connection it listens on */
  char payload[33 + 256];
} pg_watch;

/* The link a watch listens on. */
static pg_link *listen_link(pg_eng *p)
{
  return p->lk ? p->lk : p->k;
}

static int watch_fd(void *ctx)
{
  pg_watch *w = ctx;
  pg_link *k = listen_link(w->p);
  if (!k->conn || k->gen != w->gen || !k->listening) return -1;
  return PQsocket(k->conn);
}

static int watch_drain(void *ctx)
{
  pg_watch *w = ctx;
  pg_link *k = listen_link(w->p);
  PGnotify *nt;
  int hit = 0;
  if (!k->conn || k->gen != w->gen || !k->listening) {
    /* a new connection since (notifications may have been missed): look again */
    w->gen = k->gen;
    return 1;
  }
  if (PQconsumeInput(k->conn) != 1) return 1;
  while ((nt = PQnotifies(k->conn)) != NULL) {
    if (!strcmp(nt->extra, w->payload)) hit = 1;
    PQfreemem(nt);
  }
  return hit;
}

static void watch_close(void *ctx)
{
  pg_watch *w = ctx;
  if (--w->p->watchers == 0) listen_link(w->p)->listen = 0;
  free(w);
}

static const ps_watch_source pg_source = { watch_fd, watch_drain, watch_close };

static int pe_watch(ps_engine *e, lua_State *L, int eng, const char *sid, ps_err *err)
{
  pg_eng *p = PE(e);
  pg_watch *w;
  pg_link *wl;
  int64_t kb, wb;
  if (p->deferred) {
    ps_err_set(err, "invalid", "PostgreSQL %s: a deferred engine does not watch", p->k->display);
    return -1;
  }
  w = malloc(sizeof *w);
  if (!w) {
    ps_err_set(err, "io", "watch: out of memory (ENOMEM)");
    return -1;
  }
  w->p = p;
  snprintf(w->payload, sizeof w->payload, "%s%s", sid, p->k->store);
  p->watchers++;
  wl = listen_link(p);
  wl->listen = 1;
  kb = p->k->bound; /* (a running transaction's, given back) */
  wb = wl->bound;
  wl->bound = p->k->bound = p->until; /* for this call only */
  p->until = 0;
  /* listen first, then say so on the row: a change after that is notified */
  if (pg_connect(wl, err) != 0) goto failed;
  if (wl != p->k && !wl->listening) {
    pgq q = { Q_SQL, "LISTEN " PG_NOTIFY_CHANNEL, { 0 } };
    PGresult *r = NULL;
    int rc = pg_roundtrip(wl, &q, 1, &r, wl->stmt_ms, 0, err);
    PQclear(r);
    if (rc != 0) goto failed;
  }
  if (announce(p, sid, wl == p->k && !wl->listening, err) != 0) goto failed;
  wl->bound = wb;
  p->k->bound = kb;
  wl->listening = 1;
  w->gen = wl->gen;
  ps_watcher_push(L, &pg_source, w, eng, p->k->display);
  return 0;

failed:
  wl->bound = wb;
  p->k->bound = kb;
  if (--p->watchers == 0) wl->listen = 0;
  free(w);
  return -1;
}

/* ---- making one ----------------------------------------------------------------------------- */

static void pe_close(ps_engine *e)
{
  pg_eng *p = PE(e);
  int i, j;
  for (i = 0; i < p->nlog; i++) {
    for (j = 0; j < p->log[i].n; j++) PQclear(p->log[i].res[j]);
    free(p->log[i].res);
  }
  free(p->log);
  p->log = NULL;
  p->nlog = p->caplog = 0;
  pg_link_free(p->k);
  pg_link_free(p->lk);
  p->k = p->lk = NULL;
}

static void pe_idle(ps_engine *e)
{
  pg_eng *p = PE(e);
  if (p->k && !p->in_txn) pg_link_drop(p->k);
  if (p->lk && p->watchers == 0) pg_link_drop(p->lk);
}

static int pe_gc(lua_State *L)
{
  pg_eng *p = luaL_checkudata(L, 1, PS_PGENGINE_MT);
  if (p->k) pe_close(&p->base);
  return 0;
}

static const ps_engine_methods pg_methods = {
  PS_ENGINE_VERSION, "postgresql", pe_display, pe_locate, pe_begin, pe_clock, pe_fetch, pe_put,
  pe_remove, pe_count_live, pe_list, pe_text, pe_prune_due, pe_end, pe_event, pe_events_clear,
  pe_watch, pe_close, pe_announce, pe_idle,
};

/* ---- deferred engines: an nginx worker's links ------------------------------------------------ */

static pg_eng *check_handle(lua_State *L)
{
  pg_eng *p = luaL_checkudata(L, 1, PS_PGENGINE_MT);
  if (!p->k) luaL_error(L, "pairstore: the link is closed");
  return p;
}

/* h:link() -> the id a worker thread finds the link by */
static int h_link(lua_State *L)
{
  lua_pushinteger(L, (lua_Integer)check_handle(L)->k->id);
  return 1;
}

/* h:state() -> busy (a worker thread runs its round trip: nothing else is told), the ms
 * (monotonic) a worker thread finished a round trip nobody took yet (or false),
 * connect_failed (the last round trip could not connect) */
static int h_state(lua_State *L)
{
  pg_eng *p = check_handle(L);
  int64_t done_ms;
  int connect_failed;
  int st = pg_link_state(p->k, &done_ms, &connect_failed);
  lua_pushboolean(L, st == 2);
  if (st == 1) lua_pushinteger(L, (lua_Integer)done_ms);
  else lua_pushboolean(L, 0);
  lua_pushboolean(L, st != 2 && connect_failed);
  return 3;
}

/* h:reset(): ends whatever transaction it was in (a caller that raised, or went away):
 * the connection is closed unless idle. */
static int h_reset(lua_State *L)
{
  pg_eng *p = check_handle(L);
  if (p->k->busy) return 0; /* (cannot be: its owner is back) */
  if (p->in_txn || !pg_link_idle(p->k)) pg_link_drop(p->k);
  reset_rows(L, p, 1);
  free_log(p);
  p->base.cont.stage = 0;
  return 0;
}

/* h:close(): releases it (at once, or when a worker thread still running its round trip
 * ends: that thread then closes the connection). */
static int h_close(lua_State *L)
{
  pg_eng *p = luaL_checkudata(L, 1, PS_PGENGINE_MT);
  if (p->k) pe_close(&p->base);
  return 0;
}

static const luaL_Reg handle_methods[] = {
  { "link", h_link }, { "state", h_state }, { "reset", h_reset }, { "close", h_close },
  { NULL, NULL },
};

/* Pushes a new engine userdata (metatable set) with no link yet. */
static pg_eng *new_engine(lua_State *L, int decode)
{
  pg_eng *p;
  int i;
  decode = lua_absindex(L, decode);
  p = lua_newuserdatauv(L, sizeof *p, UV_COUNT);
  memset(p, 0, sizeof *p);
  p->base.m = &pg_methods;
  if (luaL_newmetatable(L, PS_PGENGINE_MT)) { /* before any resource is acquired */
    lua_pushcfunction(L, pe_gc);
    lua_setfield(L, -2, "__gc");
    luaL_newlib(L, handle_methods);
    lua_setfield(L, -2, "__index");
  }
  lua_setmetatable(L, -2);
  p->next_prune = INT64_MAX;
  lua_pushvalue(L, decode);
  lua_setiuservalue(L, -2, UV_DECODE);
  for (i = UV_ROWS; i <= UV_WAITED; i++) {
    lua_newtable(L);
    lua_setiuservalue(L, -2, i);
  }
  return p;
}

ps_engine *ps_pg_engine_clone(lua_State *L, ps_engine *from, int decode, int listen)
{
  pg_eng *src = PE(from), *p = new_engine(L, decode);
  ps_pg_opts o;
  memset(&o, 0, sizeof o);
  o.lock_wait_ms = src->k->lock_wait_ms;
  o.connect_timeout_ms = src->k->connect_ms;
  o.statement_timeout_ms = src->k->stmt_ms;
  o.durable = src->k->durable;
  {
    const pg_link *via = listen && src->lk ? src->lk : src->k; /* a listener: past the pooler */
    p->k = pg_link_new(via->conninfo, via->display, via->store, via->hidden_user, via->hidden_db, &o);
  }
  if (!p->k) luaL_error(L, "pairstore: out of memory");
  p->k->listen = listen;
  p->deferred = 1;
  p->max_session_bytes = src->max_session_bytes;
  return &p->base;
}

int ps_pg_is_engine(lua_State *L, int idx)
{
  return luaL_testudata(L, idx, PS_PGENGINE_MT) != NULL;
}

/* Whether a user or database name is shown: not when it could be (or hold) a password, a
 * URI or a conninfo. */
static int user_shown(const char *user)
{
  return !strchr(user, ':') && !strchr(user, '@') && !strchr(user, '=');
}

static int db_shown(const char *db)
{
  return !strstr(db, "://") && !strchr(db, '=') && !strchr(db, '@');
}

/* err = code, fmt (with the display, then detail: libpq's or the server's text) */
/* Appends the hosts of a target as a URI shows them: each with its own port (or the one port
 * given for all), an IPv6 literal in brackets: "a:7001,[::1]:7002". */
static void add_hosts(ps_buf *b, const char *hosts, const char *ports)
{
  const char *h = hosts, *pt = ports;
  int one_port = !strchr(ports, ',');
  for (;;) {
    size_t hl = strcspn(h, ","), pl = strcspn(pt, ",");
    int v6 = memchr(h, ':', hl) != NULL;
    if (h != hosts) ps_buf_lit(b, ",");
    if (v6) ps_buf_lit(b, "[");
    ps_buf_add(b, h, hl);
    if (v6) ps_buf_lit(b, "]");
    if (pl) {
      ps_buf_lit(b, ":");
      ps_buf_add(b, pt, pl);
    }
    if (!h[hl]) break;
    h += hl + 1;
    if (!one_port) pt += pl + (pt[pl] == ','); /* host i's port is the i-th */
  }
}

/* The display name: postgresql://user@host:port,host:port/dbname (store NAME), from what
 * libpq reads in the target; never the password, nor a user or database name that could be
 * one (user_shown, db_shown). What every message and store.path names the store by. */
static char *make_display(PQconninfoOption *opts, const char *store)
{
  const char *user = "", *host = "", *port = "", *db = "";
  PQconninfoOption *o;
  ps_buf b = { 0 };
  char *out;
  for (o = opts; o && o->keyword; o++) {
    if (!o->val) continue;
    if (!strcmp(o->keyword, "user")) user = o->val;
    else if (!strcmp(o->keyword, "host")) host = o->val;
    else if (!strcmp(o->keyword, "hostaddr") && !*host) host = o->val;
    else if (!strcmp(o->keyword, "port")) port = o->val;
    else if (!strcmp(o->keyword, "dbname")) db = o->val;
  }
  if (strspn(port, ",") == strlen(port)) port = ""; /* a multi-host target's empty ports */
  if (!db_shown(db)) db = "[dbname not shown]";
  if (!user_shown(user)) user = "[user not shown]";
  ps_buf_lit(&b, "postgresql://");
  if (*user) {
    ps_buf_add(&b, user, strlen(user));
    ps_buf_lit(&b, "@");
  }
  add_hosts(&b, host, port);
  ps_buf_lit(&b, "/");
  ps_buf_add(&b, db, strlen(db));
  ps_buf_lit(&b, " (store ");
  ps_buf_add(&b, store, strlen(store));
  ps_buf_lit(&b, ")");
  out = b.oom ? NULL : strndup(b.p, b.len);
  ps_buf_free(&b);
  return out;
}

/* Why libpq cannot parse a target, in words that quote none of it (its own message may echo
 * the target, a password or a hidden name with it). */
static const char *parse_error(const char *libpq)
{
  static const char *const why[][2] = {
    { "missing \"=\" after", "a keyword without \"=\" in the conninfo" },
    { "unterminated quoted string", "an unterminated quoted value in the conninfo" },
    { "invalid connection option", "an unknown connection option" },
    { "end of string reached when looking for matching \"]\"", "an IPv6 host without its \"]\"" },
    { "IPv6 host address may not be empty", "an empty IPv6 host" },
    { "unexpected character", "an unexpected character in the URI" },
    { "extra key/value separator", "a URI query parameter with two \"=\"" },
    { "missing key/value separator", "a URI query parameter without \"=\"" },
    { "invalid URI query parameter", "an unknown URI query parameter" },
    { "invalid percent-encoded token", "an invalid percent-encoded token" },
    { "forbidden value %00", "a percent-encoded NUL (%00)" },
    { "out of memory", "out of memory" },
  };
  size_t i;
  for (i = 0; libpq && i < sizeof why / sizeof why[0]; i++)
    if (!strncmp(libpq, why[i][0], strlen(why[i][0]))) return why[i][1];
  return "libpq cannot parse it";
}

/* What libpq is given for a PostgreSQL target (malloc'd; NULL: out of memory): a URI with
 * its scheme in lower case (libpq knows no other), a conninfo without "pg:". */
static char *conninfo_of(const char *target)
{
  char *c = strdup(!strncmp(target, "pg:", 3) ? target + 3 : target);
  size_t i;
  for (i = 0; c && i < ps_pg_uri_prefix(c); i++) c[i] = (char)tolower((unsigned char)c[i]);
  return c;
}

/* Pushes the display form of a PostgreSQL target (nil, why: libpq cannot parse it). */
int ps_pg_push_display(lua_State *L, const char *target, const char *store)
{
  char *errmsg = NULL, *d, *conninfo;
  PQconninfoOption *opts, *x;
  const char *why;
  if (ps_pq_load(&why) != 0) return luaL_error(L, "pairstore: %s", why);
  conninfo = conninfo_of(target);
  if (!conninfo) return luaL_error(L, "pairstore: out of memory");
  opts = PQconninfoParse(conninfo, &errmsg);
  sodium_memzero(conninfo, strlen(conninfo));
  free(conninfo);
  if (!opts) {
    lua_pushnil(L);
    lua_pushfstring(L, "invalid PostgreSQL target: %s (the target is not shown)", parse_error(errmsg));
    PQfreemem(errmsg);
    return 2;
  }
  d = make_display(opts, store);
  for (x = opts; x->keyword; x++)
    if (x->val) sodium_memzero(x->val, strlen(x->val));
  PQconninfoFree(opts);
  if (!d) return luaL_error(L, "pairstore: out of memory");
  lua_pushstring(L, d);
  free(d);
  return 1;
}

/* A link to target (its display name; what else libpq reads in it stays with libpq);
 * raises a clear error, quoting nothing of the target, when libpq cannot parse it. what: the
 * option's name. */
static pg_link *link_for(lua_State *L, const char *target, const ps_pg_opts *o, const char *what)
{
  PQconninfoOption *opts, *x;
  char *errmsg = NULL, *display, *huser = NULL, *hdb = NULL, *conninfo = conninfo_of(target);
  pg_link *k;

  if (!conninfo) luaL_error(L, "pairstore.open: out of memory");
  opts = PQconninfoParse(conninfo, &errmsg);
  if (!opts) {
    sodium_memzero(conninfo, strlen(conninfo));
    free(conninfo);
    lua_pushfstring(L, "pairstore.open: invalid PostgreSQL %s: %s (the target is not shown)",
                    what, parse_error(errmsg));
    PQfreemem(errmsg);
    lua_error(L);
  }
  display = make_display(opts, o->store);
  for (x = opts; x->keyword; x++) {
    if (!x->val) continue;
    if (!strcmp(x->keyword, "user") && !user_shown(x->val)) huser = strdup(x->val);
    if (!strcmp(x->keyword, "dbname") && !db_shown(x->val)) hdb = strdup(x->val);
  }
  for (x = opts; x->keyword; x++)
    if (x->val) sodium_memzero(x->val, strlen(x->val));
  PQconninfoFree(opts);
  k = display ? pg_link_new(conninfo, display, o->store, huser, hdb, o) : NULL;
  sodium_memzero(conninfo, strlen(conninfo));
  free(conninfo);
  free(display);
  if (huser) sodium_memzero(huser, strlen(huser));
  if (hdb) sodium_memzero(hdb, strlen(hdb));
  free(huser);
  free(hdb);
  if (!k) luaL_error(L, "pairstore.open: out of memory");
  return k;
}

ps_engine *ps_pg_engine_new(lua_State *L, const char *target, const ps_pg_opts *o, int decode)
{
  pg_eng *p;
  const char *why;
  if (ps_pq_load(&why) != 0) luaL_error(L, "pairstore.open: %s", why);
  p = new_engine(L, decode);
  p->k = link_for(L, target, o, "target");
  if (o->listen_target) p->lk = link_for(L, o->listen_target, o, "listen_target");
  p->max_session_bytes = o->max_session_bytes;
  return &p->base;
}

int ps_pg_server(ps_engine *e, lua_State *L, int64_t deadline, ps_err *err)
{
  pg_eng *p = PE(e);
  pgq q[2];
  PGresult *res[2] = { NULL, NULL };
  int rc;
  if (p->deferred || p->in_txn) {
    ps_err_set(err, "busy", "PostgreSQL %s: the connection is in use", p->k->display);
    return -1;
  }
  memset(q, 0, sizeof q);
  q[0].q = Q_SQL;
  q[0].sql = "SELECT pg_is_in_recovery(), current_setting('server_version'), "
             "coalesce(host(inet_server_addr()), 'local'), coalesce(inet_server_port()::text, '')";
  q[1].q = Q_SQL;
  q[1].sql = "SELECT count(*) FROM pairstore_sessions WHERE store = $1";
  q[1].v[0] = p->k->store;
  p->k->bound = deadline;
  rc = rt(p, q, 2, res, p->k->stmt_ms, 1, err);
  p->k->bound = 0;
  if (rc == 0) {
    lua_createtable(L, 0, 6);
    lua_pushstring(L, PQgetvalue(res[0], 0, 2));
    lua_setfield(L, -2, "host");
    lua_pushstring(L, PQgetvalue(res[0], 0, 3));
    lua_setfield(L, -2, "port");
    lua_pushboolean(L, PQgetvalue(res[0], 0, 0)[0] == 'f');
    lua_setfield(L, -2, "primary");
    lua_pushstring(L, PQgetvalue(res[0], 0, 1));
    lua_setfield(L, -2, "version");
    lua_pushstring(L, p->k->server); /* (what libpq reached: host or socket directory, port) */
    lua_setfield(L, -2, "reached");
    lua_pushinteger(L, (lua_Integer)strtoll(PQgetvalue(res[1], 0, 0), NULL, 10));
    lua_setfield(L, -2, "rows");
  }
  rt_clear(p, res, 2);
  return rc;
}

void ps_pg_until(ps_engine *e, int64_t deadline)
{
  PE(e)->until = deadline;
}
