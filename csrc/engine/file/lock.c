/*
 * lock.c — the cross-process lock: a sentinel "<path>.lock" holding "<pid>\n", exactly what
 * the reference implementation creates and honours, published already flock()ed so that a
 * live pairstore holder can be told from a dead one. docs/locking-and-writes.md says what
 * it promises and walks through acquire, fence, release and parking step by step.
 *
 * A pairstore sentinel is marked by its owner-execute bit (mode 0500): the reference creates
 * its sentinel with open(..., 0666) & ~umask, which can never carry an execute bit. So:
 *   flock busy                      -> a live pairstore holder: wait, never break;
 *   flock free, execute bit set     -> a crashed pairstore holder: break at once;
 *   flock free, no execute bit      -> a reference holder: break only when its mtime is more
 *                                      than lock_stale_ms away from now, in either direction.
 *
 * A sentinel is made once per store and process, not once per transaction: on release it is
 * renamed to a private parking name "<path>.lock.idle-<random>", still flock()ed, and the
 * next transaction publishes it again with rename(RENAME_NOREPLACE). Creating and freeing an
 * inode twice per transaction cost more than the rest of the lock. Parked sentinels of dead
 * processes (flock free) are swept like the other orphans.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PS_SENTINEL_MODE 0500
#define PS_WAIT_SLICE_MS 100   /* longest sleep between checks when inotify wakes us */
#define PS_POLL_SLICE_MS 5     /* longest sleep between checks without inotify */
#define PS_POLITE_MS 100       /* yield before taking the lock this long after finding it busy */

enum { INSPECT_RETRY, INSPECT_WAIT, INSPECT_ERROR };

static int64_t mtime_ms(const struct stat *st)
{
  return (int64_t)st->st_mtim.tv_sec * 1000 + st->st_mtim.tv_nsec / 1000000;
}

/* As root in a service's directory, the sentinel is the service's: it can then open it and
 * wait while root holds the lock, and sweep it if root dies (instead of failing EACCES). */
static int give_to_dir_owner(ps_file *f, int fd)
{
  uid_t uid;
  gid_t gid;
  return ps_dir_owner(f, &uid, &gid) ? ps_fchown(fd, uid, gid) : 0;
}

/* The candidate sentinel: a private file holding "<pid>\n", mode 0500, flock(LOCK_EX).
 * Preferably an unnamed O_TMPFILE; otherwise a uniquely named file (named is set). */
static int make_candidate(ps_file *f, char *named, size_t namedsz, struct stat *st, ps_err *e)
{
  char pid[32], rnd[17];
  int fd, n;

  named[0] = '\0';
  fd = ps_openat(f->dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
    ps_random_hex(rnd, 8);
    snprintf(named, namedsz, "%s.new-%s", f->lockbase, rnd);
    fd = ps_openat(f->dirfd, named, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) named[0] = '\0';
  }
  if (fd < 0) {
    int saved = errno;
    ps_err_sys(e, saved, "create lock in", f->dir);
    errno = saved;
    return -1;
  }
  n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
  if (ps_write_all(fd, pid, (size_t)n) != 0 || ps_fchmod(fd, PS_SENTINEL_MODE) != 0 ||
      give_to_dir_owner(f, fd) != 0 || ps_flock(fd, LOCK_EX | LOCK_NB) != 0 ||
      ps_fstat(fd, st) != 0) {
    int saved = errno;
    close(fd);
    if (named[0]) unlinkat(f->dirfd, named, 0);
    named[0] = '\0';
    ps_err_sys(e, saved, "prepare lock", f->lockpath);
    errno = EIO; /* made, but not usable: not a matter of access */
    return -1;
  }
  f->lock.touched_ms = ps_mono_ms(); /* its mtime is now */
  return fd;
}

/* A sentinel whose mtime was set more than a second ago gets a fresh one before it is
 * published: its age, as the reference judges it, starts when it is published. */
static int touch(ps_file *f, int fd)
{
  int64_t now = ps_mono_ms();
  if (now - f->lock.touched_ms <= 1000) return 0;
  if (ps_futimens(fd) != 0) return -1;
  f->lock.touched_ms = now;
  return 0;
}

