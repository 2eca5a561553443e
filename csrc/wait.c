/*
 * wait.c — waiting for a store to change, for store:wait and the CLI's live view: a watcher
 * over what an engine gives it to wait on (for the file engine: inotify on the file's
 * directory, filtered by the file's name; for PostgreSQL: its connection's notifications),
 * whose wait also ends on SIGINT, SIGTERM or SIGHUP (blocked and read through a signalfd, so
 * none is lost), and the monotonic clock the waits are timed with. Nothing here touches a
 * store.
 */
#include "pairstore.h"

#include <errno.h>
#include <time.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>

#define PS_WATCHER_MT "pairstore.watcher"

/* What changes the file a name in the directory stands for: a rename onto it (both
 * implementations replace the file that way), a write into it, its removal, its creation,
 * and the directory itself going away. */
#define WATCH_MASK (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | \
                    IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)

typedef struct ps_watcher {
  const ps_watch_source *src; /* NULL once closed */
  void *ctx;
  char what[160];             /* for messages */
} ps_watcher;

static ps_watcher *check_watcher(lua_State *L)
{
  ps_watcher *w = luaL_checkudata(L, 1, PS_WATCHER_MT);
  if (!w->src) luaL_error(L, "pairstore: the watcher is closed");
  return w;
}

static int watcher_close(lua_State *L)
{
  ps_watcher *w = luaL_checkudata(L, 1, PS_WATCHER_MT);
  if (w->src && w->src->close) w->src->close(w->ctx);
  w->src = NULL;
  w->ctx = NULL;
  return 0;
}

static void sig_set(sigset_t *set)
{
  sigemptyset(set);
  sigaddset(set, SIGINT);
  sigaddset(set, SIGTERM);
  sigaddset(set, SIGHUP);
}

static void push_signal(lua_State *L, int sig)
{
  lua_pushstring(L, sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "SIGHUP");
}

/* Takes one pending SIGINT, SIGTERM or SIGHUP (they must be blocked); 0 when none is. */
static int take_pending(void)
{
  sigset_t set;
  struct timespec zero = { 0, 0 };
  int sig;
  sig_set(&set);
  do sig = sigtimedwait(&set, NULL, &zero); while (sig < 0 && errno == EINTR);
  return sig > 0 ? sig : 0;
}

/* ---- the file engine's source: inotify on the directory ---------------------------------- */

typedef struct file_watch {
  int fd;        /* inotify instance */
  char base[];   /* the file's name in the directory */
} file_watch;

static int file_fd(void *ctx)
{
  return ((file_watch *)ctx)->fd;
}

static void file_close(void *ctx)
{
  file_watch *w = ctx;
  close(w->fd);
  free(w);
}

/* Reads the queued events; 1 when one concerns the file (or the queue overflowed, or the
 * directory went away), 0 when none did, -1 with errno on a read error. */
static int file_drain(void *ctx)
{
  file_watch *w = ctx;
  char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
  int hit = 0;
  for (;;) {
    ssize_t n = read(w->fd, buf, sizeof buf);
    char *p;
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return hit;
      return -1;
    }
    if (n == 0) return hit;
    for (p = buf; p < buf + n;) {
      const struct inotify_event *ev = (const struct inotify_event *)(void *)p;
      if (ev->mask & (IN_Q_OVERFLOW | IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF)) hit = 1;
      else if (ev->len > 0 && strcmp(ev->name, w->base) == 0) hit = 1;
      p += sizeof(struct inotify_event) + ev->len;
    }
  }
}

static const ps_watch_source file_source = { file_fd, file_drain, file_close };

/* Events are queued from this call on, so a change between it and a wait is not missed. */
int ps_watch_file(lua_State *L, const char *dir, const char *base, ps_err *e)
{
  file_watch *w = malloc(sizeof *w + strlen(base) + 1);
  if (!w) {
    ps_err_sys(e, ENOMEM, "watch", dir);
    return -1;
  }
  strcpy(w->base, base);
  w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (w->fd < 0) {
    ps_err_sys(e, errno, "inotify_init1", dir);
    free(w);
    return -1;
  }
  if (inotify_add_watch(w->fd, dir, WATCH_MASK) < 0) {
    ps_err_sys(e, errno, "inotify_add_watch", dir);
    file_close(w);
    return -1;
  }
  ps_watcher_push(L, &file_source, w, 0, base);
  return 0;
}

