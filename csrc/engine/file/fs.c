/*
 * fs.c — file-system helpers the lock and the sessions file both use: whole writes, opening
 * a regular file without following symlinks or blocking on FIFOs, mkdir -p with 0700 levels,
 * the directory fence, the owner new files get, and the events of a transaction.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int ps_write_all(int fd, const char *p, size_t n)
{
  while (n > 0) {
    ssize_t w = ps_write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (w == 0) { errno = EIO; return -1; }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

int ps_open_regular(int dirfd, const char *name, const char *path, const char *what,
                    struct stat *st, ps_err *e)
{
  int fd;
  do {
    fd = ps_openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    int saved = errno;
    if (saved == ELOOP)
      ps_err_set(e, "io", "%s %s: is a symbolic link; refusing to follow it (ELOOP)", what, path);
    else if (saved != ENOENT)
      ps_err_sys(e, saved, what, path);
    errno = saved;
    return -1;
  }
  if (ps_fstat(fd, st) != 0) {
    ps_err_sys(e, errno, what, path);
    close(fd);
    errno = EIO;
    return -1;
  }
  if (!S_ISREG(st->st_mode)) {
    ps_err_set(e, "io", "%s %s: not a regular file; refusing to use it", what, path);
    close(fd);
    errno = EINVAL;
    return -1;
  }
  return fd;
}

void ps_file_event(ps_file *f, const char *name, const char *detail, const char *path,
                   long count, long age_ms, long pid)
{
  ps_event *ev;
  if (f->nevents >= PS_MAX_EVENTS) return;
  ev = &f->events[f->nevents++];
  snprintf(ev->name, sizeof ev->name, "%s", name);
  snprintf(ev->detail, sizeof ev->detail, "%s", detail ? detail : "");
  snprintf(ev->path, sizeof ev->path, "%s", path ? path : "");
  ev->count = count;
  ev->age_ms = age_ms;
  ev->pid = pid;
}

/* chmod 0700 of the directory just made as name in parent, never through a symlink put in its
 * place: through an O_PATH handle of it (by /proc, as fchmodat(AT_SYMLINK_NOFOLLOW) does), or
 * by name relative to parent when there is no /proc. Returns the handle, or -1. */
static int own_new_level(int parent, const char *name)
{
  char proc[64];
  int fd = ps_openat(parent, name, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, 0);
  if (fd < 0) return -1;
  snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
  if (ps_chmod(proc, 0700) == 0) {
    /* As root under a directory another user owns (a service's), the new level is that
     * user's, as the file and the sentinel are: nginx's master in init_by_lua makes a
     * directory its workers (nobody, www-data) then use. */
    struct stat ps;
    if (geteuid() == 0 && fstat(parent, &ps) == 0 && ps.st_uid != 0 &&
        chown(proc, ps.st_uid, ps.st_gid) != 0) {
      int saved = errno;
      close(fd);
      errno = saved;
      return -1;
    }
    return fd;
  }
  if (errno == ENOENT && access("/proc/self/fd", F_OK) != 0 && fchmodat(parent, name, 0700, 0) == 0)
    return fd;
  {
    int saved = errno;
    close(fd);
    errno = saved;
  }
  return -1;
}

int ps_mkdir_p(const char *dir, ps_err *e)
{
  char buf[4096];
  size_t n = strlen(dir);
  char *p;
  int fd;

  if (n == 0 || n >= sizeof buf || dir[0] != '/') {
    ps_err_set(e, "io", "directory path too long");
    return -1;
  }
  memcpy(buf, dir, n + 1);
  fd = ps_open("/", O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
  if (fd < 0) {
    ps_err_sys(e, errno, "open directory", "/");
    return -1;
  }
  /* Level by level, each relative to the one before: a symlink or ".." in the path means
   * what it means to the kernel; each new level is made 0700 whatever the umask (0277 would
   * make it unusable). */
  for (p = buf; *p;) {
    char *name, save;
    int next;
    while (*p == '/') p++;
    if (!*p) break;
    name = p;
    while (*p && *p != '/') p++;
    save = *p;
    *p = '\0';
    if (ps_mkdirat(fd, name, 0700) == 0) {
      next = own_new_level(fd, name);
      if (next < 0) {
        int saved = errno;
        unlinkat(fd, name, AT_REMOVEDIR); /* never leave a level the next call would keep as is */
        ps_err_sys(e, saved, "chmod or chown of the new directory", buf);
        close(fd);
        return -1;
      }
    } else if (errno != EEXIST) {
      ps_err_sys(e, errno, "mkdir", buf);
      close(fd);
      return -1;
    } else {
      next = ps_openat(fd, name, O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
      if (next < 0) {
        int saved = errno;
        if (saved == ENOTDIR) ps_err_set(e, "io", "mkdir %s: not a directory (ENOTDIR)", buf);
        else ps_err_sys(e, saved, "open directory", buf);
        close(fd);
        return -1;
      }
    }
    close(fd);
    fd = next;
    *p = save;
  }
  return fd;
}

int ps_dir_check(ps_file *f, ps_err *e)
{
  struct stat st;
  if (ps_stat(f->dir, &st) == 0) {
    if (st.st_dev == f->dir_dev && st.st_ino == f->dir_ino) return 0;
  } else if (errno != ENOENT && errno != ENOTDIR) {
    ps_err_sys(e, errno, "check directory", f->dir);
    return -1;
  }
  ps_err_set(e, "compromised",
             "directory %s was replaced or moved during the transaction; nothing written", f->dir);
  return -1;
}

int ps_dir_owner(ps_file *f, uid_t *uid, gid_t *gid)
{
  struct stat ds;
  if (geteuid() != 0 || fstat(f->dirfd, &ds) != 0 || ds.st_uid == 0) return 0;
  *uid = ds.st_uid;
  *gid = ds.st_gid;
  return 1;
}
