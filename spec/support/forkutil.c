/*
 * test.forkutil — fork for the specs (a store used across fork, as OpenResty's master and
 * workers do). Test-only: built by `make test` into build/$(LUA)/test/, never installed.
 *   fork() -> pid (0 in the child)   wait(pid) -> exit status   _exit(code)   getpid()
 */
#include <lauxlib.h>
#include <lua.h>
#include "../../csrc/compat.h" /* the 5.4 API on Lua 5.3, 5.1 and LuaJIT */
#include <errno.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int f_fork(lua_State *L)
{
  pid_t pid = fork();
  if (pid < 0) return luaL_error(L, "fork: %s", strerror(errno));
  lua_pushinteger(L, pid);
  return 1;
}

static int f_wait(lua_State *L)
{
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return luaL_error(L, "waitpid: %s", strerror(errno));
  lua_pushinteger(L, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
  return 1;
}

static int f_exit(lua_State *L)
{
  _exit((int)luaL_optinteger(L, 1, 0));
  return 0;
}

static int f_getpid(lua_State *L)
{
  lua_pushinteger(L, getpid());
  return 1;
}

int luaopen_test_forkutil(lua_State *L)
{
  static const luaL_Reg fns[] = {
    { "fork", f_fork }, { "wait", f_wait }, { "_exit", f_exit }, { "getpid", f_getpid },
    { NULL, NULL },
  };
  luaL_newlib(L, fns);
  return 1;
}
