/*
 * pg_none.c — a build without PostgreSQL (make PG=0): the engine's entry points say so
 * instead of linking the engine, its transport and libpq's headers.
 */
#include "pairstore.h"

#define NO_PG "this pairstore was built without PostgreSQL (make PG=0)"

ps_engine *ps_pg_engine_new(lua_State *L, const char *target, const ps_pg_opts *o, int decode)
{
  (void)target; (void)o; (void)decode;
  luaL_error(L, "pairstore.open: %s", NO_PG);
  return NULL;
}

int ps_pg_push_display(lua_State *L, const char *target, const char *store)
{
  (void)target; (void)store;
  return luaL_error(L, "pairstore: %s", NO_PG);
}

ps_engine *ps_pg_engine_clone(lua_State *L, ps_engine *from, int decode, int listen)
{
  (void)from; (void)decode; (void)listen;
  luaL_error(L, "pairstore: %s", NO_PG);
  return NULL;
}

int ps_pg_is_engine(lua_State *L, int idx)
{
  (void)L; (void)idx;
  return 0;
}

void ps_pg_register(lua_State *L)
{
  (void)L;
}

void ps_pg_until(ps_engine *e, int64_t deadline)
{
  (void)e; (void)deadline;
}

int ps_pg_server(ps_engine *e, lua_State *L, int64_t deadline, ps_err *err)
{
  (void)e; (void)L; (void)deadline;
  ps_err_set(err, "unsupported", "%s", NO_PG);
  return -1;
}

#ifdef PS_TEST
void ps_pg_fault_cut_commits(int n)
{
  (void)n;
}

long ps_pg_roundtrips(void)
{
  return 0;
}
#endif
