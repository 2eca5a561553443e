/*
 * pg.h — what the PostgreSQL engine (engine_pg.c) and its transport (pg_link.c) share: a
 * link (one connection and how to reach it), the statements, and the pipelined round trip.
 * The engine never touches libpq's connection: it hands statements to a link and reads the
 * results, whether the round trip runs on this thread or on an nginx worker thread.
 */
#ifndef PAIRSTORE_PG_H
#define PAIRSTORE_PG_H

#include "pairstore.h"

#include "pq.h"

#define PG_NOTIFY_CHANNEL "pairstore"

/* The statements, by kind. Each is sent unnamed (parsed in the round trip that runs it), so
 * that nothing depends on a server connection's state: a pooler (pgbouncer in transaction
 * mode) may hand each transaction another one. */
typedef enum {
  Q_CLOCK, Q_LOCK_STORE, Q_COUNT, Q_FETCH, Q_GET, Q_LIST, Q_INSERT, Q_UPDATE, Q_DELETE,
  Q_EXPIRE, Q_DROP, Q_NOTIFY, Q_OUTCOME, Q_WAIT, Q_NSTMT,
  Q_SQL,    /* pgq.sql, with its parameters */
  Q_SIMPLE, /* pgq.sql: several statements without parameters, sent alone as one simple query */
} pg_kind;

#define PG_MAX_PARAMS 10

/* One statement of a round trip. sql (Q_SQL, Q_SIMPLE) is a string constant; the
 * parameters are copied when the round trip is handed to another thread. */
typedef struct pgq {
  pg_kind q;
  const char *sql;
  const char *v[PG_MAX_PARAMS];
} pgq;

/* A link: one connection to the database and what reaching it takes. Used by one thread at
 * a time: the engine's, or a worker thread's while the engine waits (busy). Links live in a
 * process-wide table, so that a worker thread's Lua state finds one by its id. */
typedef struct pg_link {
  unsigned id;
  /* how to reach it (set once; read-only afterwards) */
  char *conninfo;        /* as libpq takes it (a URI, or key=value after "pg:") */
  char *display;         /* the target without its password, and the store's name */
  char *store;
  /* A user and a database name that the display does not show (they may hold a password):
   * a server message naming either is not shown either. NULL: shown, or none given. */
  char *hidden_user, *hidden_db;
  int64_t bound;         /* the running call's deadline (monotonic ms; 0: its own timeouts) */
  int lock_wait_ms, connect_ms, stmt_ms, durable;
  int listen;            /* LISTEN on every new connection (a watcher's link) */
  /* the connection */
  PGconn *conn;
  pid_t pid;             /* the process that opened conn: a forked child opens its own */
  unsigned gen;          /* connections opened so far (a watcher sees a new one) */
  int listening;         /* LISTEN issued on conn */
  int lost;              /* the last round trip lost its answer (connection lost, no answer) */
  int connect_failed;    /* the last round trip could not connect */
  char state[6];         /* the SQLSTATE of the last round trip's failed statement, or "" */
  int cancel;            /* that failure was a cancel ("due to user request") */
  /* what the engine turns into events (pg_connect notes it; counts only grow) */
  int broken;            /* the connection broke (lost, no answer in time, or dropped as not to
                          * be trusted: a read-only server, a server shutting down) and no
                          * other was made since; a connection let go on purpose is not */
  unsigned reconnects;   /* connections made after one broke (on a link that had one) */
  unsigned moves;        /* connections that reached another server than the one before */
  char server[192];      /* the server the last connection reached: host:port as libpq
                          * reached it ("" before the first) */
  char server_before[192]; /* the server before the last move */
  /* a round trip handed to a worker thread: the statements (parameters in pend_buf) */
  int pend_n;
  pgq *pend;
  char *pend_buf;
  size_t pend_len;
  int64_t pend_deadline; /* monotonic ms: the round trip's budget counts from its handing over */
  int pend_retry;        /* a broken connection found first may be opened again once */
  uint64_t pend_hash;
  /* its outcome, until the engine takes it */
  int done;
  int rc;
  PGresult **res;
  ps_err err;
  int64_t done_ms;       /* monotonic ms it finished (an owner that never takes it is gone) */
  /* ownership (under the table's mutex) */
  int busy;              /* a worker thread runs its round trip */
  int orphan;            /* its owner went away while busy: the thread frees it */
} pg_link;

