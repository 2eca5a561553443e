/*
 * pg_link.c — the PostgreSQL engine's transport: links (a connection and how to reach it) in
 * a process-wide table, connecting within a deadline, the schema's bootstrap, the pipelined
 * round trip with its deadline and the SQLSTATE it maps to a code, and the two entry points
 * an nginx worker thread calls (run a handed-over round trip; wait for notifications).
 */
#include "pg.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#define SCHEMA_VERSION 1


/* The statements (see pg.h). The transaction's time in ms is the server's clock at the start
 * of the transaction (for a read, of its one statement), the same in every statement of it. */
#define NOW_MS "floor(date_part('epoch', transaction_timestamp()) * 1000)::int8"
/* How long a statement has run so far, in us: statement_timestamp() is when its Execute
 * arrived (planning, at Bind, is not counted). Evaluated over a CTE that takes row locks
 * (a CTE with FOR UPDATE is never inlined: it runs first), it is how long they were waited
 * for, give or take the executor's microseconds. */
#define RAN_US "floor(date_part('epoch', clock_timestamp() - statement_timestamp()) * 1000000)::int8"

const char *const pg_stmt_sql[Q_NSTMT] = {
  /* Q_CLOCK */
  "SELECT " NOW_MS ", LEAST("
  "(SELECT min(prune_at) FROM pairstore_sessions WHERE store = $1 AND live), "
  "(SELECT min(prune_at) FROM pairstore_sessions WHERE store = $1 AND NOT live))",
  /* Q_LOCK_STORE (its one row: how long the lock took) */
  "WITH l AS (SELECT 1 FROM pairstore_stores WHERE store = $1 FOR UPDATE) SELECT " RAN_US " FROM l",
  /* Q_COUNT */
  "SELECT count(*) FROM (SELECT 1 FROM pairstore_sessions WHERE store = $1 AND live "
  "AND prune_at >= COALESCE($2::int8, " NOW_MS ") LIMIT $3::int8) AS t",
  /* Q_FETCH (and how long its row's lock took) */
  "WITH l AS (SELECT body, live, txn, waited_until FROM pairstore_sessions WHERE store = $1 "
  "AND sid = $2 FOR UPDATE) SELECT body, live, txn, waited_until, " RAN_US " FROM l",
  /* Q_GET (no row: no clock either, and none is needed to say not_found) */
  "SELECT " NOW_MS ", body, live, txn FROM pairstore_sessions WHERE store = $1 AND sid = $2",
  /* Q_LIST */
  "SELECT c.now_ms, s.body, s.live, s.txn, s.sid FROM (SELECT " NOW_MS " AS now_ms) AS c "
  "LEFT JOIN pairstore_sessions AS s ON s.store = $1 AND (s.live OR NOT $2::boolean) "
  "ORDER BY s.created_at, s.sid",
  /* Q_INSERT */
  "INSERT INTO pairstore_sessions (store, sid, status, live, created_at, changed_at, "
  "expires_at, prune_at, txn, body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
  /* Q_UPDATE */
  "UPDATE pairstore_sessions SET status = $3, live = $4, created_at = $5, changed_at = $6, "
  "expires_at = $7, prune_at = $8, txn = $9, body = $10 WHERE store = $1 AND sid = $2",
  /* Q_DELETE */
  "DELETE FROM pairstore_sessions WHERE store = $1 AND sid = $2",
  /* Q_EXPIRE, Q_DROP: pruning, set-based: expire the live rows past their expiry
   * (lastStatusChangeAtMs becomes expiresAtMs, as the rule says), then delete the terminal
   * rows past their retention. Rows another transaction holds are skipped (a later prune
   * takes them): pruning never waits. The rows' txn stays: it still names the transaction
   * that last wrote their text (what a lost COMMIT's lookup compares). */
  "UPDATE pairstore_sessions SET status = 'expired', live = false, changed_at = expires_at, "
  "prune_at = prune_at + $3::int8 WHERE store = $1 AND sid IN (SELECT sid FROM "
  "pairstore_sessions WHERE store = $1 AND live AND prune_at < $2::int8 FOR UPDATE SKIP LOCKED)",
  "DELETE FROM pairstore_sessions WHERE store = $1 AND sid IN (SELECT sid FROM "
  "pairstore_sessions WHERE store = $1 AND NOT live AND prune_at < $2::int8 FOR UPDATE SKIP LOCKED)",
  /* Q_NOTIFY */
  "SELECT pg_notify('" PG_NOTIFY_CHANNEL "', $1)",
  /* Q_OUTCOME */
  "SELECT txn FROM pairstore_sessions WHERE store = $1 AND sid = $2",
  /* Q_WAIT: a waiter says so on the row itself: a writer that locked the row before waits
   * it out (the waiter then reads its change); one that locks it after sees waited_until. */
  "UPDATE pairstore_sessions SET waited_until = GREATEST(waited_until, " NOW_MS
  " + $3::int8) WHERE store = $1 AND sid = $2",
};

