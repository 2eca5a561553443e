/*
 * test.pgfloor — the PostgreSQL floor of `make bench`: bare libpq calls from Lua, so that the
 * bench can time a round trip (`SELECT 1`) and a committed single-row `UPDATE` through the
 * same client library the engine uses, with nothing of pairstore in between. Test-only: built
 * by `make bench` into build/$(LUA)/test/, never installed.
 *   connect(conninfo) -> conn | nil, message
 *   conn:exec(sql) -> first value of the first row (a string), or true | nil, message
 *   conn:prepare(name, sql, nparams) -> true | nil, message
 *   conn:run(name, params...) -> first value of the first row, or true | nil, message
 *     (PQexecPrepared with text parameters: one round trip, as an engine's prepared statement)
 *   conn:backend_pid() -> integer
 *   conn:ok() -> whether the connection is still good (PQstatus)
 *   conn:close()
 */
#include <lauxlib.h>
#include <lua.h>
#include "../../csrc/compat.h" /* the 5.4 API on Lua 5.3, 5.1 and LuaJIT */
#include <libpq-fe.h>
#include <string.h>

#define CONN_MT "test.pgfloor.conn"
#define MAX_PARAMS 8

typedef struct { PGconn *pg; } conn_t;

static PGconn *check_conn(lua_State *L)
{
  conn_t *c = luaL_checkudata(L, 1, CONN_MT);
  if (!c->pg) luaL_error(L, "pgfloor: connection is closed");
  return c->pg;
}

/* One result: the first value, true for a command, nil + message for an error. */
static int push_result(lua_State *L, PGconn *pg, PGresult *r)
{
  ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
  int n;
  if (st == PGRES_TUPLES_OK && PQntuples(r) > 0 && PQnfields(r) > 0) {
    lua_pushstring(L, PQgetvalue(r, 0, 0));
    n = 1;
  } else if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK) {
    lua_pushboolean(L, 1);
    n = 1;
  } else {
    lua_pushnil(L);
    lua_pushstring(L, r ? PQresultErrorMessage(r) : PQerrorMessage(pg));
    n = 2;
  }
  PQclear(r);
  return n;
}

static int f_connect(lua_State *L)
{
  const char *info = luaL_checkstring(L, 1);
  conn_t *c = lua_newuserdatauv(L, sizeof *c, 0);
  c->pg = NULL;
  luaL_setmetatable(L, CONN_MT);
  c->pg = PQconnectdb(info);
  if (PQstatus(c->pg) != CONNECTION_OK) {
    lua_pushnil(L);
    lua_pushstring(L, PQerrorMessage(c->pg));
    PQfinish(c->pg);
    c->pg = NULL;
    return 2;
  }
  return 1;
}

static int c_exec(lua_State *L)
{
  PGconn *pg = check_conn(L);
  return push_result(L, pg, PQexec(pg, luaL_checkstring(L, 2)));
}

static int c_prepare(lua_State *L)
{
  PGconn *pg = check_conn(L);
  const char *name = luaL_checkstring(L, 2), *sql = luaL_checkstring(L, 3);
  int np = (int)luaL_optinteger(L, 4, 0);
  return push_result(L, pg, PQprepare(pg, name, sql, np, NULL));
}

static int c_run(lua_State *L)
{
  PGconn *pg = check_conn(L);
  const char *name = luaL_checkstring(L, 2);
  const char *vals[MAX_PARAMS];
  int np = lua_gettop(L) - 2;
  luaL_argcheck(L, np <= MAX_PARAMS, 3, "too many parameters");
  for (int i = 0; i < np; i++) vals[i] = luaL_checkstring(L, i + 3);
  return push_result(L, pg, PQexecPrepared(pg, name, np, vals, NULL, NULL, 0));
}

static int c_backend_pid(lua_State *L)
{
  lua_pushinteger(L, PQbackendPID(check_conn(L)));
  return 1;
}

static int c_ok(lua_State *L)
{
  conn_t *c = luaL_checkudata(L, 1, CONN_MT);
  lua_pushboolean(L, c->pg && PQstatus(c->pg) == CONNECTION_OK);
  return 1;
}

static int c_close(lua_State *L)
{
  conn_t *c = luaL_checkudata(L, 1, CONN_MT);
  if (c->pg) PQfinish(c->pg);
  c->pg = NULL;
  return 0;
}

int luaopen_test_pgfloor(lua_State *L);

int luaopen_test_pgfloor(lua_State *L)
{
  static const luaL_Reg methods[] = {
    { "exec", c_exec }, { "prepare", c_prepare }, { "run", c_run },
    { "backend_pid", c_backend_pid }, { "ok", c_ok }, { "close", c_close }, { NULL, NULL },
  };
  static const luaL_Reg fns[] = { { "connect", f_connect }, { NULL, NULL } };
  if (luaL_newmetatable(L, CONN_MT)) {
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, c_close);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, c_close);
    lua_setfield(L, -2, "__close");
  }
  lua_pop(L, 1);
  luaL_newlib(L, fns);
  return 1;
}
