/*
 * test.forkutil — fork for the specs (a store used across fork, as OpenResty's master and
 * workers do). Test-only: built by `make test` into build/$(LUA)/test/, never installed.
 *   fork() -> pid (0 in the child)   wait(pid) -> exit status   _exit(code)   getpid()
 *   listen_blackhole([port]) -> fd, port   pause()  (spec/nginx/run.sh: a database that never answers)
 */
#include <lauxlib.h>
#include <lua.h>
#include "../../csrc/compat.h" /* the 5.4 API on Lua 5.3, 5.1 and LuaJIT */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
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

/* A loopback TCP listener that never answers (a black-holed database for spec/nginx/outage.lua):
 * bound to 127.0.0.1:port (0: any free port), a backlog of SOMAXCONN, never accept()ed, so the
 * kernel completes every handshake and the client waits for a first byte that never comes.
 * Returns fd, port; the socket lives as long as the process. */
static int f_listen_blackhole(lua_State *L)
{
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return luaL_error(L, "socket: %s", strerror(errno));
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons((unsigned short)luaL_optinteger(L, 1, 0));
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, SOMAXCONN) != 0 ||
      getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
    int e = errno;
    close(fd);
    lua_pushnil(L);
    lua_pushstring(L, strerror(e));
    return 2;
  }
  lua_pushinteger(L, fd);
  lua_pushinteger(L, ntohs(a.sin_port));
  return 2;
}

/* Waits for a signal (the black hole's process: SIGTERM ends it). */
static int f_pause(lua_State *L)
{
  (void)L;
  pause();
  return 0;
}

int luaopen_test_forkutil(lua_State *L)
{
  static const luaL_Reg fns[] = {
    { "fork", f_fork }, { "wait", f_wait }, { "_exit", f_exit }, { "getpid", f_getpid },
    { "listen_blackhole", f_listen_blackhole }, { "pause", f_pause },
    { NULL, NULL },
  };
  luaL_newlib(L, fns);
  return 1;
}