/* ---- the watcher ----------------------------------------------------------------------------- */

void ps_watcher_push(lua_State *L, const ps_watch_source *src, void *ctx, int owner,
                     const char *what)
{
  ps_watcher *w;
  if (owner) owner = lua_absindex(L, owner);
  w = lua_newuserdatauv(L, sizeof *w, 1);
  w->src = NULL;
  luaL_setmetatable(L, PS_WATCHER_MT);
  w->src = src;
  w->ctx = ctx;
  snprintf(w->what, sizeof w->what, "%s", what);
  if (owner) {
    lua_pushvalue(L, owner);
    lua_setiuservalue(L, -2, 1);
  }
}

/* watcher:wait(timeout_ms, signals) -> "change" | "timeout" | "SIGINT"|"SIGTERM"|"SIGHUP"
 *                                      | nil, message, "io"
 * timeout_ms: a non-negative integer, or nil for no limit. With signals true, SIGINT,
 * SIGTERM and SIGHUP are blocked for the wait (and the ones already pending taken first),
 * so that one arriving at any moment of it ends it instead of running its handler; the
 * signal mask is as before on return. A signal wins over a change seen at the same time.
 * "change" may be spurious (an event for the file that changed nothing, a handled signal
 * that interrupted the wait): the caller reads again. */
static int watcher_wait(lua_State *L)
{
  ps_watcher *w = check_watcher(L);
  lua_Integer timeout = luaL_opt(L, luaL_checkinteger, 2, -1);
  int signals = lua_toboolean(L, 3);
  sigset_t set, old;
  int sfd = -1, sig = 0, hit = 0, saved = 0;
  int64_t deadline;
  const char *failed = NULL;
  ps_err e;

  luaL_argcheck(L, lua_isnoneornil(L, 2) || timeout >= 0, 2, "a non-negative integer");
  deadline = timeout < 0 ? -1 : ps_mono_ms() + (timeout > INT_MAX ? INT_MAX : timeout);

  if (signals) {
    sig_set(&set);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0) {
      saved = errno;
      failed = "signalfd";
    }
  }
  while (!failed) {
    struct pollfd pfd[2];
    int64_t left = deadline < 0 ? -1 : deadline - ps_mono_ms();
    int n;
    int fd;
    if (signals && (sig = take_pending())) break;
    if ((hit = w->src->drain(w->ctx)) != 0) {
      if (hit < 0) {
        saved = errno;
        failed = "wait";
      }
      break;
    }
    if (deadline >= 0 && left <= 0) break;
    if ((fd = w->src->fd(w->ctx)) < 0) {
      hit = 1; /* nothing to wait on now (a lost connection): the caller reads again */
      break;
    }
    pfd[0].fd = fd;
    pfd[0].events = POLLIN;
    pfd[1].fd = sfd;
    pfd[1].events = POLLIN;
    n = poll(pfd, signals ? 2 : 1, (int)left);
    if (n < 0 && errno == EINTR) {
      /* Another signal's handler ran (lua.c's SIGINT hook, say): return so that it takes
       * effect; the caller looks again and waits on. */
      hit = 1;
      break;
    }
    if (n < 0) {
      saved = errno;
      failed = "poll";
    }
  }
  if (signals) {
    if (!sig && !failed) sig = take_pending(); /* one that came with the change */
    if (sfd >= 0) close(sfd);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
  }
  if (sig) {
    push_signal(L, sig);
    return 1;
  }
  if (failed) {
    ps_err_sys(&e, saved, failed, w->what);
    return ps_push_err(L, &e);
  }
  lua_pushstring(L, hit ? "change" : "timeout");
  return 1;
}

/* _hold_signals(on): true blocks SIGINT, SIGTERM and SIGHUP for the process (waits with
 * signals then take the ones that arrived in between); false takes any pending one and
 * unblocks them, returning the name of the first taken (or nil). For the CLI, which must
 * not be killed between two waits of a session it has to reject. */
