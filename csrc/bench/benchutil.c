/*
 * benchutil.c — what the bench scripts (spec/bench) need from the system and plain Lua lacks: a monotonic
 * clock shared by all processes (CLOCK_MONOTONIC), sleeping without spawning a process,
 * signals and pids, and turning callgrind's collection on and off around one operation. Not part of the library: built by spec/bench/run.sh into
 * build/bench/benchutil.so.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#if defined(__has_include)
#if __has_include(<valgrind/callgrind.h>)
#include <valgrind/callgrind.h>
#define HAVE_CALLGRIND 1
#endif
#endif
#ifdef HAVE_CALLGRIND
#define RUNNING_ON_VALGRIND_OR_ZERO (RUNNING_ON_VALGRIND != 0)
#else
#define RUNNING_ON_VALGRIND_OR_ZERO 0
#endif

/* Seconds on CLOCK_MONOTONIC, as a float (ns resolution; comparable across processes). */
static int b_mono(lua_State *L)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
  return 1;
}

/* sleep(seconds): nanosleep, resumed after signals. */
static int b_sleep(lua_State *L)
{
  lua_Number s = luaL_checknumber(L, 1);
  struct timespec ts;
  if (s <= 0) return 0;
  ts.tv_sec = (time_t)s;
  ts.tv_nsec = (long)((s - (lua_Number)ts.tv_sec) * 1e9);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) { }
  return 0;
}

static int b_getpid(lua_State *L)
{
  lua_pushinteger(L, (lua_Integer)getpid());
  return 1;
}

/* kill(pid, sig) -> true | nil, message */
static int b_kill(lua_State *L)
{
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  int sig = (int)luaL_checkinteger(L, 2);
  luaL_argcheck(L, pid > 0, 1, "pid must be positive");
  if (kill(pid, sig) != 0) {
    lua_pushnil(L);
    lua_pushstring(L, strerror(errno));
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* alive(pid) -> boolean (kill(pid, 0); a zombie still counts as alive) */
static int b_alive(lua_State *L)
{
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  lua_pushboolean(L, pid > 0 && (kill(pid, 0) == 0 || errno == EPERM));
  return 1;
}

/* collect(on): with valgrind --tool=callgrind --collect-atstart=no, count instructions only
 * between collect(true) and collect(false). A no-op outside callgrind (or without the header). */
static int collecting;
static int b_collect(lua_State *L)
{
  int on = lua_toboolean(L, 1);
#ifdef HAVE_CALLGRIND
  if (on != collecting) CALLGRIND_TOGGLE_COLLECT;
#endif
  collecting = on;
  lua_pushboolean(L, RUNNING_ON_VALGRIND_OR_ZERO);
  return 1;
}

static const luaL_Reg funcs[] = {
  { "mono", b_mono }, { "sleep", b_sleep }, { "getpid", b_getpid }, { "kill", b_kill },
  { "alive", b_alive }, { "collect", b_collect }, { NULL, NULL },
};

int luaopen_benchutil(lua_State *L);

int luaopen_benchutil(lua_State *L)
{
  luaL_newlib(L, funcs);
  lua_pushinteger(L, SIGKILL);
  lua_setfield(L, -2, "SIGKILL");
  return 1;
}
