/*
 * internal.h — what the file engine's parts share, and nothing outside csrc/engine/file/
 * includes. Layers, each using only those below it:
 *   engine.c    the engine interface: the sessions document; orchestrates lock and file
 *   lock.c      the cross-process lock (the sentinel "<path>.lock")
 *   datafile.c  the sessions file: resolve, load, quarantine, atomic commit, orphan sweep
 *   fs.c        file-system helpers both of them use (a leaf)
 */
#ifndef PS_FILE_INTERNAL_H
#define PS_FILE_INTERNAL_H

#include "../../pairstore.h"

typedef struct ps_lock {
  int fd;                /* the sentinel we hold (flock LOCK_EX), -1 when not held */
  dev_t dev;
  ino_t ino;
  /* Between transactions the sentinel is parked, still flock()ed, at "<lockpath>.idle-<hex>"
   * and published again by a rename: no inode is made or freed per transaction. */
  int idle_fd;           /* the parked sentinel, -1: none */
  dev_t idle_dev;
  ino_t idle_ino;
  pid_t idle_pid;        /* the process that parked it: a forked child makes its own */
  int64_t touched_ms;    /* monotonic time its mtime was last set */
  int64_t busy_seen_ms;  /* monotonic time the lock was last found held by another */
  int64_t waited_us;     /* how long the last acquisition waited for another's hold (0: none) */
  int no_park;           /* rename(RENAME_NOREPLACE) refused here: a new sentinel each time */
  char *idle_name;       /* malloc'd parking name (in the store's directory), NULL until needed */
} ps_lock;

/* Identity of the file content last read or written under the lock. */
typedef struct ps_ident {
  int valid;
  dev_t dev;
  ino_t ino;
  off_t size;
  struct timespec mtime, ctime;
} ps_ident;

/* A file whose identity matches is trusted unchanged without reading it when its inode is
 * the one we pin (ps_file.pin_fd: nobody else can be given its number meanwhile), or when
 * its ctime is older than this (nobody can set a later change's ctime back). Otherwise it is
 * compared byte for byte: inode numbers are reused at once and timestamps are coarse. */
#define PS_IDENT_SETTLE_MS 5000

typedef struct ps_file {
  char *path;            /* sessions file as given, made absolute (for messages and c:path()) */
  char *lockpath;        /* path .. ".lock" (for messages) */
  char *dir;             /* directory part of path, as given: resolved by the kernel */
  const char *base;      /* the file's name in its directory, points into path */
  const char *lockbase;  /* base .. ".lock", points into lockpath */
  /* The directory (O_PATH), as the kernel resolves dir (symlinks and ".." followed; the file
   * name itself never is); every name below is relative to it. Each transaction resolves dir
   * again; the commit fence checks that dir still names it. -1: not yet opened. */
  int dirfd;
  dev_t dir_dev;
  ino_t dir_ino;
  char key[48];          /* "<dev>:<ino>" of the directory: with base, the store's identity */
  /* The file as the last load found it (its owner, mode and links decide a quarantine).
   * seen_valid 0: absent. */
  int seen_valid;
  struct stat seen;
  int lock_wait_ms;
  int lock_stale_ms;
  int nowait;            /* this transaction does not wait for the lock (ps_hint.nowait) */
  int durable;
  size_t max_bytes;
  int swept;             /* orphans swept since this store was opened */
  ps_lock lock;
  int ino_fd;            /* inotify instance for lock waits: -1 not yet, -2 unavailable */
  int ino_wd;            /* the watch of the current wait, -1: none */
  pid_t ino_pid;         /* the process that made ino_fd */
  /* The data file's inode as we last wrote it, held by an O_PATH handle so that its number
   * cannot go to another file while we remember it. (Files only read are not pinned.) -1. */
  int pin_fd;
  dev_t pin_dev;
  ino_t pin_ino;
  /* A pin whose inode was replaced: closed once the lock is released (closing may free the
   * inode's blocks, which need not hold up the next process). -1: none. */
  int stale_fd;
  /* Changes made after a stat get a ctime of their own here (Linux 6.13+ multigrain
   * timestamps): only then does a pinned inode's identity prove it was not rewritten. */
  int fine_ctime;
  ps_event events[PS_MAX_EVENTS];
  int nevents;
} ps_file;

/* ---- fs.c: file-system helpers (a leaf: uses only sys.c and err.c) ------------------------ */