const int pg_stmt_nparams[Q_NSTMT] = { 1, 1, 3, 2, 2, 2, 10, 10, 2, 3, 2, 1, 2, 3 };

/* ---- for the tests: round trips so far (the test build only) -------------------------------- */

#ifdef PS_TEST
static long roundtrips;

long ps_pg_roundtrips(void)
{
  return __atomic_load_n(&roundtrips, __ATOMIC_RELAXED);
}
#endif

void ps_pg_count_roundtrip(void)
{
#ifdef PS_TEST
  __atomic_add_fetch(&roundtrips, 1, __ATOMIC_RELAXED);
#endif
}

/* ---- the table of links ------------------------------------------------------------------ */

static pthread_mutex_t links_mu = PTHREAD_MUTEX_INITIALIZER;
static pg_link **links;
static size_t nlinks, caplinks;
static unsigned next_id = 1;

static void link_release_memory(pg_link *k)
{
  int i;
  if (k->res) {
    for (i = 0; i < k->pend_n; i++) PQclear(k->res[i]);
    free(k->res);
  }
  if (k->hidden_user) sodium_memzero(k->hidden_user, strlen(k->hidden_user));
  if (k->hidden_db) sodium_memzero(k->hidden_db, strlen(k->hidden_db));
  if (k->conninfo) sodium_memzero(k->conninfo, strlen(k->conninfo));
  free(k->conninfo);
  free(k->display);
  free(k->store);
  free(k->hidden_user);
  free(k->hidden_db);
  free(k->pend);
  if (k->pend_buf) sodium_memzero(k->pend_buf, k->pend_len);
  free(k->pend_buf);
  free(k);
}

pg_link *pg_link_new(const char *conninfo, const char *display, const char *store,
                     const char *hidden_user, const char *hidden_db, const ps_pg_opts *o)
{
  pg_link *k = calloc(1, sizeof *k);
  if (!k) return NULL;
  k->conninfo = strdup(conninfo);
  k->display = strdup(display);
  k->store = strdup(store);
  k->hidden_user = hidden_user ? strdup(hidden_user) : NULL;
  k->hidden_db = hidden_db ? strdup(hidden_db) : NULL;
  if (!k->conninfo || !k->display || !k->store || (hidden_user && !k->hidden_user) ||
      (hidden_db && !k->hidden_db)) {
    link_release_memory(k);
    return NULL;
  }
  k->lock_wait_ms = o->lock_wait_ms;
  k->connect_ms = o->connect_timeout_ms;
  k->stmt_ms = o->statement_timeout_ms;
  k->durable = o->durable;
  pthread_mutex_lock(&links_mu);
  if (nlinks == caplinks) {
    size_t cap = caplinks ? 2 * caplinks : 16;
    pg_link **nl = realloc(links, cap * sizeof *nl);
    if (!nl) {
      pthread_mutex_unlock(&links_mu);
      link_release_memory(k);
      return NULL;
    }
    links = nl;
    caplinks = cap;
  }
  k->id = next_id++;
  if (next_id == 0) next_id = 1;
  links[nlinks++] = k;
  pthread_mutex_unlock(&links_mu);
  return k;
}