/* Publish the candidate at lockpath. 0: published; -1 with errno (EEXIST: held). */
static int publish(ps_file *f, int fd, const char *named, int parked)
{
  char proc[64];
  if (touch(f, fd) != 0) return -1;
  if (parked) return ps_renameat_noreplace(f->dirfd, f->lock.idle_name, f->lockbase);
  if (named[0]) return ps_linkat(f->dirfd, named, f->dirfd, f->lockbase, 0);
  snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
  if (ps_linkat(AT_FDCWD, proc, f->dirfd, f->lockbase, AT_SYMLINK_FOLLOW) == 0) return 0;
  if (errno == ENOENT && access("/proc/self/fd", F_OK) != 0) {
    /* No /proc: AT_EMPTY_PATH (needs CAP_DAC_READ_SEARCH). */
    if (linkat(fd, "", f->dirfd, f->lockbase, AT_EMPTY_PATH) == 0) return 0;
    errno = ENOENT;
  }
  return -1;
}

static long read_pid(int fd)
{
  char buf[32];
  ssize_t n = ps_pread(fd, buf, sizeof buf - 1, 0);
  char *end;
  long pid;
  if (n <= 0) return 0;
  buf[n] = '\0';
  pid = strtol(buf, &end, 10);
  return (end != buf && *end == '\n') ? pid : 0;
}

/* Move the sentinel we judged dead (inode of st, on which we hold LOCK_EX) out of the way:
 * rename it to a private name, and only unlink it there if it is that very inode. */
static void break_sentinel(ps_file *f, int fd, const struct stat *st, int crashed)
{
  char name[512], rnd[17];
  struct stat now;
  long pid = read_pid(fd);
  int64_t age = ps_wall_ms() - mtime_ms(st);

  ps_random_hex(rnd, 8);
  snprintf(name, sizeof name, "%s.break-%s", f->lockbase, rnd);
  if (ps_renameat(f->dirfd, f->lockbase, name) != 0) return; /* gone already: just retry */
  if (fstatat(f->dirfd, name, &now, AT_SYMLINK_NOFOLLOW) != 0) {
    /* The next holder may already have swept our break file. If the inode we judged is no
     * longer linked anywhere, that was it: we broke it. */
    struct stat mine;
    if (fstat(fd, &mine) == 0 && mine.st_nlink == 0) now = *st;
    else return;
  }
  if (now.st_dev == st->st_dev && now.st_ino == st->st_ino) {
    ps_unlinkat(f->dirfd, name);
    ps_file_event(f, "lock_broken",
                  crashed ? "lock held by a crashed pairstore process was taken over"
                          : "stale lock of another process was broken",
                  f->lockpath, 0, (long)age, pid);
    f->swept = 0; /* a dead writer may have left a temp file: sweep once we hold it */
    return;
  }
  /* Not what we judged: put it back if nothing took its place. */
  if (ps_renameat_noreplace(f->dirfd, name, f->lockbase) != 0) ps_unlinkat(f->dirfd, name);
}

static void drain(int ino_fd)
{
  char buf[4096];
  while (read(ino_fd, buf, sizeof buf) > 0) { }
}

/* Remove the watch of the last inspected sentinel, and drain what it queued (IN_IGNORED
 * at least), so that the next wait sleeps until the next sentinel changes. */
static void unwatch(ps_file *f)
{
  if (f->ino_wd < 0 || f->ino_fd < 0) return;
  inotify_rm_watch(f->ino_fd, f->ino_wd);
  f->ino_wd = -1;
  drain(f->ino_fd);
}