static int f_hold_signals(lua_State *L)
{
  sigset_t set;
  int sig = 0, more;
  sig_set(&set);
  if (lua_toboolean(L, 1)) {
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    lua_pushboolean(L, 1);
    return 1;
  }
  do {
    more = take_pending();
    if (!sig) sig = more;
  } while (more);
  pthread_sigmask(SIG_UNBLOCK, &set, NULL);
  if (sig) push_signal(L, sig);
  else lua_pushnil(L);
  return 1;
}

/* _ignore_sigpipe(): a write to a closed pipe then fails with EPIPE instead of killing the
 * process, so the CLI can tell (and reject a session whose code it could not show). */
static int f_ignore_sigpipe(lua_State *L)
{
  (void)L;
  signal(SIGPIPE, SIG_IGN);
  return 0;
}

/* _pause(ms): sleeps ms milliseconds with SIGINT, SIGTERM and SIGHUP held (_hold_signals);
 * returns the name of one that arrived, which ends the pause at once, or nil. For the CLI's
 * live view, which waits out a store that cannot be reached without missing a Ctrl+C. */
static int f_pause(lua_State *L)
{
  lua_Integer ms = luaL_checkinteger(L, 1);
  int64_t deadline = ps_mono_ms() + (ms > 0 ? (int64_t)ms : 0);
  sigset_t set;
  int sig = 0;
  sig_set(&set);
  for (;;) {
    int64_t left = deadline - ps_mono_ms();
    struct timespec ts;
    if (left < 0) left = 0;
    ts.tv_sec = (time_t)(left / 1000);
    ts.tv_nsec = (long)(left % 1000) * 1000000L;
    sig = sigtimedwait(&set, NULL, &ts);
    if (sig > 0 || left == 0 || (sig < 0 && errno != EINTR && errno != EAGAIN)) break;
  }
  if (sig > 0) push_signal(L, sig);
  else lua_pushnil(L);
  return 1;
}

/* _close_stdout(): the CLI's last word on its output. stdio drops a buffer it could not
 * write, after which a flush reports success (and a line-buffered stream reports even the
 * failed write as done): only the stream's error flag remembers. Checks that flag, then
 * flushes and closes stdout (where a file system may report a write error last). true, or
 * nil and the reason. */
static int f_close_stdout(lua_State *L)
{
  int flagged = ferror(stdout) != 0, err = 0;
  errno = 0;
  if (fflush(stdout) != 0) err = errno ? errno : EIO;
  errno = 0;
  if (fclose(stdout) != 0 && !err) err = errno ? errno : EIO;
  if (!err && !flagged) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_pushnil(L);
  lua_pushstring(L, err ? strerror(err) : "an earlier write failed");
  lua_pushinteger(L, err ? err : EIO);
  return 3;
}

/* _stdout_error(): true when a write to stdout failed since the process began (the stream's
 * error flag: see _close_stdout), else false. */
static int f_stdout_error(lua_State *L)
{
  lua_pushboolean(L, ferror(stdout) != 0);
  return 1;
}

static int f_mono_ms(lua_State *L)
{
  lua_pushinteger(L, (lua_Integer)ps_mono_ms());
  return 1;
}

/* sleep(seconds): blocks that long (store:wait's lock wait outside nginx: in slices, so
 * that it ends by the wait's deadline). */
static int f_sleep(lua_State *L)
{
  lua_Number sec = luaL_checknumber(L, 1);
  struct timespec ts;
  if (!(sec > 0)) return 0;
  if (sec > 3600) sec = 3600;
  ts.tv_sec = (time_t)sec;
  ts.tv_nsec = (long)((sec - (lua_Number)ts.tv_sec) * 1e9);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
  return 0;
}

static const luaL_Reg watcher_methods[] = {
  { "wait", watcher_wait }, { "close", watcher_close }, { NULL, NULL },
};

static const luaL_Reg wait_funcs[] = {
  { "mono_ms", f_mono_ms }, { "sleep", f_sleep }, { "_hold_signals", f_hold_signals },
  { "_ignore_sigpipe", f_ignore_sigpipe }, { "_pause", f_pause },
  { "_close_stdout", f_close_stdout }, { "_stdout_error", f_stdout_error }, { NULL, NULL },
};

void ps_wait_register(lua_State *L)
{
  if (luaL_newmetatable(L, PS_WATCHER_MT)) {
    luaL_newlib(L, watcher_methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, watcher_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, watcher_close);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  luaL_setfuncs(L, wait_funcs, 0);
}
