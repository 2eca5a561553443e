/*
 * datafile.c — the sessions file: the store's directory resolved by the kernel and used
 * through *at calls; bounded reads; atomic durable replacement (temp O_EXCL, write, fsync,
 * close, the caller's fence, rename, fsync of the directory) keeping the owner and group;
 * quarantine of corrupt files that are plausibly ours; the pin; the orphan sweep.
 */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>


int ps_file_locate(ps_file *f, int *fdp, struct stat *st, ps_err *e)
{
  int fd;

  if (f->lock.fd >= 0) return 0; /* nothing moves inside a transaction (a nested call) */
  if (f->dirfd >= 0) {
    if (ps_stat(f->dir, st) == 0) {
      if (st->st_dev == f->dir_dev && st->st_ino == f->dir_ino) return 0;
    } else if (errno != ENOENT) {
      ps_err_sys(e, errno, "open directory", f->dir);
      return -1;
    }
  }
  fd = ps_open(f->dir, O_PATH | O_DIRECTORY | O_CLOEXEC, 0);
  if (fd < 0 && errno == ENOENT) {
    fd = ps_mkdir_p(f->dir, e);
    if (fd < 0) return -1;
  } else if (fd < 0) {
    ps_err_sys(e, errno, "open directory", f->dir);
    return -1;
  }
  if (ps_fstat(fd, st) != 0) {
    ps_err_sys(e, errno, "open directory", f->dir);
    close(fd);
    return -1;
  }
  if (f->dirfd >= 0 && st->st_dev == f->dir_dev && st->st_ino == f->dir_ino) {
    close(fd);
    return 0;
  }
  *fdp = fd;
  return 1;
}

void ps_file_enter(ps_file *f, int fd, const struct stat *st)
{
  f->dirfd = fd;
  f->dir_dev = st->st_dev;
  f->dir_ino = st->st_ino;
  f->swept = 0;
  f->seen_valid = 0;
  snprintf(f->key, sizeof f->key, "%ju:%ju", (uintmax_t)st->st_dev, (uintmax_t)st->st_ino);
}

static int same_ident(const ps_ident *a, const ps_ident *b)
{
  return a->valid && b->valid && a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
         a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec &&
         a->ctime.tv_sec == b->ctime.tv_sec && a->ctime.tv_nsec == b->ctime.tv_nsec;
}

static void set_ident(ps_ident *id, const struct stat *st)
{
  id->valid = 1;
  id->dev = st->st_dev;
  id->ino = st->st_ino;
  id->size = st->st_size;
  id->mtime = st->st_mtim;
  id->ctime = st->st_ctim;
}

void ps_file_unpin(ps_file *f)
{
  if (f->pin_fd >= 0) close(f->pin_fd);
  if (f->stale_fd >= 0) close(f->stale_fd);
  f->pin_fd = f->stale_fd = -1;
}

/* The pinned inode is no longer the file: let it go once the lock is released. */
static void pin_retire(ps_file *f)
{
  if (f->pin_fd < 0) return;
  if (f->stale_fd >= 0) close(f->stale_fd);
  f->stale_fd = f->pin_fd;
  f->pin_fd = -1;
}

/* Hold fd (an O_PATH handle, ours from now on) as the pin of the inode st describes. */
static void pin(ps_file *f, int fd, const struct stat *st)
{
  pin_retire(f);
  f->pin_fd = fd;
  f->pin_dev = st->st_dev;
  f->pin_ino = st->st_ino;
}

void ps_file_drop_stale(ps_file *f)
{
  if (f->stale_fd >= 0) close(f->stale_fd);
  f->stale_fd = -1;
}

/* Whether the path still names the inode we pin (no other file can carry its number) with
 * the size and timestamps known describes: the file we wrote last, not read again. Only
 * where changes after a stat get their own ctime (else a rewrite in place could match). */
static int same_as_pinned(ps_file *f, const ps_ident *known, ps_ident *id)
{
  struct stat st;
  if (!f->fine_ctime || !known || !known->valid || f->pin_fd < 0 || known->dev != f->pin_dev ||
      known->ino != f->pin_ino || fstatat(f->dirfd, f->base, &st, AT_SYMLINK_NOFOLLOW) != 0 ||
      !S_ISREG(st.st_mode))
    return 0;
  set_ident(id, &st);
  if (!same_ident(id, known)) {
    id->valid = 0; /* changed in place, or lstat saw something else: read it */
    return 0;
  }
  f->seen = st;
  f->seen_valid = 1;
  return 1;
}