void ps_file_event(ps_file *f, const char *name, const char *detail, const char *path,
                   long count, long age_ms, long pid);
/* mkdir -p (new levels 0700 whatever the umask), then opens dir (O_PATH|O_DIRECTORY):
 * the descriptor, or -1 with e set. */
int  ps_mkdir_p(const char *dir, ps_err *e);
/* Writes all of p (short writes and EINTR handled); -1 with errno. */
int  ps_write_all(int fd, const char *p, size_t n);
/* Opens name in dirfd read-only, never through a symlink nor blocking on a FIFO, and requires
 * a regular file (shown: its path, for messages). -1 with errno ENOENT when absent (e
 * untouched), else -1 with e set. */
int  ps_open_regular(int dirfd, const char *name, const char *shown, const char *what,
                     struct stat *st, ps_err *e);
/* Whether the store's directory path still names the directory it works in: 0 yes; -1 with
 * e set ("compromised" when it names another or nothing). */
int  ps_dir_check(ps_file *f, ps_err *e);
/* As root in a directory another user owns (a service's), the owner and group new files and
 * the sentinel get, so that the service is never locked out of its own store; 0: our own. */
int  ps_dir_owner(ps_file *f, uid_t *uid, gid_t *gid);

/* ---- lock.c: the cross-process lock --------------------------------------------------------- */

void ps_lock_init(ps_file *f);
/* 0 held; -1 with e set; PS_LOCK_NO_ACCESS (e set): no sentinel can be made here (EACCES,
 * EROFS, EPERM: a read-only file system, a directory this user may not write). */
#define PS_LOCK_NO_ACCESS (-2)
int  ps_lock_acquire(ps_file *f, ps_err *e);
/* Before the commit's rename: the sentinel is still ours and at its path, and the directory
 * path still names the store's directory. 0, or -1 with e set ("compromised"). */
int  ps_lock_fence(ps_file *f, ps_err *e);
void ps_lock_release(ps_file *f);
void ps_lock_unpark(ps_file *f);  /* remove this process's parked sentinel, if any */
void ps_lock_close(ps_file *f);   /* release, unpark, close the wait instance */

/* ---- datafile.c: the sessions file ----------------------------------------------------------- */

/* Load result. PS_LOAD_SAME: the file is the one `known` describes; nothing was read. */
enum { PS_LOAD_OK = 0, PS_LOAD_ABSENT = 1, PS_LOAD_SAME = 2, PS_LOAD_ERROR = -1 };

/* What the directory path names now (made when missing): 0 the directory the store works
 * in; 1 another one (or the first): *fd is open on it and st describes it, to be entered
 * with ps_file_enter once the caller has left the old one; -1 with e set. */
int  ps_file_locate(ps_file *f, int *fd, struct stat *st, ps_err *e);
void ps_file_enter(ps_file *f, int fd, const struct stat *st);
/* Reads the whole file into `into` (emptied first; the caller owns it), unless it is
 * provably the one `known` describes (PS_LOAD_SAME). A file over the size cap yields
 * PS_LOAD_OK with *toobig set and nothing read. */
int  ps_file_load(ps_file *f, ps_buf *into, const ps_ident *known, int *toobig, ps_ident *id,
                  ps_err *e);
/* Moves the file the last load read aside as corrupt (why) and fills moved_to, only if it is
 * plausibly ours: regular, owned by the effective uid, one link, no group or other bits, and
 * looks_ours (its text begins like a sessions file). Else moves nothing: code "corrupt". */
int  ps_file_quarantine(ps_file *f, int64_t now_ms, const char *why, int looks_ours,
                        char *moved_to, size_t n, ps_err *e);
/* The commit's fence: called just before the rename; nonzero stops the commit (e set). */
typedef int (*ps_fence_fn)(ps_file *f, ps_err *e);
/* Atomically replaces the file with buf (temp, write, fsync, close, fence, rename, fsync
 * of the directory); fills id with the new file's identity. 0, or -1 with e set. */
int  ps_file_commit(ps_file *f, const char *buf, size_t len, ps_fence_fn fence, ps_ident *id,
                    ps_err *e);
/* Removes what killed processes left (temp, break, candidate and parked lock files); only
 * while holding the lock. */
void ps_file_sweep_orphans(ps_file *f);
void ps_file_unpin(ps_file *f);
void ps_file_drop_stale(ps_file *f); /* closes a retired pin (once the lock is released) */

#endif