/* Under the mutex: removes k from the table. */
static void unregister(pg_link *k)
{
  size_t i;
  for (i = 0; i < nlinks; i++) {
    if (links[i] == k) {
      links[i] = links[--nlinks];
      break;
    }
  }
  if (nlinks == 0) { /* (none left: nothing kept past the last, the module may be unloaded) */
    free(links);
    links = NULL;
    caplinks = 0;
  }
}

void pg_link_drop(pg_link *k)
{
  if (!k->conn) return;
  if (k->pid != getpid()) {
    /* A forked child: the socket is its parent's too. Close our copy first, so that freeing
     * the connection sends nothing on it (no Terminate, no TLS close). */
    int fd = PQsocket(k->conn);
    if (fd >= 0) close(fd);
  }
  PQfinish(k->conn);
  k->conn = NULL;
  k->listening = 0;
}

void pg_link_break(pg_link *k)
{
  if (k->conn && k->pid == getpid()) k->broken = 1;
  pg_link_drop(k);
}

void pg_link_free(pg_link *k)
{
  int later;
  if (!k) return;
  pthread_mutex_lock(&links_mu);
  later = k->busy;
  if (later) k->orphan = 1; /* the worker thread frees it when its round trip ends */
  else unregister(k);
  pthread_mutex_unlock(&links_mu);
  if (later) return;
  pg_link_drop(k);
  link_release_memory(k);
}

int pg_link_state(pg_link *k, int64_t *done_ms, int *connect_failed)
{
  int st;
  pthread_mutex_lock(&links_mu);
  st = k->busy ? 2 : k->done && k->res ? 1 : 0;
  *done_ms = k->done_ms;
  *connect_failed = k->connect_failed;
  pthread_mutex_unlock(&links_mu);
  return st;
}

int pg_link_idle(pg_link *k)
{
  return !k->conn || PQstatus(k->conn) != CONNECTION_OK ||
         PQtransactionStatus(k->conn) == PQTRANS_IDLE;
}

/* Takes the link with this id for a worker thread: NULL if there is none or it is busy. */
static pg_link *take(unsigned id)
{
  size_t i;
  pg_link *k = NULL;
  pthread_mutex_lock(&links_mu);
  for (i = 0; i < nlinks; i++) {
    if (links[i]->id == id) {
      if (!links[i]->busy) {
        k = links[i];
        k->busy = 1;
      }
      break;
    }
  }
  pthread_mutex_unlock(&links_mu);
  return k;
}

/* Gives a link back after a worker thread's round trip; frees it if its owner went away. */
static void give_back(pg_link *k)
{
  int orphan;
  pthread_mutex_lock(&links_mu);
  k->busy = 0;
  orphan = k->orphan;
  if (orphan) unregister(k);
  pthread_mutex_unlock(&links_mu);
  if (orphan) {
    pg_link_drop(k); /* the server rolls back whatever the connection held */
    link_release_memory(k);
  }
}

/* ---- messages ------------------------------------------------------------------------------ */

void pg_set_err(const pg_link *k, ps_err *err, const char *code, const char *fmt,
                const char *detail)
{
  char d[2048], *c;
  size_t n;
  snprintf(d, sizeof d, "%s", detail ? detail : "");
  n = strlen(d);
  while (n && (d[n - 1] == '\n' || d[n - 1] == ' ')) d[--n] = '\0';
  for (c = d; *c; c++) /* libpq's lines, as one */
    if (*c == '\n' || *c == '\t') *c = ' ';
  if ((k->hidden_user && strstr(d, k->hidden_user)) || (k->hidden_db && strstr(d, k->hidden_db)))
    snprintf(d, sizeof d, "[the server's message is not shown: it names the user or database "
             "that the target's display hides]");
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
  ps_err_set(err, code, fmt, k->display, d);
#pragma GCC diagnostic pop
}

/* ---- connecting ------------------------------------------------------------------------------ */

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

