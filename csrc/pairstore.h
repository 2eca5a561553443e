/*
 * pairstore.h — what the C files of pairstore.core share: the error type, the system-call
 * seam, the engine interface (keyed, per transaction), the session rules, the store the
 * bindings and the transaction share. (The file engine's parts: engine/file/internal.h.)
 */
#ifndef PAIRSTORE_H
#define PAIRSTORE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/stat.h>

#include <lua.h>
#include <lauxlib.h>

#include "compat.h" /* the 5.4 API on Lua 5.3, 5.1 and LuaJIT */

#define PS_FILE_VERSION          1
#define PS_DEFAULT_TTL_MS        900000
#define PS_MIN_TTL_MS            300000
#define PS_MAX_TTL_MS            3600000
#define PS_TERMINAL_RETENTION_MS 3600000
#define PS_MAX_CODE_ATTEMPTS     5
#define PS_LOCK_STALE_MS         30000
#define PS_LOCK_WAIT_MS          10000
#define PS_MAX_SESSIONS          1000
#define PS_MAX_FILE_BYTES        (16u * 1024u * 1024u)
/* The latest time a clock may give: expiry and retention stay exact integers (2^53 ms is
 * the year 287396). */
#define PS_CLOCK_MAX             (((int64_t)1 << 53) - 2 * (int64_t)PS_MAX_TTL_MS)

/* ---- errors (err.c) ------------------------------------------------------------------ */

/* A failure: a stable lowercase code and a human message (never key material or codes). */
typedef struct ps_err {
  const char *code;
  char msg[4096 + 1024]; /* room for a whole path and what failed on it */
} ps_err;

