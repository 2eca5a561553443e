/*
 * sys.c — the system-call seam. Every call a transaction makes on the file system goes
 * through here, so a PS_FAULT_INJECTION build can fail the Nth one with a chosen errno
 * (or shorten a write). Without that define each wrapper is a plain call.
 *
 * Names are resolved relative to the store's directory descriptor (openat, renameat,
 * linkat, unlinkat, fstatat, mkdirat); only the directory itself is looked up by its path.
 *
 * Left outside on purpose: the lock release (fstatat + rename or unlinkat of our own
 * sentinel, then close), the orphan sweep, and letting go of a directory the path no longer
 * names (its parked sentinel). All are best effort and self-healing: a sentinel left by a
 * failed unlink is no longer flock()ed, so the next pairstore process takes it over at once,
 * and an orphan left now is swept next time. Also outside: the calls that only spare a read
 * (engine/file/datafile.c: the O_PATH pin of the file just written and its fstat, the fstats
 * that probe for fine-grained ctimes, the fstatat that recognises the pinned file). When one
 * fails, the next transaction reads the file as it would without them; the operation itself succeeds, which
 * the fault loop, failing each call of the seam in turn, would count as a broken promise.
 */
#include "pairstore.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef PS_FAULT_INJECTION
/* Process-wide on purpose: a test harness arms one fault for the next operation. */
static long fault_nth;     /* fail the call with this ordinal (1-based); 0 = off */
static long fault_count;   /* calls seen since arming */
static int  fault_errno;
static int  fault_short;   /* make the Nth call, if a write, write half and succeed */
static int  fault_hit;

int ps_fault_available(void) { return 1; }

void ps_fault_arm(long nth, int err, int short_write)
{
  fault_nth = nth;
  fault_count = 0;
  fault_errno = err;
  fault_short = short_write;
  fault_hit = 0;
}

long ps_fault_calls(void) { return fault_count; }
int ps_fault_hit(void) { return fault_hit; }

/* Pretend the file system has coarse change times only (kernels before multigrain
 * timestamps), so that the fallback of engine/file/datafile.c can be tested on any kernel. */
static int fault_coarse;
void ps_fault_set_coarse_ctime(int on) { fault_coarse = on; }
int ps_fault_coarse_ctime(void) { return fault_coarse; }

/* 1 when this call must fail (errno set), 2 when a write must be short. */
static int fault_now(int is_write)
{
  if (fault_nth <= 0) return 0;
  if (++fault_count != fault_nth) return 0;
  fault_hit = 1;
  if (fault_short) return is_write ? 2 : 0;
  errno = fault_errno;
  return 1;
}
#define FAULT(ret) do { if (fault_now(0)) return (ret); } while (0)
#else
int ps_fault_available(void) { return 0; }
void ps_fault_arm(long nth, int err, int short_write) { (void)nth; (void)err; (void)short_write; }
long ps_fault_calls(void) { return 0; }
int ps_fault_hit(void) { return 0; }
void ps_fault_set_coarse_ctime(int on) { (void)on; }
int ps_fault_coarse_ctime(void) { return 0; }
#define FAULT(ret) do { } while (0)
#endif

int ps_open(const char *path, int flags, mode_t mode)
{
  FAULT(-1);
  return open(path, flags, mode);
}

int ps_openat(int dirfd, const char *path, int flags, mode_t mode)
{
  FAULT(-1);
  return openat(dirfd, path, flags, mode);
}

ssize_t ps_read(int fd, void *buf, size_t n)
{
  FAULT(-1);
  return read(fd, buf, n);
}

ssize_t ps_write(int fd, const void *buf, size_t n)
{
#ifdef PS_FAULT_INJECTION
  switch (fault_now(1)) {
  case 1: return -1;
  case 2: return write(fd, buf, n > 1 ? n / 2 : n);
  default: break;
  }
#endif
  return write(fd, buf, n);
}

int ps_close(int fd)
{
#ifdef PS_FAULT_INJECTION
  if (fault_now(0)) { int saved = errno; close(fd); errno = saved; return -1; }
#endif
  return close(fd);
}

int ps_fsync(int fd)
{
  FAULT(-1);
  return fsync(fd);
}

int ps_fstat(int fd, struct stat *st)
{
  FAULT(-1);
  return fstat(fd, st);
}

int ps_stat(const char *path, struct stat *st)
{
  FAULT(-1);
  return stat(path, st);
}

int ps_fstatat(int dirfd, const char *name, struct stat *st)
{
  FAULT(-1);
  return fstatat(dirfd, name, st, AT_SYMLINK_NOFOLLOW);
}

int ps_fchmod(int fd, mode_t mode)
{
  FAULT(-1);
  return fchmod(fd, mode);
}

int ps_fchown(int fd, uid_t uid, gid_t gid)
{
  FAULT(-1);
  return fchown(fd, uid, gid);
}

int ps_renameat(int dirfd, const char *from, const char *to)
{
  FAULT(-1);
  return renameat(dirfd, from, dirfd, to);
}

int ps_renameat_noreplace(int dirfd, const char *from, const char *to)
{
  FAULT(-1);
  return renameat2(dirfd, from, dirfd, to, RENAME_NOREPLACE);
}

ssize_t ps_pread(int fd, void *buf, size_t n, off_t at)
{
  FAULT(-1);
  return pread(fd, buf, n, at);
}

int ps_linkat(int fromdir, const char *from, int dirfd, const char *to, int flags)
{
  FAULT(-1);
  return linkat(fromdir, from, dirfd, to, flags);
}

int ps_unlinkat(int dirfd, const char *name)
{
  FAULT(-1);
  return unlinkat(dirfd, name, 0);
}

int ps_mkdirat(int dirfd, const char *name, mode_t mode)
{
  FAULT(-1);
  return mkdirat(dirfd, name, mode);
}

int ps_chmod(const char *path, mode_t mode)
{
  FAULT(-1);
  return chmod(path, mode);
}

int ps_flock(int fd, int op)
{
  FAULT(-1);
  return flock(fd, op);
}

int ps_futimens(int fd)
{
  FAULT(-1);
  return futimens(fd, NULL);
}