/* Reads want bytes of fd into `into` (fewer if the file ends first). 0, or -1 with e set. */
static int read_all(ps_file *f, int fd, size_t want, ps_buf *into, ps_err *e)
{
  ps_buf_reserve(into, want);
  if (into->oom) {
    ps_err_set(e, "io", "read %s: out of memory (ENOMEM)", f->path);
    return -1;
  }
  while (into->len < want) {
    ssize_t r = ps_read(fd, into->p + into->len, want - into->len);
    if (r < 0) {
      int saved = errno;
      if (saved == EINTR) continue;
      into->len = 0;
      ps_err_sys(e, saved, "read", f->path);
      return -1;
    }
    if (r == 0) break;
    into->len += (size_t)r;
  }
  into->p[into->len] = '\0';
  return 0;
}

int ps_file_load(ps_file *f, ps_buf *into, const ps_ident *known, int *toobig, ps_ident *id,
                 ps_err *e)
{
  struct stat st;
  int fd, rc;

  into->len = 0;
  into->oom = 0;
  *toobig = 0;
  id->valid = 0;
  f->seen_valid = 0;
  if (same_as_pinned(f, known, id)) return PS_LOAD_SAME;
  fd = ps_open_regular(f->dirfd, f->base, f->path, "open", &st, e);
  if (fd < 0) return errno == ENOENT ? PS_LOAD_ABSENT : PS_LOAD_ERROR;
  set_ident(id, &st);
  f->seen = st; /* the descriptor we read: its owner, mode and links decide a quarantine */
  f->seen_valid = 1;
  if (known && same_ident(id, known) &&
      ps_wall_ms() - ((int64_t)st.st_ctim.tv_sec * 1000 + st.st_ctim.tv_nsec / 1000000) >
          PS_IDENT_SETTLE_MS) {
    close(fd);
    return PS_LOAD_SAME;
  }
  if ((uintmax_t)st.st_size > f->max_bytes) {
    close(fd);
    *toobig = 1;
    return PS_LOAD_OK;
  }
  rc = read_all(f, fd, (size_t)st.st_size, into, e);
  close(fd);
  if (rc != 0) return PS_LOAD_ERROR;
  if (f->pin_fd >= 0 && (st.st_dev != f->pin_dev || st.st_ino != f->pin_ino)) pin_retire(f);
  return PS_LOAD_OK;
}

/* Why the file the last load read is not plausibly a sessions file of ours (both
 * implementations write 0600 files by rename), or NULL when it is. */
static const char *not_ours(const ps_file *f, char *buf, size_t n)
{
  const struct stat *st = &f->seen;
  if (!f->seen_valid || !S_ISREG(st->st_mode))
    snprintf(buf, n, "it is not a regular file");
  else if (st->st_uid != geteuid())
    snprintf(buf, n, "it belongs to uid %ju, not to this user (uid %ju)", (uintmax_t)st->st_uid,
             (uintmax_t)geteuid());
  else if (st->st_mode & 077)
    snprintf(buf, n, "its mode %04o lets group or others in (a sessions file is 0600)",
             (unsigned)(st->st_mode & 07777));
  else if (st->st_nlink != 1)
    snprintf(buf, n, "it has %ju hard links", (uintmax_t)st->st_nlink);
  else
    return NULL;
  return buf;
}

