/*
 * engine_pg.c — the PostgreSQL engine: one row per session (the store's name and the sid as
 * key, the session's JSON text kept verbatim, the columns pruning and listing need), behind
 * the engine interface. A write transaction locks the rows it touches (SELECT ... FOR
 * UPDATE; a create also the store's own row, so that creates never pass max_sessions); a read
 * is one statement on one snapshot and never blocks writers. Pruning is set-based SQL run
 * when due. Every round trip is one libpq pipeline with a deadline (a stopped server gives
 * `timeout`, never a hang); a broken connection is reopened by the next operation; a COMMIT
 * whose answer is lost is looked up afterwards by the transaction token written with it.
 */
#include "pairstore.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <sodium.h>

#define PS_PGENGINE_MT "pairstore.pg_engine"
#define SCHEMA_VERSION 1
#define NOTIFY_CHANNEL "pairstore"
/* lock_timeout (ms) of a write that waits cooperatively (ps_hint.nowait): a row lock held
 * longer gives up, and the caller sleeps instead of the server blocking this thread. */
#define PS_PG_NOWAIT_MS "1"

/* The schema, version 1 (sql/pairstore.sql is this text; a spec checks it). Run in one
 * transaction (one simple query) on first use when the role may; otherwise by the owner. */
const char ps_pg_schema_sql[] =
  "-- pairstore schema, version 1: the sessions of every store in this database.\n"
  "-- pairstore creates it on first use when its role may; otherwise run this file once as\n"
  "-- the schema's owner and grant the application role SELECT, INSERT, UPDATE, DELETE on\n"
  "-- the three tables.\n"
  "CREATE TABLE pairstore_schema (\n"
  "  version integer NOT NULL\n"
  ");\n"
  "INSERT INTO pairstore_schema (version) VALUES (1);\n"
  "\n"
  "-- One row per store: a create locks it (SELECT ... FOR UPDATE), so that creates of one\n"
  "-- store are serialised and never pass max_sessions.\n"
  "CREATE TABLE pairstore_stores (\n"
  "  store text PRIMARY KEY\n"
  ");\n"
  "\n"
  "-- One row per session. body is the session's JSON text exactly as pairstore wrote it (or\n"
  "-- as the file it was migrated from held it): text, not jsonb, so that key order, number\n"
  "-- text and unknown members survive byte for byte. The other columns are derived from it\n"
  "-- when it is written: status and live (not terminal), createdAtMs, lastStatusChangeAtMs,\n"
  "-- expiresAtMs, and prune_at, the time after which pruning changes the row (its expiry\n"
  "-- while live, the end of its retention once terminal). Pruning may mark a live row\n"
  "-- expired (status, live, changed_at, prune_at) without rewriting body: a reader applies\n"
  "-- the expiry to body itself. txn is the token of the transaction that last wrote it.\n"
  "-- waited_until: someone waits for a change of this session (store:wait) until then, so\n"
  "-- a change sends a notification (NOTIFY serialises commits: only when it is awaited).\n"
  "CREATE TABLE pairstore_sessions (\n"
  "  store      text NOT NULL REFERENCES pairstore_stores (store),\n"
  "  sid        text NOT NULL,\n"
  "  status     text NOT NULL,\n"
  "  live       boolean NOT NULL,\n"
  "  created_at double precision NOT NULL,\n"
  "  changed_at double precision NOT NULL,\n"
  "  expires_at double precision NOT NULL,\n"
  "  prune_at   bigint NOT NULL,\n"
  "  txn        text NOT NULL,\n"
  "  body       text NOT NULL,\n"
  "  waited_until bigint NOT NULL DEFAULT 0,\n"
  "  PRIMARY KEY (store, sid)\n"
  ");\n"
  "CREATE INDEX pairstore_sessions_prune ON pairstore_sessions (store, live, prune_at);\n"
  "CREATE INDEX pairstore_sessions_created ON pairstore_sessions (store, created_at);\n";

/* The transaction's time in ms: the server's clock at the start of the transaction (for a
 * read, of its one statement), the same in every statement of it. */
#define NOW_MS "floor(date_part('epoch', transaction_timestamp()) * 1000)::int8"

typedef struct stmt {
  const char *name, *sql;
  int nparams;
} stmt;

enum {
  Q_CLOCK, Q_LOCK_STORE, Q_COUNT, Q_FETCH, Q_GET, Q_LIST, Q_INSERT, Q_UPDATE, Q_DELETE,
  Q_EXPIRE, Q_DROP, Q_NOTIFY, Q_OUTCOME, Q_WAIT, Q_NSTMT
};

static const stmt stmts[Q_NSTMT] = {
  { "ps_clock", "SELECT " NOW_MS ", LEAST("
    "(SELECT min(prune_at) FROM pairstore_sessions WHERE store = $1 AND live), "
    "(SELECT min(prune_at) FROM pairstore_sessions WHERE store = $1 AND NOT live))", 1 },
  { "ps_lock_store", "SELECT 1 FROM pairstore_stores WHERE store = $1 FOR UPDATE", 1 },
  { "ps_count", "SELECT count(*) FROM (SELECT 1 FROM pairstore_sessions WHERE store = $1 AND live "
    "AND prune_at >= COALESCE($2::int8, " NOW_MS ") LIMIT $3::int8) AS t", 3 },
  { "ps_fetch", "SELECT body, live, txn, waited_until FROM pairstore_sessions WHERE store = $1 "
    "AND sid = $2 FOR UPDATE", 2 },
  /* (no row: no clock either, and none is needed to say not_found) */
  { "ps_get", "SELECT " NOW_MS ", body, live, txn FROM pairstore_sessions WHERE store = $1 "
    "AND sid = $2", 2 },
  { "ps_list", "SELECT c.now_ms, s.body, s.live, s.txn, s.sid FROM (SELECT " NOW_MS " AS now_ms) AS c "
    "LEFT JOIN pairstore_sessions AS s ON s.store = $1 AND (s.live OR NOT $2::boolean) "
    "ORDER BY s.created_at, s.sid", 2 },
  { "ps_insert", "INSERT INTO pairstore_sessions (store, sid, status, live, created_at, "
    "changed_at, expires_at, prune_at, txn, body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, "
    "$10)", 10 },
  { "ps_update", "UPDATE pairstore_sessions SET status = $3, live = $4, created_at = $5, "
    "changed_at = $6, expires_at = $7, prune_at = $8, txn = $9, body = $10 WHERE store = $1 "
    "AND sid = $2", 10 },
  { "ps_delete", "DELETE FROM pairstore_sessions WHERE store = $1 AND sid = $2", 2 },
  /* Pruning, set-based: expire the live rows past their expiry (lastStatusChangeAtMs becomes
   * expiresAtMs, as the rule says), then delete the terminal rows past their retention.
   * Rows another transaction holds are skipped (it may be changing them; a later prune
   * takes them): pruning never waits. The rows' txn stays: it still names the transaction
   * that last wrote their text (what a lost COMMIT's lookup compares). */
  { "ps_expire", "UPDATE pairstore_sessions SET status = 'expired', live = false, "
    "changed_at = expires_at, prune_at = prune_at + $3::int8 WHERE store = $1 AND sid IN "
    "(SELECT sid FROM pairstore_sessions WHERE store = $1 AND live AND prune_at < $2::int8 "
    "FOR UPDATE SKIP LOCKED)", 3 },
  { "ps_drop", "DELETE FROM pairstore_sessions WHERE store = $1 AND sid IN "
    "(SELECT sid FROM pairstore_sessions WHERE store = $1 AND NOT live AND prune_at < $2::int8 "
    "FOR UPDATE SKIP LOCKED)", 2 },
  { "ps_notify", "SELECT pg_notify('" NOTIFY_CHANNEL "', $1)", 1 },
  { "ps_outcome", "SELECT txn FROM pairstore_sessions WHERE store = $1 AND sid = $2", 2 },
  /* A waiter says so on the row itself: a writer that locked the row before waits it out
   * (the waiter then reads its change); one that locks it after sees waited_until. */
  { "ps_wait", "UPDATE pairstore_sessions SET waited_until = GREATEST(waited_until, " NOW_MS
    " + $3::int8) WHERE store = $1 AND sid = $2", 3 },
};