/* Creates a link (registered; nothing connects yet) from a target; NULL on out of memory. */
pg_link *pg_link_new(const char *conninfo, const char *display, const char *store,
                     const char *hidden_user, const char *hidden_db, const ps_pg_opts *o);
/* Closes the connection (the server rolls back what it held). */
void pg_link_drop(pg_link *k);
/* The same for a connection that broke, or cannot be trusted any more (k->broken). */
void pg_link_break(pg_link *k);
/* Releases a link: at once, or, while a worker thread runs its round trip, when it ends. */
void pg_link_free(pg_link *k);
/* Under the table's mutex: 2 a worker thread runs its round trip; 1 one finished at *done_ms
 * and nobody took its outcome yet; 0 neither (*connect_failed: the last could not connect). */
int  pg_link_state(pg_link *k, int64_t *done_ms, int *connect_failed);
/* Whether the link's connection is idle (no transaction open on the server) or absent. */
int  pg_link_idle(pg_link *k);

/* Runs the statements as one pipeline on this thread (connecting first if needed) and
 * collects one result each (res[i]: the caller clears them; NULL for a statement not run).
 * 0 when all succeeded; -1 with err set (the first failure), the connection dropped when it
 * cannot be trusted. budget: ms for the whole round trip. connecting: part of connecting
 * (do not connect again). */
int  pg_roundtrip(pg_link *k, const pgq *qs, int n, PGresult **res, int64_t budget,
                  int connecting, ps_err *err);
/* A round trip (pg_roundtrip) as an operation makes it: retry (nothing was done yet): a
 * connection made before and found broken is opened again once and the round trip sent
 * again. Each attempt has budget ms, or, with a deadline (monotonic ms; 0: none), what is
 * left until then (none left: "timeout"). The one copy of the reconnect-once rule, for the
 * engine's own thread and for a worker thread's. */
int  pg_exchange(pg_link *k, const pgq *qs, int n, PGresult **res, int64_t budget,
                 int64_t deadline, int retry, ps_err *err);
/* Connects (if not connected) within connect_timeout_ms; 0, or -1 with err set. */
int  pg_connect(pg_link *k, ps_err *err);

/* Hands a round trip over (copies it into the link) for a worker thread; 0, or -1 (out of
 * memory). retry: see pend_retry. */
int  pg_link_hand_over(pg_link *k, const pgq *qs, int n, int64_t budget, int retry,
                       uint64_t hash);
/* A digest of a round trip's statements, to recognise it when it is asked for again. */
uint64_t pg_hash(const pgq *qs, int n);

/* Sets err: code, "PostgreSQL <display>: <what>" where what is fmt with the (server's or
 * libpq's) text detail, on one line; a detail naming a hidden user or database is not shown.
 * What a message may say of a target is its display form: the password is never in it, and
 * neither is a user or database name the display hides. Nothing is searched for and
 * replaced: libpq's messages that would echo the target are not quoted (a target it cannot
 * parse), the server's errors while connecting come as their SQLSTATE only. */
void pg_set_err(const pg_link *k, ps_err *err, const char *code, const char *fmt,
                const char *detail) __attribute__((format(printf, 4, 0)));

/* Counts round trips (for the tests: how many an operation takes). */
void ps_pg_count_roundtrip(void);

extern const char *const pg_stmt_sql[Q_NSTMT];
extern const int pg_stmt_nparams[Q_NSTMT];

#endif