/* Creates the tables (one transaction) unless another host just did. */
static int create_schema(pg_link *k, ps_err *err)
{
  PGresult *r = NULL;
  pgq q = { Q_SIMPLE, ps_pg_schema_sql, { 0 } };
  const char *state;
  int rc;
  rc = pg_roundtrip(k, &q, 1, &r, k->stmt_ms, 1, err);
  if (rc == 0) {
    PQclear(r);
    return 0;
  }
  state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
  if (state && (!strcmp(state, "42P07") || !strcmp(state, "23505") || !strcmp(state, "42710"))) {
    /* created meanwhile (a table, its row, an index or type by another host) */
    PQclear(r);
    return 0;
  }
  if (state && !strcmp(state, "42501"))
    pg_set_err(k, err, "schema", "PostgreSQL %s: the pairstore tables do not exist and this role "
               "may not create them (%s); have their owner run sql/pairstore.sql (`pairstore schema` "
               "prints it) and grant this role SELECT, INSERT, UPDATE, DELETE on them",
               PQresultErrorMessage(r));
  PQclear(r);
  return -1;
}

/* What a new connection needs before the first transaction: the schema (made if missing),
 * the store's row, LISTEN on a watcher's link. Nothing of the connection's own state is
 * relied on afterwards (a pooler may give each transaction another server connection): the
 * settings are each transaction's own. */
