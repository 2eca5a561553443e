/*
 * beside.c — what lies beside a sessions file, for `pairstore stats`: the file itself, the
 * lock sentinel (its holder's pid, its age) and the corrupt files moved aside. Read without
 * the lock and without changing anything: never through a symlink, never blocking on a FIFO.
 */
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *kind_of(mode_t m)
{
  return S_ISREG(m) ? "file" : S_ISDIR(m) ? "directory" : S_ISLNK(m) ? "symlink" : S_ISFIFO(m) ? "fifo" : "other";
}

static void push_stat(lua_State *L, const struct stat *st)
{
  lua_createtable(L, 0, 3);
  lua_pushstring(L, kind_of(st->st_mode));
  lua_setfield(L, -2, "kind");
  lua_pushinteger(L, (lua_Integer)st->st_size);
  lua_setfield(L, -2, "size");
  lua_pushinteger(L, (lua_Integer)st->st_mtim.tv_sec * 1000 + st->st_mtim.tv_nsec / 1000000);
  lua_setfield(L, -2, "mtime_ms");
}

int ps_file_beside(lua_State *L, const char *path, ps_err *e)
{
  char lock[PATH_MAX], dir[PATH_MAX], best[NAME_MAX + 1] = "";
  const char *slash = strrchr(path, '/'), *base;
  struct stat st;
  size_t blen;
  int n = 0, fd;
  int64_t best_ms = -1, best_size = 0;
  DIR *d;
  struct dirent *de;

  if (!slash || snprintf(lock, sizeof lock, "%s.lock", path) >= (int)sizeof lock)
    return luaL_error(L, "pairstore: files_beside: an absolute path");
  snprintf(dir, sizeof dir, "%.*s", slash == path ? 1 : (int)(slash - path), path);
  base = slash + 1;
  blen = strlen(base);
  lua_createtable(L, 0, 3);
  if (lstat(path, &st) == 0) {
    push_stat(L, &st);
    lua_setfield(L, -2, "file");
  } else if (errno != ENOENT) {
    ps_err_sys(e, errno, "lstat", path);
    return -1;
  }
  if (lstat(lock, &st) == 0) {
    push_stat(L, &st);
    fd = open(lock, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd >= 0) {
      char buf[32];
      ssize_t r = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? read(fd, buf, sizeof buf - 1) : -1;
      close(fd);
      if (r > 1 && buf[r - 1] == '\n') {
        char *end;
        long pid;
        buf[r - 1] = '\0';
        pid = strtol(buf, &end, 10);
        if (*end == '\0' && buf[0] >= '0' && buf[0] <= '9' && pid > 0) {
          lua_pushinteger(L, pid);
          lua_setfield(L, -2, "pid");
        }
      }
    }
    lua_setfield(L, -2, "lock");
  } else if (errno != ENOENT) {
    ps_err_sys(e, errno, "lstat", lock);
    return -1;
  }
  /* <base>.corrupt-*: how many, and the newest by its mtime (when it was moved aside: a
   * rename keeps the mtime of the last write, which is when it was last the store). */
  d = opendir(dir);
  if (!d) {
    ps_err_sys(e, errno, "opendir", dir);
    return -1;
  }
  while ((de = readdir(d)) != NULL) {
    int64_t ms;
    if (strncmp(de->d_name, base, blen) || strncmp(de->d_name + blen, ".corrupt-", 9)) continue;
    if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue; /* (gone meanwhile) */
    n++;
    ms = (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000;
    if (ms > best_ms) {
      best_ms = ms;
      best_size = (int64_t)st.st_size;
      snprintf(best, sizeof best, "%s", de->d_name);
    }
  }
  closedir(d);
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, n);
  lua_setfield(L, -2, "count");
  if (n) {
    lua_pushstring(L, best);
    lua_setfield(L, -2, "newest");
    lua_pushinteger(L, (lua_Integer)best_ms);
    lua_setfield(L, -2, "newest_ms");
    lua_pushinteger(L, (lua_Integer)best_size);
    lua_setfield(L, -2, "newest_size");
  }
  lua_setfield(L, -2, "corrupt");
  return 0;
}

