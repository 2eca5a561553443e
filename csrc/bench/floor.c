/*
 * floor.c — the physical floors pairstore is measured against (issue 5). Not part of the
 * library: built by spec/bench/run.sh into build/bench/floor.
 *
 *   floor write DIR SIZE N [--no-fsync]
 *       N times the durable replacement sequence of engine/file/datafile.c, with a SIZE-byte
 *       payload:
 *       open(temp, O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC, 0600) -> fchmod 0600 ->
 *       full write -> fsync -> close -> rename onto DIR/floor.json -> open DIR -> fsync -> close.
 *       --no-fsync drops the two fsyncs and nothing else (the durable = false floor).
 *
 *   floor read FILE N
 *       N times: open(O_RDONLY|O_NOFOLLOW|O_CLOEXEC) -> fstat -> one read of st_size bytes into a
 *       reused buffer -> close -> cjson.decode (a private cjson.new() instance with the same
 *       strict settings as pairstore's). cjson is a Lua C module, so this program embeds a
 *       Lua 5.4 state just to call it; the open/read part stays plain C, the way the store
 *       could do it at best.
 *
 *   floor lock DIR N
 *       (information only) N times the lock round trip of engine/file/lock.c with no
 *       contention, with the sentinel made once and parked (its futimens, once a second at
 *       most, left out):
 *       getpid -> renameat2(parked -> DIR/floor.json.lock, RENAME_NOREPLACE) -> fstat+lstat
 *       (the commit fence) -> lstat -> renameat2(back to the parking name) -> lstat.
 *
 * Output, one line: "floor mode=<m> size=<bytes> n=<N> secs=<s> ops_per_s=<r> us_per_op=<u>
 * us_median=<u> us_max=<u>". Exit status 0, or 1 with a message on the first failure.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

static double mono(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, const char *path)
{
  fprintf(stderr, "floor: %s %s: %s\n", what, path ? path : "", strerror(errno));
  exit(1);
}

static int cmp_double(const void *a, const void *b)
{
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static void report(const char *mode, long size, long n, double secs, double *each)
{
  double med, max;
  qsort(each, (size_t)n, sizeof *each, cmp_double);
  med = each[n / 2];
  max = each[n - 1];
  printf("floor mode=%s size=%ld n=%ld secs=%.6f ops_per_s=%.2f us_per_op=%.2f us_median=%.2f us_max=%.2f\n",
         mode, size, n, secs, (double)n / secs, secs * 1e6 / (double)n, med * 1e6, max * 1e6);
}

static void write_all(int fd, const char *p, size_t n, const char *path)
{
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      die("write", path);
    }
    p += w;
    n -= (size_t)w;
  }
}

static long parse_count(const char *s, const char *what)
{
  char *end;
  long v = strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || v < 0 || v > INT_MAX) {
    fprintf(stderr, "floor: bad %s %s\n", what, s);
    exit(2);
  }
  return v;
}

static int do_write(const char *dir, long size, long n, int durable)
{
  char target[PATH_MAX], tmp[PATH_MAX + 64];
  char *payload = malloc((size_t)size + 1);
  double *each = malloc((size_t)n * sizeof *each), t0, t1;
  long i;

  if (!payload || !each) die("malloc", NULL);
  /* JSON-looking bytes; their value does not matter to the disk. */
  for (i = 0; i < size; i++) payload[i] = "{\"sid\":\"0123456789abcdef\"},"[i % 26];
  snprintf(target, sizeof target, "%s/floor.json", dir);

  t0 = mono();
  for (i = 0; i < n; i++) {
    double s = mono();
    int fd;
    snprintf(tmp, sizeof tmp, "%s.tmp-%ld-%ld", target, (long)getpid(), i);
    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) die("open", tmp);
    if (fchmod(fd, 0600) != 0) die("fchmod", tmp);
    write_all(fd, payload, (size_t)size, tmp);
    if (durable && fsync(fd) != 0) die("fsync", tmp);
    if (close(fd) != 0) die("close", tmp);
    if (rename(tmp, target) != 0) die("rename", tmp);
    if (durable) {
      int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (dfd < 0) die("open", dir);
      if (fsync(dfd) != 0) die("fsync", dir);
      close(dfd);
    }
    each[i] = mono() - s;
  }
  t1 = mono();
  report(durable ? "write" : "write-nofsync", size, n, t1 - t0, each);
  free(payload);
  free(each);
  return 0;
}