/* Look at an existing sentinel and decide: retry now, wait, or fail. */
static int inspect(ps_file *f, int ino_fd, int64_t *foreign_left_ms, ps_err *e)
{
  struct stat st;
  int fd = ps_open_regular(f->dirfd, f->lockbase, f->lockpath, "open lock", &st, e);
  *foreign_left_ms = -1;
  if (fd < 0) return errno == ENOENT ? INSPECT_RETRY : INSPECT_ERROR;
  if (ino_fd >= 0) {
    /* Watch this very inode before testing it, so its release cannot slip by unseen. A
     * pairstore holder releases by renaming it away to park it (IN_MOVE_SELF), or by an
     * unlink then a close; when it dies, its descriptor is closed (IN_CLOSE_WRITE). A
     * reference holder closed its descriptor long ago: its release is the unlink
     * (IN_ATTRIB). Breaks rename it (IN_MOVE_SELF). The watch is removed after each wait:
     * a parked sentinel lives on, and its later moves must not wake us. */
    char proc[64];
    uint32_t mask = IN_MOVE_SELF | IN_DELETE_SELF |
                    ((st.st_mode & S_IXUSR) ? IN_CLOSE_WRITE : IN_ATTRIB);
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    unwatch(f);
    f->ino_wd = inotify_add_watch(ino_fd, proc, mask);
  }
  if (ps_flock(fd, LOCK_EX | LOCK_NB) != 0) {
    struct stat there;
    int saved = errno;
    close(fd);
    if (saved != EWOULDBLOCK && saved != EINTR) {
      ps_err_sys(e, saved, "lock", f->lockpath);
      return INSPECT_ERROR;
    }
    /* A live holder, unless it released between our open and our watch: a parked
     * sentinel keeps its flock, so look whether it is still the one at the path. */
    if (fstatat(f->dirfd, f->lockbase, &there, AT_SYMLINK_NOFOLLOW) != 0 ||
        there.st_dev != st.st_dev || there.st_ino != st.st_ino)
      return INSPECT_RETRY;
    return INSPECT_WAIT;
  }
  {
    /* Free now, but is it still the sentinel? A holder that just released it unlinked it
     * before dropping the flock, and a new one may stand at the path already. */
    struct stat cur, there;
    if (ps_fstat(fd, &cur) != 0 || cur.st_nlink == 0 ||
        fstatat(f->dirfd, f->lockbase, &there, AT_SYMLINK_NOFOLLOW) != 0 ||
        there.st_dev != st.st_dev || there.st_ino != st.st_ino) {
      close(fd);
      return INSPECT_RETRY;
    }
  }
  if (st.st_mode & S_IXUSR) {
    break_sentinel(f, fd, &st, 1);
  } else {
    int64_t age = ps_wall_ms() - mtime_ms(&st);
    if (age > f->lock_stale_ms || -age > f->lock_stale_ms) {
      break_sentinel(f, fd, &st, 0);
    } else {
      *foreign_left_ms = f->lock_stale_ms - (age > 0 ? age : 0) + 1;
      close(fd);
      return INSPECT_WAIT;
    }
  }
  close(fd);
  return INSPECT_RETRY;
}

static void wait_for_change(ps_file *f, int64_t ms)
{
  int ino_fd = f->ino_fd;
  if (ms <= 0) return;
  if (ino_fd >= 0) {
    struct pollfd p = { ino_fd, POLLIN, 0 };
    if (poll(&p, 1, (int)ms) > 0) {
      if (f->ino_wd >= 0) unwatch(f);
      else drain(ino_fd);
    }
  } else {
    struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
  }
}

void ps_lock_init(ps_file *f)
{
  f->lock.fd = -1;
  f->lock.idle_fd = -1;
  f->lock.idle_name = NULL;
  f->lock.no_park = 0;
  f->lock.busy_seen_ms = INT64_MIN / 2;
  f->ino_fd = -1;
  f->ino_wd = -1;
}

/* Let go of the parked sentinel without touching the file system: it is gone, or it is
 * our parent's (inherited across fork: the flock belongs to the shared open file). */
static void idle_forget(ps_file *f)
{
  if (f->lock.idle_fd >= 0) close(f->lock.idle_fd);
  f->lock.idle_fd = -1;
  free(f->lock.idle_name);
  f->lock.idle_name = NULL;
}

/* Whether a failure to make or publish the sentinel says this user may not write here. */
static int no_access(int err)
{
  return err == EACCES || err == EROFS || err == EPERM;
}

/* One acquisition: the sentinel it publishes (the parked one, or a new candidate, named when
 * made without O_TMPFILE) and how long and how it has waited. */
typedef struct attempt {
  int fd, parked;
  char named[512];
  struct stat st;
  int64_t deadline, backoff;
  int retries, waited;
} attempt;

static int attempt_candidate(ps_file *f, attempt *a, ps_err *e)
{
  a->parked = 0;
  a->fd = make_candidate(f, a->named, sizeof a->named, &a->st, e);
  if (a->fd >= 0) return 0;
  return no_access(errno) ? PS_LOCK_NO_ACCESS : -1;
}

/* Takes up the sentinel to publish: the parked one, or a new candidate. */
static int attempt_begin(ps_file *f, attempt *a, ps_err *e)
{
  pid_t me = getpid();
  a->deadline = ps_mono_ms() + f->lock_wait_ms;
  a->backoff = 1;
  a->retries = a->waited = 0;
  a->named[0] = '\0';
  if (f->lock.idle_fd >= 0 && f->lock.idle_pid != me) idle_forget(f);
  if (f->ino_fd >= 0 && f->ino_pid != me) { /* the parent's instance: make our own */
    close(f->ino_fd);
    f->ino_fd = -1;
    f->ino_wd = -1;
  }
  /* Lately contended: let the waiters our last release woke run first. A parked sentinel is
   * published again within microseconds, sooner than a woken waiter gets a CPU, so without
   * this one process could keep the lock to itself. */
  if (ps_mono_ms() - f->lock.busy_seen_ms < PS_POLITE_MS) sched_yield();
  if (f->lock.idle_fd < 0) return attempt_candidate(f, a, e);
  a->fd = f->lock.idle_fd;
  f->lock.idle_fd = -1;
  a->st.st_dev = f->lock.idle_dev;
  a->st.st_ino = f->lock.idle_ino;
  a->parked = 1;
  return 0;
}

