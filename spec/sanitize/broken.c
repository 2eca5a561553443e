/* broken.c — a deliberately faulty Lua C module: the negative control of the sanitizer runs
 * (valgrind and ASan must report it, or the harness is not looking). Never part of the build. */
#include <stdlib.h>
#include <string.h>
#include <lua.h>
#include <lauxlib.h>

int luaopen_broken(lua_State *L);

static int leak(lua_State *L)
{
  char *p = malloc(48);
  memset(p, 'x', 48);
  lua_pushinteger(L, p[3]);
  return 1; /* p is lost: a definite leak */
}

static int overflow(lua_State *L)
{
  char *volatile p = malloc(8);
  int i = (int)luaL_optinteger(L, 1, 8);
  p[i] = 'x'; /* heap buffer overflow */
  lua_pushinteger(L, p[0]);
  free(p);
  return 1;
}

int luaopen_broken(lua_State *L)
{
  lua_newtable(L);
  lua_pushcfunction(L, leak);
  lua_setfield(L, -2, "leak");
  lua_pushcfunction(L, overflow);
  lua_setfield(L, -2, "overflow");
  return 1;
}