int ps_file_quarantine(ps_file *f, int64_t now_ms, const char *why, int looks_ours,
                       char *moved_to, size_t n, ps_err *e)
{
  char name[512], reason[128];
  struct stat st;
  int i;

  if (not_ours(f, reason, sizeof reason) ||
      (!looks_ours && snprintf(reason, sizeof reason, "it does not begin like one (a JSON object)")))
  {
    ps_err_set(e, "corrupt", "%s is not a valid sessions file (%s); left as it is, since %s",
               f->path, why, reason);
    return -1;
  }
  for (i = 0; i < 100; i++) {
    if (i == 0) snprintf(name, sizeof name, "%s.corrupt-%lld", f->base, (long long)now_ms);
    else snprintf(name, sizeof name, "%s.corrupt-%lld-%d", f->base, (long long)now_ms, i);
    if (fstatat(f->dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0 && errno == ENOENT) break;
  }
  if (ps_renameat(f->dirfd, f->base, name) != 0) {
    ps_err_sys(e, errno, "move corrupt file aside", f->path);
    return -1;
  }
  /* It must be the very file judged (its mode is kept: it has no group or other bits). */
  if (ps_fstatat(f->dirfd, name, &st) != 0) {
    int saved = errno;
    renameat2(f->dirfd, name, f->dirfd, f->base, RENAME_NOREPLACE);
    ps_err_sys(e, saved, "check the corrupt file moved aside from", f->path);
    return -1;
  }
  if (st.st_dev != f->seen.st_dev || st.st_ino != f->seen.st_ino) {
    renameat2(f->dirfd, name, f->dirfd, f->base, RENAME_NOREPLACE);
    ps_err_set(e, "corrupt", "%s is not a valid sessions file (%s); left as it is, since it was "
               "replaced while being moved aside", f->path, why);
    return -1;
  }
  f->seen_valid = 0;
  snprintf(moved_to, n, "%s%s", f->path, name + strlen(f->base));
  return 0;
}

/* fd: the directory, opened before the rename so that only the fsync itself can fail after it. */
static int fsync_dir(ps_file *f, int fd, ps_err *e)
{
  int rc = 0;
  if (ps_fsync(fd) != 0) {
    ps_err_sys(e, errno, "file replaced, but could not fsync directory", f->dir);
    e->code = "not_durable"; /* the change is visible: a retry would apply it twice */
    rc = -1;
  }
  close(fd);
  return rc;
}

static int keep_owner(ps_file *f, int fd, ps_err *e)
{
  struct stat st;
  uid_t uid = f->seen.st_uid;
  gid_t gid = f->seen.st_gid;
  /* No file yet: as root in a service's directory, the first file is the service's too. */
  if (!f->seen_valid && !ps_dir_owner(f, &uid, &gid)) return 0;
  if (uid == geteuid() && gid == getegid()) return 0;
  if (ps_fstat(fd, &st) != 0) {
    ps_err_sys(e, errno, "stat temp file for", f->path);
    return -1;
  }
  if (st.st_uid == uid && st.st_gid == gid) return 0; /* (a set-group-ID directory) */
  if (ps_fchown(fd, uid, gid) != 0) {
    char what[96];
    snprintf(what, sizeof what, "give the new file the owner %ju:%ju of", (uintmax_t)uid,
             (uintmax_t)gid);
    ps_err_sys(e, errno, what, f->path);
    return -1;
  }
  return 0;
}

/* The write, made just after a stat (before), changed the ctime by less than any coarse
 * clock tick (>= 1 ms) and not by 0: this file system stamps changes after a stat finely. */
static void probe_fine_ctime(ps_file *f, int fd, const struct stat *before)
{
  struct stat after;
  int64_t d;
  if (fstat(fd, &after) != 0) return;
  d = ((int64_t)after.st_ctim.tv_sec - before->st_ctim.tv_sec) * 1000000000 +
      (after.st_ctim.tv_nsec - before->st_ctim.tv_nsec);
  if (d > 0 && d < 500000) f->fine_ctime = 1;
}

/* Fills the new temp file fd with buf: mode 0600, the replaced file's owner, fsync'ed when
 * durable, then closed; st: its identity. 0, or -1 with e set; fd is closed either way. */
static int fill_temp(ps_file *f, int fd, const char *buf, size_t len, struct stat *st, ps_err *e)
{
  const char *failed;
  int probe;
  if (ps_fchmod(fd, 0600) != 0) { failed = "chmod temp file for"; goto fail; }
  if (keep_owner(f, fd, e) != 0) { close(fd); return -1; }
  probe = !f->fine_ctime && !ps_fault_coarse_ctime() && fstat(fd, st) == 0;
  if (ps_write_all(fd, buf, len) != 0) { failed = "write temp file for"; goto fail; }
  if (probe) probe_fine_ctime(f, fd, st);
  if (f->durable && ps_fsync(fd) != 0) { failed = "fsync temp file for"; goto fail; }
  if (ps_fstat(fd, st) != 0) { failed = "stat temp file for"; goto fail; }
  if (ps_close(fd) != 0 && errno != EINTR) {
    ps_err_sys(e, errno, "close temp file for", f->path);
    return -1;
  }
  return 0;
fail:
  ps_err_sys(e, errno, failed, f->path);
  close(fd);
  return -1;
}

/* The temp file (st) is the file now: pin it by keep (an O_PATH handle, or -1), and take the
 * identity the path shows (rename bumps the ctime on most file systems; without the pin, the
 * one from before the rename, which only makes the next load read it). */
static void pin_published(ps_file *f, int keep, struct stat *st)
{
  struct stat now;
  if (keep < 0) return;
  if (fstat(keep, &now) == 0 && now.st_dev == st->st_dev && now.st_ino == st->st_ino &&
      now.st_size == st->st_size && now.st_mtim.tv_sec == st->st_mtim.tv_sec &&
      now.st_mtim.tv_nsec == st->st_mtim.tv_nsec)
    *st = now; /* (a write into it since our fstat would have moved the mtime) */
  pin(f, keep, st);
}

int ps_file_commit(ps_file *f, const char *buf, size_t len, ps_fence_fn fence, ps_ident *id,
                   ps_err *e)
{
  char tmp[512], rnd[17];
  struct stat st;
  int fd, dfd = -1, keep = -1;

  id->valid = 0;
  ps_random_hex(rnd, 8);
  snprintf(tmp, sizeof tmp, "%s.tmp-%ld-%s", f->base, (long)getpid(), rnd);
  do {
    fd = ps_openat(f->dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    ps_err_sys(e, errno, "create temp file for", f->path);
    return -1;
  }
  if (fill_temp(f, fd, buf, len, &st, e) != 0) goto fail;
  /* An O_PATH handle (it can neither read nor write) to pin the inode once it is the file;
   * without one (EMFILE, ...) the next load just reads the file again. */
  keep = openat(f->dirfd, tmp, O_PATH | O_NOFOLLOW | O_CLOEXEC);
  if (f->durable && (dfd = ps_openat(f->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0)) < 0) {
    ps_err_sys(e, errno, "open directory", f->dir);
    goto fail;
  }
  if (fence(f, e) != 0) goto fail;
  if (ps_renameat(f->dirfd, tmp, f->base) != 0) {
    ps_err_sys(e, errno, "rename temp file onto", f->path);
    goto fail;
  }
  pin_published(f, keep, &st);
  set_ident(id, &st);
  if (f->durable && fsync_dir(f, dfd, e) != 0) {
    id->valid = 0; /* published, but not known to be durable: report it */
    return -1;
  }
  return 0;
fail:
  if (dfd >= 0) close(dfd);
  if (keep >= 0) close(keep);
  unlinkat(f->dirfd, tmp, 0);
  return -1;
}

void ps_file_sweep_orphans(ps_file *f)
{
  char tprefix[512], bprefix[512], nprefix[512], iprefix[512];
  size_t tl, bl, nl, il;
  const char *lockbase = f->lockbase;
  struct dirent *d;
  long removed = 0;
  int dfd;
  DIR *dir;

  tl = (size_t)snprintf(tprefix, sizeof tprefix, "%s.tmp-", f->base);
  bl = (size_t)snprintf(bprefix, sizeof bprefix, "%s.break-", lockbase);
  nl = (size_t)snprintf(nprefix, sizeof nprefix, "%s.new-", lockbase);
  il = (size_t)snprintf(iprefix, sizeof iprefix, "%s.idle-", lockbase);
  dfd = openat(f->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return;
  dir = fdopendir(dfd);
  if (!dir) { close(dfd); return; }
  while ((d = readdir(dir)) != NULL) {
    struct stat st;
    int is_new = strncmp(d->d_name, nprefix, nl) == 0;
    int is_idle = strncmp(d->d_name, iprefix, il) == 0;
    int held = -1;
    if (strncmp(d->d_name, tprefix, tl) != 0 && strncmp(d->d_name, bprefix, bl) != 0 && !is_new &&
        !is_idle)
      continue;
    if (fstatat(dfd, d->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    if (!S_ISREG(st.st_mode) || st.st_uid != geteuid()) continue;
    /* A candidate lock may belong to a live contender: only old ones are orphans. */
    if (is_new && ps_wall_ms() - ((int64_t)st.st_mtim.tv_sec * 1000) < f->lock_stale_ms) continue;
    if (is_idle) {
      /* A parked sentinel stays flock()ed while its process lives: only a free one is an
       * orphan (a fork child that still shares a dead parent's flock keeps it one run longer). */
      struct stat fs;
      held = openat(dfd, d->d_name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
      if (held < 0) continue;
      if (fstat(held, &fs) != 0 || fs.st_dev != st.st_dev || fs.st_ino != st.st_ino ||
          flock(held, LOCK_EX | LOCK_NB) != 0) {
        close(held);
        continue;
      }
    }
    if (unlinkat(dfd, d->d_name, 0) == 0) removed++;
    if (held >= 0) close(held);
  }
  closedir(dir);
  if (removed) ps_file_event(f, "orphans_swept", "temporary files of killed writers removed",
                             f->dir, removed, 0, 0);
}