static int do_read(const char *path, long n)
{
  lua_State *L = luaL_newstate();
  double *each = malloc((size_t)n * sizeof *each), t0, t1;
  char *buf = NULL;
  size_t cap = 0;
  long i, size = 0;
  int decode;

  if (!L || !each) die("malloc", NULL);
  luaL_openlibs(L);
  /* local json = require("cjson").new(), configured like pairstore's private instance */
  if (luaL_dostring(L,
        "local j = require('cjson').new()\n"
        "j.decode_invalid_numbers(false)\n"
        "j.decode_max_depth(20)\n"
        "return j.decode") != LUA_OK) {
    fprintf(stderr, "floor: cannot load cjson: %s\n", lua_tostring(L, -1));
    return 1;
  }
  decode = lua_gettop(L);

  t0 = mono();
  for (i = 0; i < n; i++) {
    double s = mono();
    struct stat st;
    size_t len = 0;
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) die("open", path);
    if (fstat(fd, &st) != 0) die("fstat", path);
    if ((size_t)st.st_size + 1 > cap) {
      cap = (size_t)st.st_size + 1;
      free(buf);
      buf = malloc(cap);
      if (!buf) die("malloc", NULL);
    }
    while (len < (size_t)st.st_size) {
      ssize_t r = read(fd, buf + len, (size_t)st.st_size - len);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) die("read", path);
      if (r == 0) break;
      len += (size_t)r;
    }
    close(fd);
    size = (long)len;
    lua_pushvalue(L, decode);
    lua_pushlstring(L, buf, len);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
      fprintf(stderr, "floor: decode %s: %s\n", path, lua_tostring(L, -1));
      return 1;
    }
    lua_settop(L, decode); /* the parsed document becomes garbage, as in a store call */
    each[i] = mono() - s;
  }
  t1 = mono();
  report("read", size, n, t1 - t0, each);
  free(buf);
  free(each);
  lua_close(L);
  return 0;
}

static int do_lock(const char *dir, long n)
{
  char lockpath[PATH_MAX], idle[PATH_MAX + 32], proc[64], pid[32];
  double *each = malloc((size_t)n * sizeof *each), t0, t1;
  int plen = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
  int fd;
  long i;

  if (!each) die("malloc", NULL);
  snprintf(lockpath, sizeof lockpath, "%s/floor.json.lock", dir);
  snprintf(idle, sizeof idle, "%s.idle-0123456789abcdef", lockpath);
  /* Made once, as a store does: a flocked 0500 sentinel holding "<pid>\n", parked. */
  fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) die("open O_TMPFILE", dir);
  write_all(fd, pid, (size_t)plen, dir);
  if (fchmod(fd, 0500) != 0) die("fchmod", dir);
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) die("flock", dir);
  snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
  if (linkat(AT_FDCWD, proc, AT_FDCWD, idle, AT_SYMLINK_FOLLOW) != 0) die("linkat", idle);
  t0 = mono();
  for (i = 0; i < n; i++) {
    double s = mono();
    struct stat mine, there;
    if (getpid() <= 0) die("getpid", NULL);
    if (renameat2(AT_FDCWD, idle, AT_FDCWD, lockpath, RENAME_NOREPLACE) != 0) die("rename", lockpath);
    if (fstat(fd, &mine) != 0 || lstat(lockpath, &there) != 0) die("fence", lockpath);
    if (lstat(lockpath, &there) != 0) die("lstat", lockpath);
    if (renameat2(AT_FDCWD, lockpath, AT_FDCWD, idle, RENAME_NOREPLACE) != 0) die("rename", idle);
    if (lstat(idle, &there) != 0) die("lstat", idle);
    each[i] = mono() - s;
  }
  t1 = mono();
  report("lock", 0, n, t1 - t0, each);
  unlink(idle);
  close(fd);
  free(each);
  return 0;
}

int main(int argc, char **argv)
{
  if (argc >= 5 && strcmp(argv[1], "write") == 0) {
    int durable = !(argc >= 6 && strcmp(argv[5], "--no-fsync") == 0);
    long n = parse_count(argv[4], "count");
    if (n < 1) n = 1;
    return do_write(argv[2], parse_count(argv[3], "size"), n, durable);
  }
  if (argc == 4 && strcmp(argv[1], "read") == 0) {
    long n = parse_count(argv[3], "count");
    return do_read(argv[2], n < 1 ? 1 : n);
  }
  if (argc == 4 && strcmp(argv[1], "lock") == 0) {
    long n = parse_count(argv[3], "count");
    return do_lock(argv[2], n < 1 ? 1 : n);
  }
  fprintf(stderr,
          "usage: floor write DIR SIZE N [--no-fsync]\n"
          "       floor read FILE N\n"
          "       floor lock DIR N\n");
  return 2;
}