/* One statement of a round trip: a prepared one (q >= 0) or plain SQL without parameters. */
typedef struct pgq {
  int q;
  const char *sql;
  const char *v[10];
  int len[10];
} pgq;

#define MAX_Q 16
/* pgq.q for plain SQL text of several statements, sent alone as one simple query. */
#define Q_SIMPLE (-100)

/* User values: cjson's decode; the transaction's sessions (sid -> table, the engine's own);
 * their texts as stored (sid -> string); the rows the store holds (sid -> txn token: the
 * row exists); sessions changed in memory since read (sid -> true); pending writes (sid ->
 * text to store, or false: delete); sids read (sid -> true); the sids a list read, in
 * order; until when someone waits for a change of a session read for update (sid -> ms). */
enum { UV_DECODE = 1, UV_ROWS, UV_TEXTS, UV_TOKENS, UV_DIRTY, UV_PENDING, UV_SEEN, UV_LISTED,
       UV_WAITED, UV_COUNT = UV_WAITED };

typedef struct pg_eng {
  ps_engine base;
  char *conninfo;        /* as libpq takes it (a URI, or key=value after "pg:") */
  char *display;         /* the target without its password, and the store's name */
  char *store;
  /* A user and a database name that the display does not show (they may hold a password):
   * a server message naming either is not shown either. NULL: shown, or none given. */
  char *hidden_user, *hidden_db;
  int64_t until;         /* the next transaction or watch ends by then (monotonic ms; 0: no bound) */
  int64_t bound;         /* the running one's (0: none); taken from until as each starts */
  int lock_wait_ms, connect_ms, stmt_ms, durable;
  size_t max_session_bytes;
  PGconn *conn;
  pid_t pid;             /* the process that opened conn: a forked child opens its own */
  unsigned gen;          /* connections opened so far (a watcher sees a new one) */
  int listening;         /* LISTEN issued on conn */
  int watchers;
  /* the transaction */
  int in_txn, readonly, began, rt1;
  int lost;              /* the last round trip lost its answer (connection lost, no answer) */
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
} pg_eng;

#define PE(e) ((pg_eng *)(void *)(e))

/* ---- fault hooks for the tests (test_hooks) ----------------------------------------------------- */

/* The next n commits send COMMIT and then lose the connection before its answer. */
static int cut_commits;
static long roundtrips;

void ps_pg_fault_cut_commits(int n)
{
  cut_commits = n;
}

long ps_pg_roundtrips(void)
{
  return roundtrips;
}

/* ---- targets and messages --------------------------------------------------------------------- */

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
static size_t pg_uri_prefix(const char *t)
{
  if (!strncasecmp(t, "postgresql://", 13)) return 13;
  if (!strncasecmp(t, "postgres://", 11)) return 11;
  return 0;
}