static int setup(pg_link *k, ps_err *err)
{
  PGresult *res[3] = { 0 };
  pgq q[3];
  int i, n = 0, rc, version = -1;
  const char *state;

  memset(q, 0, sizeof q);
  q[n].q = Q_SQL;
  q[n++].sql = "SELECT max(version) FROM pairstore_schema";
  rc = pg_roundtrip(k, q, 1, res, k->stmt_ms, 1, err);
  if (rc != 0 && res[0] && (state = PQresultErrorField(res[0], PG_DIAG_SQLSTATE)) &&
      !strcmp(state, "42P01")) {
    PQclear(res[0]);
    res[0] = NULL;
    if (create_schema(k, err) != 0) return -1;
    rc = pg_roundtrip(k, q, 1, res, k->stmt_ms, 1, err);
  }
  if (rc == 0) version = PQgetisnull(res[0], 0, 0) ? 0 : atoi(PQgetvalue(res[0], 0, 0));
  PQclear(res[0]);
  if (rc != 0) return -1;
  if (version != SCHEMA_VERSION) {
    ps_err_set(err, "unsupported_version", "PostgreSQL %s: the pairstore schema has version %d; "
               "this pairstore uses version %d", k->display, version, SCHEMA_VERSION);
    return -1;
  }
  n = 0;
  q[n].q = Q_SQL;
  q[n].sql = "INSERT INTO pairstore_stores (store) VALUES ($1) ON CONFLICT DO NOTHING";
  q[n++].v[0] = k->store;
  if (k->listen) {
    q[n].q = Q_SQL;
    q[n++].sql = "LISTEN " PG_NOTIFY_CHANNEL;
  }
  rc = pg_roundtrip(k, q, n, res, k->stmt_ms, 1, err);
  for (i = 0; i < n; i++) PQclear(res[i]);
  if (rc != 0) return -1;
  k->listening = k->listen;
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
static void connect_failed(pg_link *k, ps_err *err)
{
  const char *m = PQerrorMessage(k->conn), *code;
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
  code = state[0] ? code_of(state, &drop) : PQconnectionNeedsPassword(k->conn) ? "denied" : "unavailable";
  if (!strcmp(code, "timeout") || !strcmp(code, "busy")) code = "unavailable";
  pg_set_err(k, err, code, "PostgreSQL %s: cannot connect: %s", d);
}

/* Notes which server a new connection reached (see pg_link: reconnects, moves): host:port as
 * libpq reached it, which of a multi-host target's hosts it is, with the address a host name
 * resolved to (a name that now points elsewhere is another server). */
static void note_server(pg_link *k)
{
  char id[sizeof k->server];
  const char *host = PQhost(k->conn), *addr = PQhostaddr(k->conn), *port = PQport(k->conn);
  if (!host) host = "";
  if (!port) port = "";
  if (addr && *addr && strcmp(addr, host) != 0)
    snprintf(id, sizeof id, "%s (%s):%s", host, addr, port);
  else
    snprintf(id, sizeof id, "%s:%s", host, port);
  if (k->server[0]) { /* the link had a connection before this one */
    if (k->broken) k->reconnects++;
    if (strcmp(k->server, id) != 0) {
      k->moves++;
      memcpy(k->server_before, k->server, sizeof k->server_before);
    }
  }
  memcpy(k->server, id, sizeof k->server);
  k->broken = 0;
}

int pg_connect(pg_link *k, ps_err *err)
{
  PostgresPollingStatusType st = PGRES_POLLING_WRITING;
  int64_t deadline;

  k->connect_failed = 0;
  if (k->conn && k->pid != getpid()) { /* a forked child: its own, none broke */
    pg_link_drop(k);
    k->broken = 0;
  }
  if (k->conn && PQstatus(k->conn) == CONNECTION_OK) return 0;
  pg_link_break(k); /* (one there: libpq found it broken) */
  k->connect_failed = 1;
  k->conn = PQconnectStart(k->conninfo);
  if (!k->conn) {
    ps_err_set(err, "unavailable", "PostgreSQL %s: out of memory", k->display);
    return -1;
  }
  k->pid = getpid();
  k->gen++;
  PQsetNoticeProcessor(k->conn, quiet, NULL);
  PQsetErrorVerbosity(k->conn, PQERRORS_SQLSTATE); /* the server's refusal: no names */
  deadline = ps_mono_ms() + k->connect_ms;
  if (k->bound && k->bound < deadline) deadline = k->bound;
  if (PQstatus(k->conn) == CONNECTION_BAD) st = PGRES_POLLING_FAILED;
  while (st != PGRES_POLLING_OK) {
    int w;
    if (st == PGRES_POLLING_FAILED) {
      connect_failed(k, err);
      pg_link_drop(k);
      return -1;
    }
    w = wait_sock(k->conn, st == PGRES_POLLING_READING ? POLLIN : POLLOUT, deadline);
    if (w == 0) {
      if (k->bound && deadline == k->bound)
        ps_err_set(err, "timeout", "PostgreSQL %s: no connection by the caller's deadline",
                   k->display);
      else
        ps_err_set(err, "timeout", "PostgreSQL %s: no connection within connect_timeout_ms (%d)",
                   k->display, k->connect_ms);
      pg_link_drop(k);
      return -1;
    }
    if (w < 0) {
      connect_failed(k, err);
      pg_link_drop(k);
      return -1;
    }
    st = PQconnectPoll(k->conn);
  }
  PQsetErrorVerbosity(k->conn, PQERRORS_DEFAULT);
  if (PQsetnonblocking(k->conn, 1) != 0 || setup(k, err) != 0) {
    if (!err->code) pg_set_err(k, err, "unavailable", "PostgreSQL %s: %s", PQerrorMessage(k->conn));
    pg_link_drop(k);
    return -1;
  }
  k->connect_failed = 0;
  note_server(k);
  return 0;
}

/* ---- the round trip ---------------------------------------------------------------------------- */

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

/* Sends one statement of a pipeline (or the simple query). */
static int send_one(PGconn *c, const pgq *q, int pipeline)
{
  int np = 0;
  if (q->q < Q_NSTMT)
    return PQsendQueryParams(c, pg_stmt_sql[q->q], pg_stmt_nparams[q->q], NULL, q->v, NULL, NULL, 0);
  if (!pipeline) return PQsendQuery(c, q->sql);
  while (np < PG_MAX_PARAMS && q->v[np]) np++;
  return PQsendQueryParams(c, q->sql, np, NULL, q->v, NULL, NULL, 0);
}

/* The message of a failed statement r, and its code. */
static void statement_failed(pg_link *k, PGresult *r, int *drop, ps_err *err)
{
  const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
  const char *code = code_of(state, drop);
  char msg[1200];
  snprintf(msg, sizeof msg, "%s (SQLSTATE %s)", PQresultErrorMessage(r), state ? state : "none");
  snprintf(k->state, sizeof k->state, "%s", state ? state : "");
  k->cancel = strstr(PQresultErrorMessage(r), "due to user request") != NULL;
  if (state && !strcmp(state, "55P03")) {
    snprintf(msg, sizeof msg, "a row is locked by another transaction: no lock within "
             "lock_wait_ms (%d)", k->lock_wait_ms);
  }
  pg_set_err(k, err, code, "PostgreSQL %s: %s", msg);
}

/* Collects the results of a round trip of n statements (pipeline: each ends with NULL, the
 * whole with its sync; a simple query ends with NULL). 0 collected (failed: a statement
 * failed, its error in err), 1 deadline passed, 2 connection lost. */
static int collect(pg_link *k, PGconn *c, int n, int pipeline, PGresult **res, int64_t deadline,
                   int *failed, int *drop, ps_err *err)
{
  int i;
  for (i = 0; i < (pipeline ? n + 1 : 1); i++) {
    for (;;) {
      PGresult *r;
      while (PQisBusy(c)) {
        int w = wait_sock(c, POLLIN, deadline);
        if (w == 0) return 1;
        if (w < 0 || PQconsumeInput(c) != 1) return 2;
      }
      r = PQgetResult(c);
      if (!r) {
        if (pipeline && i == n) return 2; /* no sync: cannot be */
        break;
      }
      switch (PQresultStatus(r)) {
      case PGRES_PIPELINE_SYNC:
        PQclear(r);
        return i == n ? 0 : 2; /* (a statement without its result cannot be) */
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
        if (!*failed) {
          *failed = 1;
          statement_failed(k, r, drop, err);
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
  return 0;
}

int pg_roundtrip(pg_link *k, const pgq *qs, int n, PGresult **res, int64_t budget,
                 int connecting, ps_err *err)
{
  int64_t deadline = ps_mono_ms() + budget;
  int i, failed = 0, drop = 0, pipeline, rc, by_caller = 0;
  PGconn *c;

  if (k->bound && k->bound < deadline) { /* the caller's deadline comes first */
    deadline = k->bound;
    by_caller = 1;
  }
  k->lost = 0;
  k->state[0] = '\0';
  k->cancel = 0;
  ps_pg_count_roundtrip();
  for (i = 0; i < n; i++) res[i] = NULL;
  if (!connecting && pg_connect(k, err) != 0) return -1;
  c = k->conn;
  /* A pipeline for the round trip only: between round trips the connection is in normal
   * mode, where libpq reads the notifications a watcher waits for as they come (in pipeline
   * mode it leaves them unparsed until the next statement). */
  pipeline = !(n == 1 && qs[0].q == Q_SIMPLE);
  if (pipeline && PQpipelineStatus(c) == PQ_PIPELINE_OFF && PQenterPipelineMode(c) != 1) goto lost;
  for (i = 0; i < n; i++)
    if (!send_one(c, &qs[i], pipeline)) goto lost;
  if (pipeline && PQpipelineSync(c) != 1) goto lost;
  for (;;) { /* send it all */
    int f = PQflush(c), w;
    if (f == 0) break;
    if (f < 0) goto lost;
    w = wait_sock(c, POLLOUT | POLLIN, deadline);
    if (w == 0) goto timed_out;
    if (w < 0 || PQconsumeInput(c) != 1) goto lost;
  }
  rc = collect(k, c, n, pipeline, res, deadline, &failed, &drop, err);
  if (rc == 1) goto timed_out;
  if (rc == 2) goto lost;
  if (!failed && PQstatus(c) == CONNECTION_BAD) goto lost;
  if (!failed) for (i = 0; i < n; i++) if (!res[i]) goto lost;
  if (pipeline && PQexitPipelineMode(c) != 1) goto lost; /* every result was read: cannot be */
  if (!k->listen) { /* notifications nobody waits for */
    PGnotify *nt;
    while ((nt = PQnotifies(c)) != NULL) PQfreemem(nt);
  }
  if (failed && drop) pg_link_break(k);
  return failed ? -1 : 0;

timed_out:
  k->lost = 1;
  if (by_caller)
    ps_err_set(err, "timeout", "PostgreSQL %s: no answer by the caller's deadline", k->display);
  else
    ps_err_set(err, "timeout", "PostgreSQL %s: no answer within %lld ms (statement_timeout_ms = %d)",
               k->display, (long long)budget, k->stmt_ms);
  pg_link_break(k);
  return -1;
lost:
  k->lost = 1;
  pg_set_err(k, err, "unavailable", "PostgreSQL %s: connection lost: %s", PQerrorMessage(c));
  pg_link_break(k);
  return -1;
}

int pg_exchange(pg_link *k, const pgq *qs, int n, PGresult **res, int64_t budget,
                int64_t deadline, int retry, ps_err *err)
{
  int attempt, rc = -1, i;
  for (attempt = 0; attempt < 2; attempt++) {
    int reused = k->conn && k->pid == getpid() && PQstatus(k->conn) == CONNECTION_OK;
    if (deadline) {
      budget = deadline - ps_mono_ms();
      if (budget <= 0) {
        ps_err_set(err, "timeout", "PostgreSQL %s: no answer within statement_timeout_ms "
                   "(%d): the round trip waited for a worker thread", k->display, k->stmt_ms);
        return -1;
      }
    }
    memset(err, 0, sizeof *err);
    rc = pg_roundtrip(k, qs, n, res, budget, 0, err);
    /* again only when nothing was done: the round trip may be retried, the connection was
     * one made before (not the one just made) and it turned out broken (dropped) */
    if (rc == 0 || !retry || !reused || !err->code || strcmp(err->code, "unavailable") != 0 ||
        k->conn)
      break;
    for (i = 0; i < n; i++) {
      PQclear(res[i]);
      res[i] = NULL;
    }
  }
  return rc;
}

/* ---- handing a round trip to a worker thread ------------------------------------------------- */

uint64_t pg_hash(const pgq *qs, int n)
{
  uint64_t h = 1469598103934665603ULL;
  int i, j;
#define MIX(b) (h = (h ^ (uint64_t)(unsigned char)(b)) * 1099511628211ULL)
  for (i = 0; i < n; i++) {
    const char *s;
    MIX(qs[i].q);
    if (qs[i].sql) for (s = qs[i].sql; *s; s++) MIX(*s);
    for (j = 0; j < PG_MAX_PARAMS; j++) {
      MIX(qs[i].v[j] ? 1 : 0);
      if (qs[i].v[j]) for (s = qs[i].v[j]; *s; s++) MIX(*s);
      MIX(0);
    }
  }
#undef MIX
  return h;
}

int pg_link_hand_over(pg_link *k, const pgq *qs, int n, int64_t budget, int retry,
                      uint64_t hash)
{
  size_t need = 0, at = 0;
  int i, j;
  pgq *p;
  char *buf;
  for (i = 0; i < n; i++)
    for (j = 0; j < PG_MAX_PARAMS; j++)
      if (qs[i].v[j]) need += strlen(qs[i].v[j]) + 1;
  p = malloc((size_t)(n ? n : 1) * sizeof *p);
  buf = malloc(need ? need : 1);
  if (!p || !buf) {
    free(p);
    free(buf);
    return -1;
  }
  for (i = 0; i < n; i++) {
    p[i] = qs[i];
    for (j = 0; j < PG_MAX_PARAMS; j++) {
      if (!qs[i].v[j]) continue;
      size_t l = strlen(qs[i].v[j]) + 1;
      memcpy(buf + at, qs[i].v[j], l);
      p[i].v[j] = buf + at;
      at += l;
    }
  }
  if (k->res) { /* an outcome nobody took */
    for (i = 0; i < k->pend_n; i++) PQclear(k->res[i]);
    free(k->res);
    k->res = NULL;
  }
  free(k->pend);
  if (k->pend_buf) sodium_memzero(k->pend_buf, k->pend_len); /* session texts hold keys */
  free(k->pend_buf);
  k->pend = p;
  k->pend_buf = buf;
  k->pend_len = need;
  k->pend_n = n;
  k->pend_deadline = ps_mono_ms() + budget;
  k->pend_retry = retry;
  k->pend_hash = hash;
  k->done = 0;
  return 0;
}

/* On a worker thread: runs the round trip handed over to link id, within what is left of
 * its budget. A transaction that failed is rolled back at once (what its engine would do
 * next), so that no row stays locked while the request comes back for the outcome. 0, or
 * -1: no such link, or it is busy. */
static int perform(unsigned id)
{
  pg_link *k = take(id);
  if (!k) return -1;
  k->res = calloc((size_t)(k->pend_n ? k->pend_n : 1), sizeof *k->res);
  memset(&k->err, 0, sizeof k->err);
  if (!k->res) {
    ps_err_set(&k->err, "unavailable", "PostgreSQL %s: out of memory", k->display);
    k->rc = -1;
  } else {
    k->rc = pg_exchange(k, k->pend, k->pend_n, k->res, 0, k->pend_deadline, k->pend_retry, &k->err);
    if (k->rc != 0 && k->conn && !pg_link_idle(k)) {
      pgq rb = { Q_SQL, "ROLLBACK", { 0 } };
      PGresult *r = NULL;
      ps_err e2;
      char state[6];
      int lost = k->lost, cancel = k->cancel;
      memcpy(state, k->state, sizeof state); /* (what the round trip said, not the rollback) */
      if (pg_roundtrip(k, &rb, 1, &r, k->stmt_ms, 1, &e2) != 0) pg_link_break(k);
      PQclear(r);
      memcpy(k->state, state, sizeof state);
      k->lost = lost;
      k->cancel = cancel;
    }
  }
  k->done = 1;
  k->done_ms = ps_mono_ms();
  give_back(k);
  return 0;
}

/* On a worker thread: waits up to ms for notifications on a watcher's link (connecting and
 * listening first if needed). Pushes an array of the notifications' payloads and the
 * link's connection generation (a new one: notifications may have been missed), or nil,
 * message, code. */
static int listen_poll(lua_State *L, unsigned id, int ms)
{
  pg_link *k = take(id);
  ps_err err;
  int n = 0;
  if (!k) {
    lua_pushnil(L);
    lua_pushliteral(L, "pairstore: the watcher's link is gone or busy");
    lua_pushliteral(L, "closed");
    return 3;
  }
  memset(&err, 0, sizeof err);
  if (pg_connect(k, &err) != 0) {
    give_back(k);
    return ps_push_err(L, &err);
  }
  lua_newtable(L);
  for (;;) {
    PGnotify *nt;
    if (PQconsumeInput(k->conn) != 1) {
      pg_set_err(k, &err, "unavailable", "PostgreSQL %s: connection lost: %s", PQerrorMessage(k->conn));
      pg_link_break(k);
      give_back(k);
      lua_pop(L, 1);
      return ps_push_err(L, &err);
    }
    while ((nt = PQnotifies(k->conn)) != NULL) {
      lua_pushstring(L, nt->extra);
      lua_rawseti(L, -2, ++n);
      PQfreemem(nt);
    }
    if (n > 0 || ms <= 0) break;
    {
      int64_t until = ps_mono_ms() + ms;
      int w = wait_sock(k->conn, POLLIN, until);
      ms = 0; /* read what came, once */
      if (w < 0) continue;
      if (w == 0) break;
    }
  }
  lua_pushinteger(L, (lua_Integer)k->gen);
  give_back(k);
  return 2;
}

/* pg_perform(id) -> true | nil, message (a worker thread's entry point). */
static int l_perform(lua_State *L)
{
  lua_Integer id = luaL_checkinteger(L, 1);
  if (perform((unsigned)id) != 0) {
    lua_pushnil(L);
    lua_pushliteral(L, "pairstore: the link is gone or busy");
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* pg_listen(id, ms) -> payloads, generation | nil, message, code */
static int l_listen(lua_State *L)
{
  lua_Integer id = luaL_checkinteger(L, 1), ms = luaL_checkinteger(L, 2);
  luaL_argcheck(L, ms >= 0 && ms <= 3600000, 2, "ms out of range");
  return listen_poll(L, (unsigned)id, (int)ms);
}

void ps_pg_register(lua_State *L)
{
  lua_pushcfunction(L, l_perform);
  lua_setfield(L, -2, "pg_perform");
  lua_pushcfunction(L, l_listen);
  lua_setfield(L, -2, "pg_listen");
}
