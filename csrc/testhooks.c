/*
 * testhooks.c — the hooks only the specs use, outside the module table: core.test_hooks()
 * returns them (fault injection control, errno names, the file engine's self-check, the
 * PostgreSQL engine's commit-cut hook and round-trip count). Compiled only into the test
 * build (-DPS_TEST); its fault injection works only with -DPS_FAULT_INJECTION too.
 */
#ifndef PS_TEST
#error "testhooks.c is for the test build only (-DPS_TEST)"
#endif
#include "pairstore.h"

#include <errno.h>
#include <string.h>

/* fault(nth, errno, short_write): fail the nth wrapped system call from now (0: stop). */
static int t_fault(lua_State *L)
{
  ps_fault_arm((long)luaL_optinteger(L, 1, 0), (int)luaL_optinteger(L, 2, 0), lua_toboolean(L, 3));
  return 0;
}

static int t_fault_coarse_ctime(lua_State *L)
{
  ps_fault_set_coarse_ctime(lua_toboolean(L, 1));
  return 0;
}

/* fault_state() -> available, calls counted, whether the armed fault was hit */
static int t_fault_state(lua_State *L)
{
  lua_pushboolean(L, ps_fault_available());
  lua_pushinteger(L, ps_fault_calls());
  lua_pushboolean(L, ps_fault_hit());
  return 3;
}

static int t_errno(lua_State *L)
{
  static const struct { const char *name; int value; } names[] = {
    { "ENOSPC", ENOSPC }, { "EIO", EIO }, { "EACCES", EACCES }, { "EDQUOT", EDQUOT },
    { "EROFS", EROFS }, { "EINTR", EINTR }, { "EFBIG", EFBIG }, { "EPERM", EPERM },
    { "EOPNOTSUPP", EOPNOTSUPP },
  };
  const char *n = luaL_checkstring(L, 1);
  size_t i;
  for (i = 0; i < sizeof names / sizeof names[0]; i++)
    if (!strcmp(names[i].name, n)) {
      lua_pushinteger(L, names[i].value);
      return 1;
    }
  return luaL_argerror(L, 1, "unknown errno name");
}

/* selfcheck(store) -> true, "indexed" | "not indexed", or false, what disagrees: whether
 * the file engine's sid index and live count agree with its cached sessions. Reads memory
 * only. store: the core store userdata (pairstore's store._core). */
static int t_selfcheck(lua_State *L)
{
  ps_store *s = luaL_checkudata(L, 1, PS_STORE_MT);
  if (!s->eng) return luaL_error(L, "pairstore: store is closed");
  lua_settop(L, 1);
  lua_getiuservalue(L, 1, PS_UV_ENGINE);
  return ps_file_engine_selfcheck(L, 2);
}

/* pg_cut_commits(n): the next n PostgreSQL commits of this process send COMMIT and lose the
 * connection before its answer (the commit-outcome-unknown path). */
static int t_pg_cut_commits(lua_State *L)
{
  ps_pg_fault_cut_commits((int)luaL_checkinteger(L, 1));
  return 0;
}

/* pg_roundtrips() -> the PostgreSQL round trips this process made so far (for the bench). */
static int t_pg_roundtrips(lua_State *L)
{
  lua_pushinteger(L, (lua_Integer)ps_pg_roundtrips());
  return 1;
}

int ps_test_hooks(lua_State *L)
{
  static const luaL_Reg hooks[] = {
    { "fault", t_fault }, { "fault_state", t_fault_state }, { "errno", t_errno },
    { "fault_coarse_ctime", t_fault_coarse_ctime }, { "selfcheck", t_selfcheck },
    { "pg_cut_commits", t_pg_cut_commits }, { "pg_roundtrips", t_pg_roundtrips },
    { NULL, NULL },
  };
  luaL_newlib(L, hooks);
  return 1;
}