/* 0: published, the lock is ours; 1: the path is taken; -1 or PS_LOCK_NO_ACCESS, e set. */
static int attempt_publish(ps_file *f, attempt *a, ps_err *e)
{
  struct stat there;
  for (;;) {
    int err, rc;
    /* After a wait, look before trying: a failed linkat or rename takes the directory's
     * lock, which the holder needs for its own rename. */
    if (a->waited && fstatat(f->dirfd, f->lockbase, &there, AT_SYMLINK_NOFOLLOW) == 0) return 1;
    if (publish(f, a->fd, a->named, a->parked) == 0) return 0;
    err = errno;
    if (err == EEXIST) return 1;
    if (a->parked && (err == ENOENT || err == EINVAL)) {
      /* The parked sentinel was removed, or this file system cannot rename without
       * replacing: go on with a new sentinel. */
      if (err == EINVAL) f->lock.no_park = 1;
      f->lock.idle_fd = a->fd;
      idle_forget(f);
      if ((rc = attempt_candidate(f, a, e)) != 0) return rc;
      continue;
    }
    if (err == ENOENT) {
      /* The directory was removed since this transaction resolved it: fail; the next one
       * resolves the path again (and makes the directory anew). */
      ps_err_set(e, "io", "create lock %s: the directory was removed (ENOENT)", f->lockpath);
      return -1;
    }
    ps_err_sys(e, err, "create lock", f->lockpath);
    return no_access(err) ? PS_LOCK_NO_ACCESS : -1;
  }
}

/* After the sentinel at the path was inspected (verdict): try again at once, or wait until
 * it may have changed. 0: try again; -1 with e set: the deadline passed (or nowait). */
static int attempt_wait(ps_file *f, attempt *a, int verdict, int64_t foreign_left, ps_err *e)
{
  int64_t left, slice;
  /* the holder went: try again at once (a few times without waiting) */
  if (verdict == INSPECT_RETRY && ps_mono_ms() < a->deadline && (!f->nowait || ++a->retries < 4))
    return 0;
  left = a->deadline - ps_mono_ms();
  if (left <= 0 || f->nowait) { /* nowait: the caller waits (and tells the timeout) */
    ps_err_set(e, f->nowait ? "lock_busy" : "timeout", "could not acquire lock at %s within %dms",
               f->lockpath, f->lock_wait_ms);
    return -1;
  }
  if (f->ino_fd >= 0) {
    slice = PS_WAIT_SLICE_MS;
  } else {
    slice = a->backoff;
    a->backoff = a->backoff * 2 > PS_POLL_SLICE_MS ? PS_POLL_SLICE_MS : a->backoff * 2;
  }
  if (foreign_left > 0 && foreign_left < slice) slice = foreign_left;
  wait_for_change(f, slice < left ? slice : left);
  a->waited = 1;
  return 0;
}

/* One inotify instance per store, kept open: closing one costs an RCU grace period (~10 ms),
 * which would be paid while holding the lock. -2: none (poll instead). */
static void watch_open(ps_file *f)
{
  if (f->ino_fd != -1) return;
  f->ino_fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  if (f->ino_fd < 0) f->ino_fd = -2;
  f->ino_pid = getpid();
  f->ino_wd = -1;
}

int ps_lock_acquire(ps_file *f, ps_err *e)
{
  attempt a;
  int rc;
  int64_t busy_since = 0;

  if (f->lock.fd >= 0) {
    ps_err_set(e, "reentrant", "lock %s is already held by this store", f->lockpath);
    return -1;
  }
  if ((rc = attempt_begin(f, &a, e)) != 0) return rc;
  for (;;) {
    int64_t foreign_left;
    int verdict;
    if ((rc = attempt_publish(f, &a, e)) <= 0) break;
    if (!busy_since) busy_since = ps_mono_us();
    f->lock.busy_seen_ms = ps_mono_ms();
    watch_open(f);
    verdict = inspect(f, f->ino_fd, &foreign_left, e);
    if (verdict == INSPECT_ERROR || attempt_wait(f, &a, verdict, foreign_left, e) != 0) {
      rc = -1;
      break;
    }
  }
  if (rc == 0) {
    f->lock.waited_us = busy_since ? ps_mono_us() - busy_since : 0;
    f->lock.fd = a.fd;
    f->lock.dev = a.st.st_dev;
    f->lock.ino = a.st.st_ino;
    f->lock.idle_pid = getpid();
    a.fd = -1;
  }
  unwatch(f);
  if (a.named[0]) unlinkat(f->dirfd, a.named, 0);
  if (a.fd >= 0 && a.parked) f->lock.idle_fd = a.fd; /* still parked: keep it for next time */
  else if (a.fd >= 0) close(a.fd);
  return rc;
}