int ps_pg_is_target(const char *t)
{
  return pg_uri_prefix(t) > 0 || !strncmp(t, "pg:", 3);
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

/* What a message may say of a target is its display form (make_display): the password is
 * never in it, and neither is a user or database name the display hides. Nothing is searched
 * for and replaced: libpq's messages that would echo the target are not quoted (a target it
 * cannot parse), the server's errors while connecting come as their SQLSTATE only
 * (connect_failed), and a server message that names a hidden user or database is not quoted
 * (set_err). */

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
static void set_err(pg_eng *p, ps_err *err, const char *code, const char *fmt, const char *detail)
    __attribute__((format(printf, 4, 0)));
static void set_err(pg_eng *p, ps_err *err, const char *code, const char *fmt, const char *detail)
{
  char d[2048], *c;
  size_t n;
  snprintf(d, sizeof d, "%s", detail ? detail : "");
  n = strlen(d);
  while (n && (d[n - 1] == '\n' || d[n - 1] == ' ')) d[--n] = '\0';
  for (c = d; *c; c++) /* libpq's lines, as one */
    if (*c == '\n' || *c == '\t') *c = ' ';
  if ((p->hidden_user && strstr(d, p->hidden_user)) || (p->hidden_db && strstr(d, p->hidden_db)))
    snprintf(d, sizeof d, "[the server's message is not shown: it names the user or database "
             "that the target's display hides]");
  ps_err_set(err, code, fmt, p->display, d);
}

static void add_event(pg_eng *p, const char *name, const char *detail)
{
  ps_event *ev;
  if (p->nevents >= PS_MAX_EVENTS) return;
  ev = &p->events[p->nevents++];
  memset(ev, 0, sizeof *ev);
  snprintf(ev->name, sizeof ev->name, "%s", name);
  snprintf(ev->detail, sizeof ev->detail, "%s", detail); /* (our own text: a sid, what is wrong) */
}

/* ---- the connection --------------------------------------------------------------------------- */

static void drop_conn(pg_eng *p)
{
  if (!p->conn) return;
  if (p->pid != getpid()) {
    /* A forked child: the socket is its parent's too. Close our copy first, so that freeing
     * the connection sends nothing on it (no Terminate, no TLS close). */
    int fd = PQsocket(p->conn);
    if (fd >= 0) close(fd);
  }
  PQfinish(p->conn);
  p->conn = NULL;
  p->listening = 0;
}

/* Waits until the connection's socket is ready for ev (POLLIN/POLLOUT) or the deadline
 * passes: 1 ready, 0 deadline, -1 poll failed. */
static int wait_sock(PGconn *c, short ev, int64_t deadline)
{
  struct pollfd pfd;
  int64_t left;
  int n;
  pfd.fd = PQsocket(c);
  pfd.events = ev;
  if (pfd.fd < 0) return -1;
  for (;;) {
    left = deadline - ps_mono_ms();
    if (left <= 0) return 0;
    n = poll(&pfd, 1, left > INT_MAX ? INT_MAX : (int)left);
    if (n > 0) return 1;
    if (n == 0) return 0;
    if (errno != EINTR) return -1;
  }
}

static int roundtrip(pg_eng *p, const pgq *qs, int n, PGresult **res, int64_t budget,
                     int connecting, ps_err *err);

/* Creates the tables (one transaction) unless another host just did. */
static int create_schema(pg_eng *p, ps_err *err)
{
  PGresult *r = NULL;
  pgq q = { Q_SIMPLE, ps_pg_schema_sql, { 0 }, { 0 } };
  const char *state;
  int rc;
  rc = roundtrip(p, &q, 1, &r, p->stmt_ms, 1, err);
  if (rc == 0) {
    PQclear(r);
    return 0;
  }
  state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
  if (state && (!strcmp(state, "42P07") || !strcmp(state, "23505"))) { /* created meanwhile */
    PQclear(r);
    return 0;
  }
  if (state && !strcmp(state, "42501"))
    set_err(p, err, "schema", "PostgreSQL %s: the pairstore tables do not exist and this role "
            "may not create them (%s); have their owner run sql/pairstore.sql (`pairstore schema` "
            "prints it) and grant this role SELECT, INSERT, UPDATE, DELETE on them",
            PQresultErrorMessage(r));
  PQclear(r);
  return -1;
}

/* What a new connection needs before the first transaction: its settings, the schema (made
 * if missing), the store's row, the prepared statements, LISTEN if a watcher waits. */
static int setup(pg_eng *p, ps_err *err)
{
  char lock_ms[24], stmt_ms[24];
  PGresult *res[MAX_Q] = { 0 };
  pgq q[2];
  int i, rc, version = -1;
  const char *state;

  snprintf(lock_ms, sizeof lock_ms, "%d", p->lock_wait_ms);
  snprintf(stmt_ms, sizeof stmt_ms, "%d", p->stmt_ms);
  memset(q, 0, sizeof q);
  q[0].q = -1;
  q[0].sql = p->durable
    ? "SELECT set_config('lock_timeout', $1, false), set_config('statement_timeout', $2, false)"
    : "SELECT set_config('lock_timeout', $1, false), set_config('statement_timeout', $2, false), "
      "set_config('synchronous_commit', 'off', false)";
  q[0].v[0] = lock_ms;
  q[0].v[1] = stmt_ms;
  q[1].q = -1;
  q[1].sql = "SELECT max(version) FROM pairstore_schema";
  rc = roundtrip(p, q, 2, res, p->stmt_ms, 1, err);
  if (rc != 0 && res[1] && (state = PQresultErrorField(res[1], PG_DIAG_SQLSTATE)) &&
      !strcmp(state, "42P01")) {
    for (i = 0; i < 2; i++) PQclear(res[i]);
    if (create_schema(p, err) != 0) return -1;
    memset(res, 0, sizeof res);
    /* both again: the failed pipeline rolled q[0]'s settings back with it */
    rc = roundtrip(p, q, 2, res, p->stmt_ms, 1, err);
  }
  if (rc == 0) version = PQgetisnull(res[1], 0, 0) ? 0 : atoi(PQgetvalue(res[1], 0, 0));
  for (i = 0; i < 2; i++) PQclear(res[i]);
  if (rc != 0) return -1;
  if (version != SCHEMA_VERSION) {
    ps_err_set(err, "unsupported_version", "PostgreSQL %s: the pairstore schema has version %d; "
               "this pairstore uses version %d", p->display, version, SCHEMA_VERSION);
    return -1;
  }

  /* the store's row, the statements, LISTEN: one round trip */
  {
    pgq w[MAX_Q];
    int n = 0;
    memset(w, 0, sizeof w);
    w[n].q = -1;
    w[n].sql = "INSERT INTO pairstore_stores (store) VALUES ($1) ON CONFLICT DO NOTHING";
    w[n++].v[0] = p->store;
    for (i = 0; i < Q_NSTMT; i++) {
      w[n].q = -2 - i; /* prepare stmts[i] */
      n++;
    }
    if (p->watchers) {
      w[n].q = -1;
      w[n++].sql = "LISTEN " NOTIFY_CHANNEL;
    }
    memset(res, 0, sizeof res);
    rc = roundtrip(p, w, n, res, p->stmt_ms, 1, err);
    for (i = 0; i < n; i++) PQclear(res[i]);
    if (rc != 0) return -1;
    p->listening = p->watchers > 0;
  }
  return 0;
}

/* The server's notices (a WARNING at shutdown, say) are not the caller's output. */
static void quiet(void *arg, const char *msg)
{
  (void)arg;
  (void)msg;
}

static const char *code_of(const char *state, int *drop);

/* What the server said when it refused a connection, by SQLSTATE (its own text may name the
 * user or the database, which the display may hide). */
static const char *refusal(const char *state)
{
  static const char *const why[][2] = {
    { "28P01", "password authentication failed" },
    { "28000", "the server does not accept this role (no such role, or no pg_hba.conf entry "
               "lets it in)" },
    { "3D000", "the database does not exist" },
    { "42501", "permission denied: this role may not connect to the database" },
    { "53300", "too many connections" },
    { "57P03", "the server is starting up, shutting down or in recovery" },
  };
  size_t i;
  for (i = 0; i < sizeof why / sizeof why[0]; i++)
    if (!strcmp(state, why[i][0])) return why[i][1];
  return "the server refused the connection";
}

/* A failed connection attempt: err from libpq's message, in which libpq's own text (hosts,
 * ports, sockets: what the display shows) stays and each server error, which comes as
 * "SEVERITY:  SQLSTATE" only (PQERRORS_SQLSTATE), is said in our words; the code is the last
 * SQLSTATE's (authentication: denied; no database: schema), else unavailable (denied when
 * the server wants a password and none was given). */
static void connect_failed(pg_eng *p, ps_err *err)
{
  const char *m = PQerrorMessage(p->conn), *code;
  char d[2048], state[6] = "";
  size_t n = 0;
  int drop;
  d[0] = '\0';
  while (*m && n < sizeof d - 1) {
    const char *sev = NULL;
    if (!strncmp(m, "FATAL:  ", 8) || !strncmp(m, "ERROR:  ", 8) || !strncmp(m, "PANIC:  ", 8))
      sev = m + 8;
    if (sev && strspn(sev, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ") == 5 &&
        (sev[5] == '\n' || sev[5] == '\0')) {
      memcpy(state, sev, 5);
      state[5] = '\0';
      n += (size_t)snprintf(d + n, sizeof d - n, "%s (SQLSTATE %s)", refusal(state), state);
      if (n >= sizeof d) n = sizeof d - 1;
      m = sev + 5;
      continue;
    }
    d[n++] = *m++;
    d[n] = '\0';
  }
  code = state[0] ? code_of(state, &drop) : PQconnectionNeedsPassword(p->conn) ? "denied" : "unavailable";
  if (!strcmp(code, "timeout") || !strcmp(code, "busy")) code = "unavailable";
  set_err(p, err, code, "PostgreSQL %s: cannot connect: %s", d);
}

/* Connects (if not connected) within connect_timeout_ms (and the bound, if any); 0, or -1
 * with err set. */
static int connect_db(pg_eng *p, ps_err *err)
{
  PostgresPollingStatusType st = PGRES_POLLING_WRITING;
  int64_t deadline;

  if (p->conn && p->pid != getpid()) drop_conn(p);
  if (p->conn && PQstatus(p->conn) == CONNECTION_OK) return 0;
  drop_conn(p);
  p->conn = PQconnectStart(p->conninfo);
  if (!p->conn) {
    ps_err_set(err, "unavailable", "PostgreSQL %s: out of memory", p->display);
    return -1;
  }
  p->pid = getpid();
  p->gen++;
  PQsetNoticeProcessor(p->conn, quiet, NULL);
  PQsetErrorVerbosity(p->conn, PQERRORS_SQLSTATE); /* the server's refusal: no names */
  deadline = ps_mono_ms() + p->connect_ms;
  if (p->bound && p->bound < deadline) deadline = p->bound;
  if (PQstatus(p->conn) == CONNECTION_BAD) st = PGRES_POLLING_FAILED;
  while (st != PGRES_POLLING_OK) {
    int w;
    if (st == PGRES_POLLING_FAILED) {
      connect_failed(p, err);
      drop_conn(p);
      return -1;
    }
    w = wait_sock(p->conn, st == PGRES_POLLING_READING ? POLLIN : POLLOUT, deadline);
    if (w == 0) {
      if (p->bound && deadline == p->bound)
        ps_err_set(err, "timeout", "PostgreSQL %s: no connection by the caller's deadline",
                   p->display);
      else
        ps_err_set(err, "timeout", "PostgreSQL %s: no connection within connect_timeout_ms (%d)",
                   p->display, p->connect_ms);
      drop_conn(p);
      return -1;
    }
    if (w < 0) {
      connect_failed(p, err);
      drop_conn(p);
      return -1;
    }
    st = PQconnectPoll(p->conn);
  }
  PQsetErrorVerbosity(p->conn, PQERRORS_DEFAULT);
  if (PQsetnonblocking(p->conn, 1) != 0 || setup(p, err) != 0) {
    if (!err->code) set_err(p, err, "unavailable", "PostgreSQL %s: %s", PQerrorMessage(p->conn));
    drop_conn(p);
    return -1;
  }
  return 0;
}

/* The code for a failed statement's SQLSTATE (NULL: a connection failure). */
static const char *code_of(const char *state, int *drop)
{
  *drop = 0;
  if (!state) { *drop = 1; return "unavailable"; }
  if (!strcmp(state, "55P03") || !strcmp(state, "57014")) return "timeout";
  if (!strncmp(state, "08", 2) || !strncmp(state, "57P", 3) || !strcmp(state, "25006") ||
      !strcmp(state, "53300")) {
    *drop = 1; /* a read-only server (a standby after a failover): find the primary again */
    return "unavailable";
  }
  if (!strcmp(state, "40001") || !strcmp(state, "40P01")) return "busy";
  /* authentication (28xxx: a wrong password, no such role, no pg_hba.conf entry), a missing
   * privilege (42501: CONNECT too) */
  if (!strncmp(state, "28", 2) || !strcmp(state, "42501")) return "denied";
  /* the tables, or the database itself (3D000), are missing: the owner must make them */
  if (!strcmp(state, "42P01") || !strcmp(state, "42703") || !strcmp(state, "3D000")) return "schema";
  return "database";
}

/* Sends the statements as one pipeline and collects one result for each (res[i]: the
 * caller clears them; NULL for a statement not run). 0 when all succeeded; -1 with err set
 * (the first failure), the connection dropped when it cannot be trusted. budget: ms for the
 * whole round trip. connecting: part of connect_db (do not connect again). */
static int roundtrip(pg_eng *p, const pgq *qs, int n, PGresult **res, int64_t budget,
                     int connecting, ps_err *err)
{
  int64_t deadline = ps_mono_ms() + budget;
  int i, failed = 0, drop = 0, pipeline;
  if (p->bound && p->bound < deadline) { /* the caller's deadline comes first */
    deadline = p->bound;
    budget = deadline - ps_mono_ms();
  }
  PGconn *c;

  p->lost = 0;
  roundtrips++;
  for (i = 0; i < n; i++) res[i] = NULL;
  if (!connecting && connect_db(p, err) != 0) return -1;
  c = p->conn;
  /* A pipeline for the round trip only: between round trips the connection is in normal
   * mode, where libpq reads the notifications a watcher waits for as they come (in pipeline
   * mode it leaves them unparsed until the next statement). */
  pipeline = !(n == 1 && qs[0].q == Q_SIMPLE);
  if (pipeline && PQpipelineStatus(c) == PQ_PIPELINE_OFF && PQenterPipelineMode(c) != 1) goto lost;
  for (i = 0; i < n; i++) {
    int ok;
    const pgq *q = &qs[i];
    if (q->q >= 0) {
      ok = PQsendQueryPrepared(c, stmts[q->q].name, stmts[q->q].nparams, q->v, NULL, NULL, 0);
    } else if (q->q <= -2 && q->q != Q_SIMPLE) {
      const stmt *s = &stmts[-2 - q->q];
      ok = PQsendPrepare(c, s->name, s->sql, s->nparams, NULL);
    } else if (pipeline) {
      int np = 0;
      while (np < 10 && q->v[np]) np++;
      ok = PQsendQueryParams(c, q->sql, np, NULL, q->v, NULL, NULL, 0);
    } else {
      ok = PQsendQuery(c, q->sql);
    }
    if (!ok) {
      p->lost = 1;
      set_err(p, err, "unavailable", "PostgreSQL %s: %s", PQerrorMessage(c));
      drop_conn(p);
      return -1;
    }
  }
  if (pipeline && PQpipelineSync(c) != 1) {
    p->lost = 1;
    set_err(p, err, "unavailable", "PostgreSQL %s: %s", PQerrorMessage(c));
    drop_conn(p);
    return -1;
  }
  for (;;) { /* send it all */
    int f = PQflush(c), w;
    if (f == 0) break;
    if (f < 0) goto lost;
    w = wait_sock(c, POLLOUT | POLLIN, deadline);
    if (w == 0) goto timed_out;
    if (w < 0 || PQconsumeInput(c) != 1) goto lost;
  }
  /* Collect. In a pipeline each statement's results end with NULL, and the pipeline with
   * its sync; a simple query (several statements, no parameters) ends with NULL. */
  for (i = 0; i < (pipeline ? n + 1 : 1); i++) {
    for (;;) {
      PGresult *r;
      while (PQisBusy(c)) {
        int w = wait_sock(c, POLLIN, deadline);
        if (w == 0) goto timed_out;
        if (w < 0 || PQconsumeInput(c) != 1) goto lost;
      }
      r = PQgetResult(c);
      if (!r) {
        if (pipeline && i == n) goto lost; /* no sync: cannot be */
        break;
      }
      switch (PQresultStatus(r)) {
      case PGRES_PIPELINE_SYNC:
        PQclear(r);
        if (i != n) goto lost; /* cannot be: a statement without its result */
        goto collected;
      case PGRES_COMMAND_OK:
      case PGRES_TUPLES_OK:
      case PGRES_PIPELINE_ABORTED:
        if (i < n && !(res[i] && PQresultStatus(res[i]) == PGRES_FATAL_ERROR)) {
          PQclear(res[i]);
          res[i] = r;
        } else {
          PQclear(r);
        }
        break;
      default: /* an error: the first one is the answer */
        if (!failed) {
          const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
          const char *code = code_of(state, &drop);
          char msg[1200];
          failed = 1;
          snprintf(msg, sizeof msg, "%s (SQLSTATE %s)", PQresultErrorMessage(r), state ? state : "none");
          if (!strcmp(code, "timeout") && state && !strcmp(state, "55P03")) {
            snprintf(msg, sizeof msg, "a row is locked by another transaction: no lock within "
                     "lock_wait_ms (%d)", p->lock_wait_ms);
            if (p->in_txn && p->hint.nowait) code = "lock_busy";
          } else if (!strcmp(code, "timeout") && p->in_txn && p->hint.nowait &&
                     strstr(PQresultErrorMessage(r), "due to user request")) {
            /* 57014 in a cooperative wait: the 1 ms lock_timeout that expires as the lock is
             * granted (the holder committing) is reported as "canceling statement due to
             * user request", not 55P03. Nothing was done: sleep and try again like 55P03. */
            code = "lock_busy";
          }
          set_err(p, err, code, "PostgreSQL %s: %s", msg);
        }
        if (i < n) {
          PQclear(res[i]);
          res[i] = r;
        } else {
          PQclear(r);
        }
        break;
      }
    }
  }
collected:
  if (!failed && PQstatus(c) == CONNECTION_BAD) goto lost;
  if (!failed) for (i = 0; i < n; i++) if (!res[i]) goto lost;
  if (pipeline && PQexitPipelineMode(c) != 1) goto lost; /* every result was read: cannot be */
  if (p->watchers == 0) { /* notifications nobody waits for */
    PGnotify *nt;
    while ((nt = PQnotifies(c)) != NULL) PQfreemem(nt);
  }
  if (failed && drop) drop_conn(p);
  return failed ? -1 : 0;

timed_out:
  p->lost = 1;
  if (p->bound && deadline == p->bound)
    ps_err_set(err, "timeout", "PostgreSQL %s: no answer by the caller's deadline", p->display);
  else
    ps_err_set(err, "timeout", "PostgreSQL %s: no answer within %lld ms (statement_timeout_ms = %d)",
               p->display, (long long)budget, p->stmt_ms);
  drop_conn(p);
  return -1;
lost:
  p->lost = 1;
  set_err(p, err, "unavailable", "PostgreSQL %s: connection lost: %s", PQerrorMessage(c));
  drop_conn(p);
  return -1;
}

static void clear_all(PGresult **res, int n)
{
  int i;
  for (i = 0; i < n; i++) {
    PQclear(res[i]);
    res[i] = NULL;
  }
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
  char detail[200];

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
    snprintf(detail, sizeof detail, "session %.32s in the database is not a valid session (%s): "
             "left as it is, read as absent", sid, why);
    add_event(p, "invalid_dropped", detail);
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

static void reset_txn(lua_State *L, pg_eng *p, int eng)
{
  int i;
  for (i = UV_ROWS; i <= UV_WAITED; i++) { /* nothing of it kept past the transaction */
    lua_pushnil(L);
    lua_setiuservalue(L, eng, i);
  }
  p->in_txn = p->began = p->rt1 = p->have_now = p->have_live = p->removed = 0;
  p->next_prune = INT64_MAX;
}

void ps_pg_until(ps_engine *e, int64_t deadline)
{
  PE(e)->until = deadline;
}

static const char *pe_display(ps_engine *e)
{
  return PE(e)->display;
}

static int pe_locate(ps_engine *e, lua_State *L, int eng, ps_err *err)
{
  (void)eng;
  (void)err;
  PE(e)->nevents = 0;
  /* every transaction starts here: the caller's deadline is this one's, or none (a call
   * from inside a running one fails as reentrant, and leaves that one's alone) */
  if (!PE(e)->in_txn) PE(e)->bound = PE(e)->until;
  PE(e)->until = 0;
  /* the same database may be named in many ways: the target and store name identify it
   * well enough for the reentrancy check (a mutator using another spelling of the target
   * waits for the row lock, bounded by lock_wait_ms, instead of failing fast) */
  lua_pushfstring(L, "pg\n%s\n%s", PE(e)->conninfo, PE(e)->store);
  return 0;
}

static int pe_begin(ps_engine *e, lua_State *L, int eng, int readonly, const ps_hint *hint,
                    ps_err *err)
{
  pg_eng *p = PE(e);
  (void)err;
  reset_txn(L, p, eng);
  p->in_txn = 1;
  p->readonly = readonly;
  p->hint = *hint;
  p->hint_sid[0] = '\0';
  if (hint->sid) snprintf(p->hint_sid, sizeof p->hint_sid, "%s", hint->sid);
  p->hint.sid = hint->sid ? p->hint_sid : NULL;
  p->count_limit = hint->count_live;
  if (!readonly) ps_random_hex(p->token, 16);
  return 0;
}

/* The first round trip: what the hint says the transaction needs first, and its clock.
 * A read is one statement; a write begins the transaction and locks what it will change.
 * now_known: the caller's clock gave p->now. A connection found broken before anything was
 * done in it is opened again once (the server restarted, or failed over, meanwhile). */
static int first_roundtrip(lua_State *L, pg_eng *p, int eng, int now_known, ps_err *err)
{
  pgq q[7];
  PGresult *res[7] = { 0 };
  char now_s[24], limit_s[24], lock_ms[24];
  int n = 0, i_clock = -1, i_count = -1, i_fetch = -1, i_read = -1, attempt, rc = -1;
  int64_t budget = p->stmt_ms;

  if (p->rt1) return 0;
  memset(q, 0, sizeof q);
  snprintf(now_s, sizeof now_s, "%lld", (long long)p->now);
  snprintf(limit_s, sizeof limit_s, "%lld", (long long)p->count_limit);
  if (p->readonly && (p->hint.sid || p->hint.list)) {
    i_read = n;
    q[n].q = p->hint.sid ? Q_GET : Q_LIST;
    q[n].v[0] = p->store;
    q[n++].v[1] = p->hint.sid ? p->hint.sid : ((p->hint.list - 4) & PS_LIST_ACTIVE) ? "t" : "f";
  } else {
    if (!p->readonly) {
      q[n].q = -1;
      q[n++].sql = "BEGIN";
      if (p->hint.nowait) { /* a held row lock fails at once: the caller sleeps, then retries */
        q[n].q = -1;
        q[n++].sql = "SELECT set_config('lock_timeout', '" PS_PG_NOWAIT_MS "', true)";
      }
    }
    i_clock = n;
    q[n].q = Q_CLOCK;
    q[n++].v[0] = p->store;
    if (p->hint.count_live && !p->readonly) {
      q[n].q = Q_LOCK_STORE;
      q[n++].v[0] = p->store;
      i_count = n;
      q[n].q = Q_COUNT;
      q[n].v[0] = p->store;
      q[n].v[1] = now_known ? now_s : NULL;
      q[n++].v[2] = limit_s;
      budget += p->lock_wait_ms;
    }
    if (p->hint.sid && !p->readonly) {
      i_fetch = n;
      q[n].q = Q_FETCH;
      q[n].v[0] = p->store;
      q[n++].v[1] = p->hint.sid;
      budget += p->lock_wait_ms;
    }
    if (p->hint.nowait && !p->readonly) {
      /* the row locks are taken: what the rest of the transaction may wait for (the notify
       * queue's lock at COMMIT, an index entry another transaction inserts) is waited for
       * in the server again, as without the cooperative wait */
      snprintf(lock_ms, sizeof lock_ms, "%d", p->lock_wait_ms);
      q[n].q = -1;
      q[n].sql = "SELECT set_config('lock_timeout', $1, true)";
      q[n++].v[0] = lock_ms;
    }
  }
  for (attempt = 0; attempt < 2; attempt++) {
    int reused = p->conn && p->pid == getpid() && PQstatus(p->conn) == CONNECTION_OK;
    err->code = NULL;
    p->began = !p->readonly; /* from now on the server may be inside the transaction */
    rc = roundtrip(p, q, n, res, budget, 0, err);
    if (rc == 0) break;
    clear_all(res, n);
    /* nothing was changed yet: a connection that was already broken may be replaced */
    if (!reused || !err->code || strcmp(err->code, "unavailable") != 0 || p->conn) break;
  }
  if (rc != 0) return -1;
  p->rt1 = 1;
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
  clear_all(res, n);
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
  q[0].v[0] = p->store;
  q[0].v[1] = now_s;
  q[0].v[2] = ret_s;
  q[1].q = Q_DROP;
  q[1].v[0] = p->store;
  q[1].v[1] = now_s;
  if (roundtrip(p, q, 2, res, p->stmt_ms, 0, err) != 0) {
    clear_all(res, 2);
    return -1;
  }
  p->removed = *removed = atoi(PQcmdTuples(res[1]));
  clear_all(res, 2);
  return 0;
}

static int pe_fetch(ps_engine *e, lua_State *L, int eng, const char *sid, ps_err *err)
{
  pg_eng *p = PE(e);
  pgq q;
  PGresult *r = NULL;

  if (!p->rt1 && first_roundtrip(L, p, eng, p->have_now, err) != 0) return -1;
  uv_get(L, eng, UV_SEEN, sid);
  if (lua_isnil(L, -1)) { /* not read yet in this transaction */
    memset(&q, 0, sizeof q);
    q.q = p->readonly ? Q_GET : Q_FETCH;
    q.v[0] = p->store;
    q.v[1] = sid;
    if (roundtrip(p, &q, 1, &r, p->stmt_ms + (p->readonly ? 0 : p->lock_wait_ms), 0, err) != 0) {
      lua_pop(L, 1);
      PQclear(r);
      return -1;
    }
    take_row(L, p, eng, sid, r, 0, p->readonly ? 1 : 0);
    PQclear(r);
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
    q.v[0] = p->store;
    q.v[1] = now_s;
    q.v[2] = limit_s;
    if (roundtrip(p, &q, 1, &r, p->stmt_ms, 0, err) != 0) {
      PQclear(r);
      return -1;
    }
    p->live = (lua_Integer)strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    p->have_live = 1;
    PQclear(r);
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
 * 0 not, -1 cannot tell. */
static int look_up_outcome(pg_eng *p, const char *sid, int removal, const char *old_token)
{
  pgq q;
  PGresult *r = NULL;
  ps_err e2;
  int verdict = -1;
  memset(&q, 0, sizeof q);
  memset(&e2, 0, sizeof e2);
  q.q = Q_OUTCOME;
  q.v[0] = p->store;
  q.v[1] = sid;
  if (roundtrip(p, &q, 1, &r, p->stmt_ms, 0, &e2) == 0) {
    if (PQntuples(r) == 0) verdict = removal ? 1 : old_token ? -1 : 0;
    else if (!strcmp(PQgetvalue(r, 0, 0), p->token)) verdict = 1;
    else if (old_token && !strcmp(PQgetvalue(r, 0, 0), old_token)) verdict = 0;
  }
  PQclear(r);
  return verdict;
}

static int pe_end(ps_engine *e, lua_State *L, int eng, int how, ps_err *err)
{
  pg_eng *p = PE(e);
  int top = lua_gettop(L), rc = 0;

  if (!p->in_txn) return 0;
  p->in_txn = 0;
  if (!p->began) { /* a read, or nothing done: nothing to end on the server */
    reset_txn(L, p, eng);
    return 0;
  }
  if (how != PS_END_COMMIT) {
    /* roll back on the server, or drop a connection that cannot (it rolls back as it goes) */
    if (p->conn && PQstatus(p->conn) == CONNECTION_OK &&
        PQtransactionStatus(p->conn) != PQTRANS_IDLE) {
      pgq q = { -1, "ROLLBACK", { 0 }, { 0 } };
      PGresult *r = NULL;
      ps_err e2;
      if (roundtrip(p, &q, 1, &r, p->stmt_ms, 1, &e2) != 0) drop_conn(p);
      PQclear(r);
    }
    reset_txn(L, p, eng);
    return 0;
  }
  {
    pgq *q;
    PGresult **res;
    cols *cs;
    int n = 0, cap, i, pend, cut;
    lua_Integer npend = 0;
    char key_sid[64] = "", live_s[2][2] = { "t", "f" };
    const char *key_old = NULL;
    int key_removal = 0;

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
      reset_txn(L, p, eng); /* then rollback: nothing more to do here than let it go */
      return luaL_error(L, "pairstore: out of memory");
    }
    push_uv(L, eng, UV_ROWS);
    push_uv(L, eng, UV_TOKENS);
    lua_newtable(L); /* payloads of the notifications, kept alive until sent */
    push_uv(L, eng, UV_WAITED);
    lua_pushnil(L);
    i = 0;
    while (lua_next(L, pend) != 0) {
      const char *sid = lua_tostring(L, -2);
      int is_new;
      lua_getfield(L, pend + 2, sid);
      is_new = lua_isnil(L, -1);
      if (!key_sid[0]) {
        snprintf(key_sid, sizeof key_sid, "%s", sid);
        key_old = lua_tostring(L, -1); /* kept alive by UV_TOKENS */
        key_removal = lua_type(L, -2) == LUA_TBOOLEAN;
      }
      lua_pop(L, 1);
      if (lua_type(L, -1) == LUA_TBOOLEAN) { /* remove */
        q[n].q = Q_DELETE;
        q[n].v[0] = p->store;
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
        q[n].v[0] = p->store;
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
        lua_pushfstring(L, "%s%s", sid, p->store);
        q[n].q = Q_NOTIFY;
        q[n++].v[0] = lua_tostring(L, -1);
        lua_rawseti(L, pend + 3, (lua_Integer)lua_rawlen(L, pend + 3) + 1);
      }
      lua_pop(L, 2);
    }
    q[n].q = -1;
    q[n++].sql = "COMMIT";
    cut = cut_commits > 0 && npend > 0;
    if (cut) cut_commits--;
    if (cut) {
      /* test hook: the whole transaction sent, then the connection lost before the answer */
      int j;
      PGconn *c = p->conn;
      if (c && PQpipelineStatus(c) == PQ_PIPELINE_OFF) PQenterPipelineMode(c);
      for (j = 0; j < n && c; j++) {
        const pgq *x = &q[j];
        if (x->q >= 0) PQsendQueryPrepared(c, stmts[x->q].name, stmts[x->q].nparams, x->v, NULL, NULL, 0);
        else PQsendQueryParams(c, x->sql, 0, NULL, NULL, NULL, NULL, 0);
      }
      if (c) {
        int64_t dl = ps_mono_ms() + p->stmt_ms;
        PQpipelineSync(c);
        while (PQflush(c) == 1 && wait_sock(c, POLLOUT, dl) > 0) {}
        usleep(200000); /* let the server run it before the connection goes */
      }
      drop_conn(p);
      rc = -1;
      ps_err_set(err, "unavailable", "PostgreSQL %s: connection lost during COMMIT (test hook)",
                 p->display);
    } else {
      rc = roundtrip(p, q, n, res, p->stmt_ms, 0, err);
    }
    if (rc != 0 && npend > 0 && (p->lost || cut)) {
      /* The answer to COMMIT may have been lost after the server committed: find out. */
      int v = look_up_outcome(p, key_sid, key_removal, key_old);
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
    } else if (rc != 0 && p->conn && PQtransactionStatus(p->conn) != PQTRANS_IDLE) {
      /* a statement failed: the server's transaction is aborted, end it */
      pgq rb = { -1, "ROLLBACK", { 0 }, { 0 } };
      PGresult *r = NULL;
      ps_err e2;
      if (roundtrip(p, &rb, 1, &r, p->stmt_ms, 1, &e2) != 0) drop_conn(p);
      PQclear(r);
    }
    if (rc != 0 && err->code && !strcmp(err->code, "database")) {
      /* which session the server refused, and why in our terms */
      for (i = 0; i < n; i++) {
        const char *state;
        if (!res[i] || PQresultStatus(res[i]) != PGRES_FATAL_ERROR) continue;
        state = PQresultErrorField(res[i], PG_DIAG_SQLSTATE);
        if (q[i].q == Q_INSERT || q[i].q == Q_UPDATE) {
          if (state && !strcmp(state, "22021"))
            ps_err_set(err, "invalid", "PostgreSQL %s: session %.64s holds bytes that are not "
                       "valid UTF-8, which PostgreSQL cannot store as text; nothing was stored",
                       p->display, q[i].v[1]);
          else if (state && !strcmp(state, "23505"))
            ps_err_set(err, "invalid", "PostgreSQL %s: session %.64s was just stored by another "
                       "transaction; nothing was stored", p->display, q[i].v[1]);
        }
        break;
      }
    }
    for (i = 0; i < n; i++) PQclear(res[i]);
    free(q);
    free(res);
    free(cs);
  }
  lua_settop(L, top);
  reset_txn(L, p, eng);
  return rc;
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

typedef struct pg_watch {
  pg_eng *p;             /* kept alive by the watcher (its user value is the engine) */
  unsigned gen;          /* the connection it listens on */
  char payload[33 + 256];
} pg_watch;

static int watch_fd(void *ctx)
{
  pg_watch *w = ctx;
  if (!w->p->conn || w->p->gen != w->gen || !w->p->listening) return -1;
  return PQsocket(w->p->conn);
}

static int watch_drain(void *ctx)
{
  pg_watch *w = ctx;
  pg_eng *p = w->p;
  PGnotify *nt;
  int hit = 0;
  if (!p->conn || p->gen != w->gen || !p->listening) {
    /* a new connection since (notifications may have been missed): look again */
    w->gen = p->gen;
    return 1;
  }
  if (PQconsumeInput(p->conn) != 1) return 1;
  while ((nt = PQnotifies(p->conn)) != NULL) {
    if (!strcmp(nt->extra, w->payload)) hit = 1;
    PQfreemem(nt);
  }
  return hit;
}

static void watch_close(void *ctx)
{
  pg_watch *w = ctx;
  w->p->watchers--;
  free(w);
}

static const ps_watch_source pg_source = { watch_fd, watch_drain, watch_close };

static int pe_watch(ps_engine *e, lua_State *L, int eng, const char *sid, ps_err *err)
{
  pg_eng *p = PE(e);
  pg_watch *w = malloc(sizeof *w);
  int64_t txn_bound = p->bound; /* (a running transaction's, given back) */
  if (!w) {
    ps_err_set(err, "io", "watch: out of memory (ENOMEM)");
    return -1;
  }
  w->p = p;
  snprintf(w->payload, sizeof w->payload, "%s%s", sid, p->store);
  p->watchers++;
  p->bound = p->until; /* for this call only */
  p->until = 0;
  if (connect_db(p, err) != 0) {
    p->bound = txn_bound;
    p->watchers--;
    free(w);
    return -1;
  }
  {
    /* listen first, then say so on the row: a change after that is notified */
    pgq q[2];
    PGresult *r[2] = { NULL, NULL };
    int n = 0, rc;
    memset(q, 0, sizeof q);
    if (!p->listening) {
      q[n].q = -1;
      q[n++].sql = "LISTEN " NOTIFY_CHANNEL;
    }
    q[n].q = Q_WAIT;
    q[n].v[0] = p->store;
    q[n].v[1] = sid;
    q[n++].v[2] = PS_PG_WAIT_HORIZON;
    rc = roundtrip(p, q, n, r, p->stmt_ms + p->lock_wait_ms, 0, err);
    p->bound = txn_bound;
    if (rc != 0) {
      clear_all(r, n);
      p->watchers--;
      free(w);
      return -1;
    }
    clear_all(r, n);
    p->listening = 1;
  }
  w->gen = p->gen;
  ps_watcher_push(L, &pg_source, w, eng, p->display);
  return 0;
}

/* ---- making one ----------------------------------------------------------------------------- */

static void pe_close(ps_engine *e)
{
  pg_eng *p = PE(e);
  drop_conn(p);
  if (p->hidden_user) sodium_memzero(p->hidden_user, strlen(p->hidden_user));
  if (p->hidden_db) sodium_memzero(p->hidden_db, strlen(p->hidden_db));
  if (p->conninfo) sodium_memzero(p->conninfo, strlen(p->conninfo));
  free(p->conninfo);
  free(p->display);
  free(p->store);
  free(p->hidden_user);
  free(p->hidden_db);
  p->conninfo = p->display = p->store = p->hidden_user = p->hidden_db = NULL;
}

static const ps_engine_methods pg_methods = {
  PS_ENGINE_VERSION, "postgresql", pe_display, pe_locate, pe_begin, pe_clock, pe_fetch, pe_put,
  pe_remove, pe_count_live, pe_list, pe_text, pe_prune_due, pe_end, pe_event, pe_events_clear,
  pe_watch, pe_close,
};

static int pe_gc(lua_State *L)
{
  pg_eng *p = luaL_checkudata(L, 1, PS_PGENGINE_MT);
  pe_close(&p->base);
  return 0;
}

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
  for (i = 0; c && i < pg_uri_prefix(c); i++) c[i] = (char)tolower((unsigned char)c[i]);
  return c;
}

/* Pushes the display form of a PostgreSQL target (nil, why: libpq cannot parse it). */
int ps_pg_push_display(lua_State *L, const char *target, const char *store)
{
  char *errmsg = NULL, *d, *conninfo = conninfo_of(target);
  PQconninfoOption *opts, *x;
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

ps_engine *ps_pg_engine_new(lua_State *L, const char *target, const ps_pg_opts *o, int decode)
{
  pg_eng *p;
  PQconninfoOption *opts, *x;
  char *errmsg = NULL;
  int i;

  decode = lua_absindex(L, decode);
  p = lua_newuserdatauv(L, sizeof *p, UV_COUNT);
  memset(p, 0, sizeof *p);
  p->base.m = &pg_methods;
  if (luaL_newmetatable(L, PS_PGENGINE_MT)) { /* before any resource is acquired */
    lua_pushcfunction(L, pe_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  p->conninfo = conninfo_of(target);
  if (!p->conninfo) luaL_error(L, "pairstore.open: out of memory");
  opts = PQconninfoParse(p->conninfo, &errmsg);
  if (!opts) {
    lua_pushfstring(L, "pairstore.open: invalid PostgreSQL target: %s (the target is not shown)",
                    parse_error(errmsg));
    PQfreemem(errmsg);
    lua_error(L);
  }
  p->store = strdup(o->store);
  p->display = make_display(opts, o->store);
  for (x = opts; x->keyword; x++) {
    if (!x->val) continue;
    if (!strcmp(x->keyword, "user") && !user_shown(x->val)) p->hidden_user = strdup(x->val);
    if (!strcmp(x->keyword, "dbname") && !db_shown(x->val)) p->hidden_db = strdup(x->val);
  }
  for (x = opts; x->keyword; x++)
    if (x->val) sodium_memzero(x->val, strlen(x->val));
  PQconninfoFree(opts);
  if (!p->conninfo || !p->store || !p->display) {
    pe_close(&p->base);
    luaL_error(L, "pairstore.open: out of memory");
  }
  p->lock_wait_ms = o->lock_wait_ms;
  p->connect_ms = o->connect_timeout_ms;
  p->stmt_ms = o->statement_timeout_ms;
  p->durable = o->durable;
  p->max_session_bytes = o->max_session_bytes;
  p->next_prune = INT64_MAX;
  lua_pushvalue(L, decode);
  lua_setiuservalue(L, -2, UV_DECODE);
  for (i = UV_ROWS; i <= UV_WAITED; i++) {
    lua_newtable(L);
    lua_setiuservalue(L, -2, i);
  }
  return &p->base;
}