void ps_err_set(ps_err *e, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* code "io", message "<what> <path>: <strerror> (<ERRNAME>)" for a saved errno. */
void ps_err_sys(ps_err *e, int saved_errno, const char *what, const char *path);
/* Push nil, message, code; returns 3. */
int ps_push_err(lua_State *L, const ps_err *e);

/* ---- system-call seam (sys.c) -----------------------------------------------------------
 * Every system call a transaction makes goes through these wrappers. Built with
 * -DPS_FAULT_INJECTION they can be told to fail the Nth call with an errno (or to make a
 * write short); a production build compiles them to the plain calls. */
/* Names are resolved relative to the store's directory descriptor (the *at calls); only the
 * directory itself is looked up by its path (ps_open, ps_stat: each transaction, and the fence). */
int     ps_open(const char *path, int flags, mode_t mode);
int     ps_openat(int dirfd, const char *path, int flags, mode_t mode);
int     ps_stat(const char *path, struct stat *st); /* follows symlinks, as the kernel does */
ssize_t ps_read(int fd, void *buf, size_t n);
ssize_t ps_write(int fd, const void *buf, size_t n);
int     ps_close(int fd);
int     ps_fsync(int fd);
int     ps_fstat(int fd, struct stat *st);
int     ps_fstatat(int dirfd, const char *name, struct stat *st); /* AT_SYMLINK_NOFOLLOW */
int     ps_fchmod(int fd, mode_t mode);
int     ps_fchown(int fd, uid_t uid, gid_t gid);
int     ps_renameat(int dirfd, const char *from, const char *to);
int     ps_renameat_noreplace(int dirfd, const char *from, const char *to);
ssize_t ps_pread(int fd, void *buf, size_t n, off_t at);
/* linkat(fromdir, from, dirfd, to, flags) */
int     ps_linkat(int fromdir, const char *from, int dirfd, const char *to, int flags);
int     ps_unlinkat(int dirfd, const char *name);
int     ps_mkdirat(int dirfd, const char *name, mode_t mode);
int     ps_chmod(const char *path, mode_t mode); /* only on /proc/self/fd/N of an O_PATH handle */
int     ps_flock(int fd, int op);
int     ps_futimens(int fd);

/* Fault injection control (only meaningful in a PS_FAULT_INJECTION build). */
int  ps_fault_available(void);
void ps_fault_arm(long nth, int err, int short_write);
long ps_fault_calls(void);
int  ps_fault_hit(void);
void ps_fault_set_coarse_ctime(int on); /* datafile.c never detects fine-grained ctimes */
int  ps_fault_coarse_ctime(void);

/* ---- clocks (clock.c) ---------------------------------------------------------------- */

int64_t ps_wall_ms(void);
int64_t ps_mono_ms(void);
int64_t ps_mono_us(void);
double  ps_mono_s(void); /* monotonic seconds, ns resolution (durations) */

/* ---- randomness (rand.c) -------------------------------------------------------------- */

void    ps_random_hex(char *out, size_t nbytes); /* out gets 2*nbytes hex + NUL */
void    ps_random_code(char out[7]);             /* unbiased 6 digits + NUL */
void    ps_keypair_b64u(char sk[44], char pk[44], const unsigned char *sk_in /* or NULL */);

/* ---- base64url (base64url.c) ---------------------------------------------------------- */

/* Without padding: out needs 4*ceil(n/3)+1 bytes. */
void    ps_b64u_encode(char *out, size_t outlen, const unsigned char *in, size_t n);
/* Returns decoded length, or -1 when the text is not canonical unpadded base64url. */
long    ps_b64u_decode(unsigned char *out, size_t outmax, const char *in, size_t n);

/* ---- byte buffer (buf.c) ------------------------------------------------------------- */
typedef struct ps_buf {
  char *p;
  size_t len, cap;
  int oom;
} ps_buf;

void ps_buf_add(ps_buf *b, const char *s, size_t n);
void ps_buf_reserve(ps_buf *b, size_t n); /* room for n more bytes */
void ps_buf_swap(ps_buf *a, ps_buf *b);
#define ps_buf_lit(b, s) ps_buf_add((b), (s), sizeof(s) - 1)
void ps_buf_free(ps_buf *b); /* wipes (all of it) before freeing */

/* ---- events ------------------------------------------------------------------------------
 * What an engine tells the caller's on_event about a transaction (a lock broken, a corrupt
 * file moved aside, ...). The file engine's own parts are declared in engine/file/internal.h. */

typedef struct ps_event {
  char name[24];
  char detail[320];      /* plain text for info.message; never secrets */
  char path[4096 + 64];  /* moved_to, etc. */
  long count;
  long age_ms;
  long pid;
} ps_event;

#define PS_MAX_EVENTS 8

/* ---- session rules on Lua tables (rules.c) -----------------------------------------------
 * Pure: what an operation does to ONE session table given now. No storage knowledge; every
 * engine calls them. */

#define PS_MAX_DEPTH 512 /* nesting accepted inside a session */
#define PS_MAX_SESSION_BYTES 65536 /* default bound of one session's JSON text */
#define PS_MAX_FIELD_BYTES 256     /* bound of each operator context string given to create */

/* Where a fresh object's known keys go: in this order, before the others (sorted by bytes);
 * child: the order inside the member child_key. */
typedef struct ps_jorder {
  const char *const *keys;
  const char *child_key;
  const struct ps_jorder *child;
} ps_jorder;

extern const ps_jorder ps_session_order; /* the reference's keys; operatorContext's inside */

int         ps_is_terminal(const char *status);
int         ps_is_known_status(const char *status);
int         ps_is_known_mode(const char *mode);
/* A sid as the API takes it: exactly 32 lowercase hex characters (n: its length). */
int         ps_is_sid(const char *s, size_t n);
/* A secondary code: exactly 6 ASCII digits. */
int         ps_is_code(const char *s, size_t n);
extern const char *const *const ps_statuses; /* NULL-terminated: every status the flow knows */
extern const char *const *const ps_modes;
int         ps_is_live(lua_State *L, int sess); /* its status is not terminal */
int         ps_transition_allowed(const char *from, const char *to);
const char *ps_get_str(lua_State *L, int idx, const char *key, size_t *len);
void        ps_set_int(lua_State *L, int idx, const char *key, int64_t v);
void        ps_set_str(lua_State *L, int idx, const char *key, const char *v);
/* t[key] as an int64 rounded down (numbers may be fractional), clamped to the int64 range. */
int64_t     ps_get_ms(lua_State *L, int idx, const char *key);
/* now > t[key], compared exactly (Lua's comparison of an integer with any number). */
int         ps_after(lua_State *L, int idx, const char *key, int64_t now);
/* secondaryCodeAttempts + 1 (kept an integer or a float as it was); returns whether it
 * reached the maximum. */
int         ps_count_attempt(lua_State *L, int idx);
int         ps_check_value(lua_State *L, int idx, int depth);
/* NULL when valid (integral numbers made integers in place), else a reason. decoded: the
 * session comes from cjson (an object has string keys only; an array has no sid) and
 * ps_check_value already ran over it (over the file's whole document). */
const char *ps_validate_session(lua_State *L, int idx, int decoded);
void        ps_copy_value(lua_State *L, int idx, int depth); /* pushes a deep copy */
/* Pushes a deep copy of at most budget values, or returns -1 with nothing pushed (a table
 * shared along many paths, a DAG, would cost one copy per path). */
int         ps_copy_bounded(lua_State *L, int idx, long budget);
/* The earliest time after which pruning would change the session at idx. */
int64_t     ps_next_prune(lua_State *L, int idx);

/* What a rule did to the session it was given: PS_RULE_SAME (nothing: nothing to store),
 * PS_RULE_CHANGED (changed in place: store it). *outcome: NULL, or the domain outcome the
 * caller returns as nil, outcome, outcome (the session may be changed all the same). */
enum { PS_RULE_SAME = 0, PS_RULE_CHANGED = 1 };
int ps_rule_transition(lua_State *L, int sess, const char *to, int64_t now, const char **outcome);
int ps_rule_failed_code(lua_State *L, int sess, int64_t now, const char **outcome);
int ps_rule_verify_code(lua_State *L, int sess, const char *given, int64_t now,
                        const char **outcome);
int ps_rule_consume(lua_State *L, int sess, int64_t now, const char **outcome);
/* respond: consume's checks, then the code must have been verified (not_device_connected,
 * and the session is rejected). *outcome NULL: decrypt the phone's response, then say how
 * that went (why: NULL, "unsupported" or any other failure) to ps_rule_respond_opened. */
int ps_rule_respond(lua_State *L, int sess, int64_t now, const char **outcome);
int ps_rule_respond_opened(lua_State *L, int sess, int64_t now, const char *why,
                           const char **outcome);
/* Fills a new session table (pushed) from create's inputs. */
void ps_rule_new_session(lua_State *L, const char *sid, int mode, int operator_ctx, int sk,
                         int pk, int code, int64_t now, int64_t ttl);
/* Pruning one session at now: expires it in place when due (PS_PRUNE_EXPIRED) and says
 * whether it is past retention and goes (PS_PRUNE_DROP). */
enum { PS_PRUNE_KEEP = 0, PS_PRUNE_EXPIRED = 1, PS_PRUNE_DROP = 2 };
int ps_rule_prune(lua_State *L, int sess, int64_t now);

/* ---- a session's stored record (record.c) ----------------------------------------------- */

/* Whether a decoding error message is cjson's verdict on the text ("... at character 2"). */
int         ps_is_json_verdict(const char *msg);
/* Pushes the session a record's text holds (cjson at dec decodes; exact integers; lone
 * surrogates read as U+FFFD; validated as a session) and returns NULL, or returns why it is
 * not one (nothing pushed). tmp: scratch space. */
const char *ps_record_decode(lua_State *L, int dec, const char *text, size_t n, ps_buf *tmp);
/* Writes the session at sess into b (emptied first) as the text to store, keeping what it
 * can of base (the text it was read from, or NULL). NULL, or why not. */
const char *ps_record_encode(lua_State *L, int dec, int sess, const char *base, size_t baselen,
                             ps_buf *b);
/* ps_record_encode for a put: with PS_PUT_IF_CHANGED (a caller's session) the text is also
 * bounded by max_bytes and compared with base. 1: b is the text to store, 0: it is base's
 * (nothing to store), -1: err set. */
int         ps_record_text(lua_State *L, int dec, int sess, const char *base, size_t baselen,
                           int flags, size_t max_bytes, ps_buf *b, ps_err *err);
/* Pushes what list gives for the sessions of the array at arr: in list order (createdAtMs,
 * then sid by bytes), only the active ones (awaiting_scan, device_connected) with
 * PS_LIST_ACTIVE; copies of them, or with PS_LIST_TEXT their stored texts, each pushed by
 * text(ctx, L, sess, err) (0, or -1 with err set). 0, or -1 with nothing pushed. */
typedef int (*ps_text_fn)(void *ctx, lua_State *L, int sess, ps_err *err);
int ps_list_push(lua_State *L, int arr, int flags, ps_text_fn text, void *ctx, ps_err *err);

/* ---- the engine interface ------------------------------------------------------------------
 * Storage as the transaction (txn.c) sees it: keyed by sid, per transaction, like SQLite's
 * sqlite3_io_methods above its VFS. An engine is a Lua userdata whose memory starts with a
 * ps_engine; the core keeps it in the store, passes it back (the struct and its stack index
 * `eng`) and never looks inside it past `m`. Methods that may fail return -1 and fill err.
 * Version 2: begin takes a hint, clock, text, watch; put takes a verbatim text; list flags. */
#define PS_ENGINE_VERSION 2

typedef struct ps_engine ps_engine;
enum { PS_END_ROLLBACK = 0, PS_END_COMMIT = 1 };
/* put's flags. PS_PUT_IF_CHANGED: the session comes from a caller (a mutator): it is checked
 * (encodable, within bounds) now, and nothing is stored when it equals the stored record. */
enum { PS_PUT_IF_CHANGED = 1 };
/* list's flags: only the active sessions; their stored texts instead of copies. */
enum { PS_LIST_ACTIVE = 1, PS_LIST_TEXT = 2 };

/* What the transaction will ask for, told at begin so that an engine that talks to a server
 * can ask for it in the same round trip (an engine may ignore it). */
typedef struct ps_hint {
  const char *sid;       /* the session it will fetch first, or NULL */
  int count_live;        /* it will count the live sessions up to this many (a create), or 0 */
  int list;              /* it will list (1), with these PS_LIST_* flags */
  int list_flags;
  /* Do not wait for a lock another holds: fail at once with code "lock_busy" (the message
   * being the one a timeout would give); the transaction then waits outside the engine, by
   * the caller's sleep, and runs again (a cooperative wait, see ps_txn_run). */
  int nowait;
  /* The transaction runs again after it stopped for a round trip (io_pending): the engine
   * keeps what it did so far and replays it. */
  int resume;
} ps_hint;

typedef struct ps_engine_methods {
  int version;           /* PS_ENGINE_VERSION */
  const char *name;
  /* What the store is called in messages (a path, a target without its password). */
  const char *(*display)(ps_engine *e);
  /* Resolves the store's location now and pushes its identity (a string: two stores with
   * the same one are the same store) for the reentrancy check. Outside a transaction. */
  int  (*locate)(ps_engine *e, lua_State *L, int eng, ps_err *err);
  /* Starts a transaction (the lock taken, or the row locks to come). readonly: a read, which
   * sees one snapshot, writes back at most what pruning removed, and repairs nothing. */
  int  (*begin)(ps_engine *e, lua_State *L, int eng, int readonly, const ps_hint *hint,
                ps_err *err);
  /* The transaction's time when the caller gave no clock: the engine's own (the database
   * server's, say); NULL: the local wall clock. */
  int  (*clock)(ps_engine *e, lua_State *L, int eng, int64_t *now, ps_err *err);
  /* Pushes the session with this sid, pruned at the transaction's now (the engine's own
   * table, locked for the transaction: change it, then put it), or nil. */
  int  (*fetch_for_update)(ps_engine *e, lua_State *L, int eng, const char *sid, ps_err *err);
  /* Stores the (valid) session at sess under its sid, new or replacing; text: the stack
   * index of the exact text to store for it, or 0 (the engine writes it). 1 stored, 0
   * nothing to store (PS_PUT_IF_CHANGED), -1. */
  int  (*put)(ps_engine *e, lua_State *L, int eng, int sess, int text, int flags, ps_err *err);
  int  (*remove)(ps_engine *e, lua_State *L, int eng, const char *sid, ps_err *err);
  /* *n = the number of live (non-terminal) sessions (or more than limit: at least limit). */
  int  (*count_live)(ps_engine *e, lua_State *L, int eng, lua_Integer limit, lua_Integer *n,
                     ps_err *err);
  /* Pushes an array of copies of the sessions (PS_LIST_ACTIVE: awaiting_scan and
   * device_connected only; PS_LIST_TEXT: their texts as stored), by createdAtMs then sid. */
  int  (*list)(ps_engine *e, lua_State *L, int eng, int flags, ps_err *err);
  /* Pushes the text stored for the session at sess (fetched in this transaction). */
  int  (*text)(ps_engine *e, lua_State *L, int eng, int sess, ps_err *err);
  /* Applies pruning at now if anything is due (ps_rule_prune); *removed: sessions dropped. */
  int  (*prune_due)(ps_engine *e, lua_State *L, int eng, int64_t now, int *removed,
                    ps_err *err);
  /* Ends the transaction. PS_END_COMMIT makes its changes durable (and may fail, and may
   * raise out of memory: then PS_END_ROLLBACK follows); PS_END_ROLLBACK discards them and
   * never fails. Both release the locks; a second end does nothing. */
  int  (*end)(ps_engine *e, lua_State *L, int eng, int how, ps_err *err);
  /* The i-th event of the last begin/end (NULL past the last), and forgetting them. */
  const ps_event *(*event)(ps_engine *e, int i);
  void (*events_clear)(ps_engine *e);
  /* Pushes a watcher (wait.c) that wakes when the session sid may have changed. Outside a
   * transaction. */
  int  (*watch)(ps_engine *e, lua_State *L, int eng, const char *sid, ps_err *err);
  /* Releases everything; idempotent (also the engine userdata's __gc). */
  void (*close)(ps_engine *e);
  /* Says that someone waits for a change of the session sid (inside a transaction of its
   * own, PS_OP_ANNOUNCE), for an engine whose waits are watched elsewhere. May be NULL. */
  int  (*announce)(ps_engine *e, lua_State *L, int eng, const char *sid, ps_err *err);
  /* Lets go of what it keeps between transactions for speed (a parked lock sentinel, a
   * connection): what a process that is about to fork workers calls. May be NULL. */
  void (*idle)(ps_engine *e);
} ps_engine_methods;

/* A transaction that stopped where a round trip was due (code "io_pending": a deferred
 * engine, whose round trips a worker thread runs) and is run again by the same call: what
 * it must see again is kept with its engine, which that call has to itself meanwhile. */
enum { PS_STAGE_NONE = 0, PS_STAGE_BODY, PS_STAGE_COMMIT };
typedef struct ps_cont {
  int stage;             /* PS_STAGE_*: where it stopped */
  char sid[33];          /* create: the sid drawn for it */
  int64_t now;           /* the caller's clock, read once */
  int have_now;
  int coop;              /* its cooperative wait (see ps_wait in txn.c) */
  int64_t deadline;
  int tries;
  const char *outcome;   /* stopped at its commit: the domain outcome, and its results */
  int nres;
} ps_cont;

struct ps_engine {
  const ps_engine_methods *m;
  ps_cont cont;
  /* How long the last transaction waited, inside the engine, for a lock another held (the
   * file's lock, a row lock), in microseconds; 0: it did not wait. Set by begin (and the
   * first fetch), reset by the transaction; read by c:lock_waited() for the metrics. */
  int64_t waited_us;
};

/* Whether a failure is a deferred engine's "a round trip is due" (io_pending). */
int ps_is_pending(const ps_err *e);

/* What lies beside the sessions file at path (engine/file/beside.c): pushes { file = stat?,
 * lock = stat + pid?, corrupt = { count, newest?, newest_size?, newest_ms? } } (a stat:
 * { kind, size, mtime_ms }; the sentinel's pid only when it is a regular file holding
 * "<pid>\n"; the newest corrupt file by its mtime) and returns 0, or -1 with e set. */
int ps_file_beside(lua_State *L, const char *path, ps_err *e);

/* The file engine (engine/file/engine.c): the options it takes. */
typedef struct ps_file_opts {
  int lock_wait_ms, lock_stale_ms, durable;
  size_t max_file_bytes, max_session_bytes;
} ps_file_opts;
/* Pushes a file engine for path (absolute, tidied) and returns it. decode: index of cjson's
 * decode function. */
ps_engine *ps_file_engine_new(lua_State *L, const char *path, const ps_file_opts *o,
                              int decode);
/* Tidies an absolute path in place (no empty or "." components); 0, or -1 when it does not
 * name a file. */
int ps_file_normalize_path(char *p);
#ifdef PS_TEST
/* Whether the file engine's sid index and live count agree with its sessions (true,
 * "indexed" | "not indexed", or false, what disagrees). */
int ps_file_engine_selfcheck(lua_State *L, int eng);
#endif

/* The PostgreSQL engine (engine_pg.c). */
typedef struct ps_pg_opts {
  const char *store;     /* the store's name */
  const char *listen_target; /* where waits LISTEN (a direct connection past a pooler), or NULL */
  int lock_wait_ms, connect_timeout_ms, statement_timeout_ms, durable;
  size_t max_session_bytes;
} ps_pg_opts;
/* Whether target names a PostgreSQL database (postgresql://, postgres:// in any case,
 * pg:conninfo) (target.c). */
int ps_pg_is_target(const char *target);
/* The length of "postgresql://" or "postgres://" (in any case) target starts with, else 0. */
size_t ps_pg_uri_prefix(const char *target);
/* Why target is refused (written into why, returned), or NULL: it looks like a URI (a scheme
 * followed by ":/") of a scheme pairstore does not support, so it is no file path either. */
const char *ps_target_refused(const char *target, char *why, size_t n);
/* Pushes the form in which a PostgreSQL target is shown (store.path: no password, no user or
 * database name that may hold one; multi-host as in a URI), or nil and why libpq cannot
 * parse it (quoting nothing of it). */
int ps_pg_push_display(lua_State *L, const char *target, const char *store);
/* Pushes a PostgreSQL engine for target (nothing connects yet) and returns it. */
ps_engine *ps_pg_engine_new(lua_State *L, const char *target, const ps_pg_opts *o, int decode);
/* Pushes a deferred engine (its own link; listen: LISTEN on each new connection) for the
 * same database and store as the PostgreSQL engine from, and returns it. */
ps_engine *ps_pg_engine_clone(lua_State *L, ps_engine *from, int decode, int listen);
/* Whether the value at idx is a PostgreSQL engine. */
int ps_pg_is_engine(lua_State *L, int idx);
/* Adds pg_perform and pg_listen (an nginx worker thread's entry points) to the table on top. */
void ps_pg_register(lua_State *L);
/* The next transaction or watch of this PostgreSQL engine connects and gets its answers by
 * deadline (monotonic ms; 0: only its own timeouts), or fails with code "timeout". */
void ps_pg_until(ps_engine *e, int64_t deadline);
/* The server the store's connection reaches (`pairstore stats`), on this thread, outside a
 * transaction, within deadline (monotonic ms; 0: the store's own timeouts): pushes { host,
 * port (the server's own address for the connection), reached (host:port as libpq reached
 * it), primary, version, rows } and returns 0, or -1 with err set. */
int  ps_pg_server(ps_engine *e, lua_State *L, int64_t deadline, ps_err *err);
#ifdef PS_TEST
/* Test hooks: cut the connection after sending the next n COMMITs; round trips so far. */
void ps_pg_fault_cut_commits(int n);
long ps_pg_roundtrips(void);
#endif
/* The schema's DDL (what sql/pairstore.sql holds). */
extern const char ps_pg_schema_sql[];

/* ---- the store and its transaction (bind.c, txn.c) --------------------------------------- */

#define PS_STORE_MT "pairstore.store"
/* User values of a store userdata: options; the engine; cjson's decode. */
/* PS_UV_NEXT: the engine the next transaction runs on instead of the store's (c:use_engine). */
enum { PS_UV_OPTS = 1, PS_UV_ENGINE, PS_UV_DECODE, PS_UV_NEXT, PS_UV_COUNT = PS_UV_NEXT };

typedef struct ps_store {
  ps_engine *eng;        /* NULL: closed */
  int max_sessions;
  int lock_wait_ms;      /* how long a transaction waits for a lock in all */
  /* How the next transaction waits for a busy lock (PS_WAIT_*), set by the binding's
   * wait_mode just before it and taken (reset) by it; with PS_WAIT_CONTINUE, the wait's
   * deadline (monotonic ms) and how many times it slept, as its last attempt gave them. */
  int wait_mode;
  int64_t wait_deadline;
  int wait_tries;
  size_t max_session_bytes; /* a mutator's result: at most this many values are copied */
  int busy;              /* inside a transaction (its callbacks running): close must wait */
} ps_store;

typedef enum {
  PS_OP_GET, PS_OP_LIST, PS_OP_CREATE, PS_OP_UPDATE, PS_OP_TRANSITION, PS_OP_FAILED_CODE,
  PS_OP_VERIFY, PS_OP_CONSUME, PS_OP_RESPOND, PS_OP_PRUNE, PS_OP_EXPORT, PS_OP_IMPORT, PS_OP_NOW,
  PS_OP_ANNOUNCE,
} ps_op;

/* How a transaction waits for a lock another holds: in the engine (blocking, bounded by
 * lock_wait_ms), or not at all, returning nil, message, "lock_busy", ms to sleep before
 * running it again (PS_WAIT_START: a new wait; PS_WAIT_CONTINUE: the same wait goes on,
 * within the deadline the first attempt set). */
enum { PS_WAIT_BLOCK = 0, PS_WAIT_START = 1, PS_WAIT_CONTINUE = 2 };
#define PS_COOP_SLICE_MS 8 /* the longest sleep between two attempts of a cooperative wait */

/* Runs op on the store at 1 as one transaction; the method's arguments are 2..top. */
int  ps_txn_run(lua_State *L, ps_op op, int readonly);
/* lua_pcall with a traceback handler (the message, with traceback, left on error). */
int  ps_call_user(lua_State *L, int nargs, int nres);
void ps_txn_init(lua_State *L); /* the registry table of stores this state holds locked */

/* ---- test-only hooks (testhooks.c) --------------------------------------------------------- */
/* Only in the test build (-DPS_TEST, as SQLite's SQLITE_TEST): core.test_hooks() -> a new
 * table of the hooks the specs use (fault injection, errno names, the file engine's
 * self-check, the PostgreSQL engine's commit cut and round-trip count). What make all,
 * make install and the rockspec build has none of them. */
#ifdef PS_TEST
int  ps_test_hooks(lua_State *L);
#endif

/* ---- raw JSON (json.c) ------------------------------------------------------------------- */

typedef struct ps_jspan {
  size_t off, len;       /* one element of the top-level "sessions" array */
  int bigint;            /* holds an integer literal a double cannot hold exactly */
} ps_jspan;

typedef struct ps_jscan {
  ps_jspan *spans;
  size_t nspans, cap;
  int lone;              /* a lone surrogate escape somewhere (cjson refuses those) */
  int bigint;            /* an integer literal a double cannot hold exactly somewhere */
  int value;             /* set by the caller: p is one value (a session), not a sessions
                          * document; nothing is delimited */
} ps_jscan;

/* Checks that p is one JSON text (RFC 8259; finite numbers; nesting bounded) and finds the
 * elements of its top-level "sessions" array. NULL, or what is wrong. */
const char *ps_json_scan(const char *p, size_t n, ps_jscan *sc);
void        ps_json_scan_free(ps_jscan *sc);
/* Whether s is well-formed UTF-8 (no overlong forms, surrogates, or code points past U+10FFFF). */
int         ps_utf8_valid(const unsigned char *s, size_t n);
/* Rewrites every lone surrogate escape of a valid text as \ufffd (same length), in place. */
void        ps_json_sanitize(char *p, size_t n);
/* Pushes the exact value of a number token: an integer when it is one within int64, else a
 * float. */
void        ps_json_push_number(lua_State *L, const char *p, size_t n);
/* Makes exact the integers that cjson rounded, in the value at vidx decoded from raw. */
int         ps_json_fixup(lua_State *L, int decode, const char *raw, size_t n, int vidx, int depth);
/* Appends the value at idx as JSON. Where raw (the text it was read from, or NULL) still says
 * the same, its bytes are kept: key order, number text, escapes, unknown members; what
 * changed is written as JSON.stringify would; new keys follow order. NULL, or why not. */
const char *ps_json_encode(lua_State *L, int decode, const char *raw, size_t rawn, int idx,
                           const ps_jorder *order, ps_buf *b);

/* ---- crypto bindings (crypto.c) ------------------------------------------------------ */
void ps_crypto_register(lua_State *L); /* adds functions to the table on top of the stack */
/* crypto_open(sk_gateway, pk_device, sid, nonce, ct, aead) -> plaintext | nil, why, why */
int  ps_crypto_open(lua_State *L);

/* ---- QR codes (qr.c) ----------------------------------------------------------------- */
void ps_qr_register(lua_State *L);     /* adds qr_matrix to the table on top of the stack */

/* ---- waiting for a change (wait.c) ------------------------------------------------------ */
void ps_wait_register(lua_State *L);   /* adds mono_ms and the CLI's signal helpers */
/* What a watcher waits on: a descriptor to poll (which may change between waits: -1 means
 * none, a change at once) and what to do when it is readable (1: something for us changed,
 * or may have; 0: nothing; -1 with errno). close: when the watcher goes (may be NULL). */
typedef struct ps_watch_source {
  int  (*fd)(void *ctx);
  int  (*drain)(void *ctx);
  void (*close)(void *ctx);
} ps_watch_source;
/* Pushes a watcher over src; ctx is given back to it; owner: a stack index of a value the
 * watcher keeps alive (0: none). what: for messages. */
void ps_watcher_push(lua_State *L, const ps_watch_source *src, void *ctx, int owner,
                     const char *what);
/* Pushes a watcher of the file base in directory dir (inotify), or returns -1 with e set. */
int  ps_watch_file(lua_State *L, const char *dir, const char *base, ps_err *e);

#endif