int ps_lock_fence(ps_file *f, ps_err *e)
{
  struct stat mine, there;
  int lost = f->lock.fd < 0;
  /* An I/O error while checking is reported as one, not as a lost lock. */
  if (!lost && ps_fstat(f->lock.fd, &mine) != 0) {
    ps_err_sys(e, errno, "check lock", f->lockpath);
    return -1;
  }
  if (!lost && mine.st_nlink > 0 && ps_fstatat(f->dirfd, f->lockbase, &there) != 0) {
    if (errno != ENOENT) {
      ps_err_sys(e, errno, "check lock", f->lockpath);
      return -1;
    }
    lost = 1;
  }
  if (lost || mine.st_nlink == 0 || there.st_dev != f->lock.dev || there.st_ino != f->lock.ino) {
    ps_err_set(e, "compromised", "lock %s was taken away before the commit; nothing written",
               f->lockpath);
    return -1;
  }
  /* And the path still names the directory both are in (not one renamed or swapped since). */
  return ps_dir_check(f, e);
}

void ps_lock_unpark(ps_file *f)
{
  struct stat st;
  if (f->lock.idle_fd >= 0 && f->lock.idle_pid == getpid() && f->dirfd >= 0 &&
      fstatat(f->dirfd, f->lock.idle_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
      st.st_dev == f->lock.idle_dev && st.st_ino == f->lock.idle_ino)
    unlinkat(f->dirfd, f->lock.idle_name, 0);
  idle_forget(f);
}

void ps_lock_close(ps_file *f)
{
  ps_lock_release(f);
  ps_lock_unpark(f);
  if (f->ino_fd >= 0) close(f->ino_fd);
  f->ino_fd = -1;
  f->ino_wd = -1;
}

/* Rename the sentinel we hold (just checked to be at lockpath) to its parking name.
 * 1: parked, or found broken and let go; 0: not parked, remove it as before. */
static int park(ps_file *f, int fd)
{
  struct stat st;
  if (f->lock.no_park) return 0;
  if (!f->lock.idle_name) {
    char rnd[17];
    size_t n = strlen(f->lockbase) + sizeof ".idle-" + 16;
    if (!(f->lock.idle_name = malloc(n))) return 0;
    ps_random_hex(rnd, 8);
    snprintf(f->lock.idle_name, n, "%s.idle-%s", f->lockbase, rnd);
  }
  if (renameat2(f->dirfd, f->lockbase, f->dirfd, f->lock.idle_name, RENAME_NOREPLACE) != 0) {
    if (errno == EINVAL) f->lock.no_park = 1;
    return 0;
  }
  if (fstatat(f->dirfd, f->lock.idle_name, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
      st.st_dev != f->lock.dev || st.st_ino != f->lock.ino) {
    /* Ours was broken as stale and another sentinel published in the instant between the
     * check and the rename: put that one back, and let ours go. */
    if (renameat2(f->dirfd, f->lock.idle_name, f->dirfd, f->lockbase, RENAME_NOREPLACE) != 0)
      unlinkat(f->dirfd, f->lock.idle_name, 0);
    f->lock.idle_fd = fd;
    idle_forget(f);
    return 1;
  }
  f->lock.idle_fd = fd;
  f->lock.idle_dev = f->lock.dev;
  f->lock.idle_ino = f->lock.ino;
  return 1;
}

void ps_lock_release(ps_file *f)
{
  struct stat st;
  int fd = f->lock.fd;
  if (fd < 0) return;
  f->lock.fd = -1;
  /* Park or unlink by name only what is still ours, while still holding the flock. */
  if (fstatat(f->dirfd, f->lockbase, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_dev == f->lock.dev &&
      st.st_ino == f->lock.ino) {
    if (park(f, fd)) return;
    unlinkat(f->dirfd, f->lockbase, 0);
  }
  close(fd);
}
