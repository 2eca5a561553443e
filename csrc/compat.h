/*
 * compat.h — one C source for Lua 5.4, 5.3, 5.1 and LuaJIT 2.1.
 *
 * The sources are written against the Lua 5.4 C API. This header, included after lua.h and
 * lauxlib.h, supplies what an older runtime lacks, as static inline functions under a ps_
 * name and a macro that maps the 5.4 name onto it (so a runtime that has a function of its
 * own, with other semantics, never clashes with ours). Guarded by LUA_VERSION_NUM, and by
 * LUAJIT_VERSION where LuaJIT 2.1 (which speaks the 5.1 API plus luaL_setfuncs,
 * luaL_testudata, luaL_setmetatable, luaL_traceback, lua_tointegerx, LUA_OK) already has it.
 *
 * Numbers on 5.1 and LuaJIT: every number is a double. lua_isinteger is true for a number
 * with an integral value that a lua_Integer (64 bits) represents exactly, as 5.4 converts
 * such a float; lua_tointeger[x] follows 5.4 (not convertible: 0 and *isnum = 0, where 5.1
 * would truncate), and so do luaL_checkinteger / luaL_optinteger ("number has no integer
 * representation"). Integers up to 2^53 (every timestamp the store accepts, PS_CLOCK_MAX)
 * stay exact; above that doubles round, as they do.
 *
 * User values: lua_newuserdatauv(L, size, n) with n > 0 keeps its n values in a table: the
 * single user value on 5.3, the environment table on 5.1 and LuaJIT. lua_getiuservalue
 * returns the type it pushed (nil, LUA_TNONE, for a userdata without values).
 */
#ifndef PAIRSTORE_COMPAT_H
#define PAIRSTORE_COMPAT_H

#include <lua.h>
#include <lauxlib.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#if !defined(LUA_VERSION_NUM) || (LUA_VERSION_NUM != 501 && LUA_VERSION_NUM != 503 && LUA_VERSION_NUM != 504)
#error "pairstore builds against Lua 5.1, LuaJIT 2.1, Lua 5.3 or Lua 5.4"
#endif

/* LuaJIT's lua.h says 5.1 but does not tell that it is LuaJIT: its luajit.h does (it lies
 * next to lua.h, in the include directory pkg-config luajit gives). */
#if LUA_VERSION_NUM == 501 && !defined(LUAJIT_VERSION) && defined(__has_include)
#if __has_include(<luajit.h>)
#include <luajit.h>
#endif
#endif

/* ---- 5.3 and older: luaL_typeerror, n user values ----------------------------------------- */
#if LUA_VERSION_NUM < 504

/* As 5.4's: "<tname> expected, got <__name or type>". */
static inline int ps_luaL_typeerror(lua_State *L, int arg, const char *tname)
{
  const char *got;
  if (luaL_getmetafield(L, arg, "__name") && lua_type(L, -1) == LUA_TSTRING) got = lua_tostring(L, -1);
  else if (lua_type(L, arg) == LUA_TLIGHTUSERDATA) got = "light userdata";
  else got = luaL_typename(L, arg);
  return luaL_argerror(L, arg, lua_pushfstring(L, "%s expected, got %s", tname, got));
}
#define luaL_typeerror ps_luaL_typeerror

#if LUA_VERSION_NUM == 503
#define ps_uv_get(L, i) ((void)lua_getuservalue((L), (i)))
#define ps_uv_set(L, i) lua_setuservalue((L), (i))
#else
#define ps_uv_get(L, i) lua_getfenv((L), (i))
#define ps_uv_set(L, i) ((void)lua_setfenv((L), (i)))
#endif

static inline void *ps_lua_newuserdatauv(lua_State *L, size_t size, int nuv)
{
  void *p = lua_newuserdata(L, size);
  if (nuv > 0) {
    lua_createtable(L, nuv, 0);
    ps_uv_set(L, -2);
  }
  return p;
}
#define lua_newuserdatauv ps_lua_newuserdatauv

/* Pushes the n-th user value of the userdata at idx; returns its type. */
static inline int ps_lua_getiuservalue(lua_State *L, int idx, int n)
{
  ps_uv_get(L, idx);
  if (lua_type(L, -1) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_pushnil(L);
    return LUA_TNONE;
  }
  lua_rawgeti(L, -1, n);
  lua_remove(L, -2);
  return lua_type(L, -1);
}
#define lua_getiuservalue ps_lua_getiuservalue

/* Pops a value and sets it as the n-th user value of the userdata at idx; 0 when it has none. */
static inline int ps_lua_setiuservalue(lua_State *L, int idx, int n)
{
  if (idx < 0 && idx > LUA_REGISTRYINDEX) idx = lua_gettop(L) + idx + 1;
  ps_uv_get(L, idx);
  if (lua_type(L, -1) != LUA_TTABLE) {
    lua_pop(L, 2);
    return 0;
  }
  lua_insert(L, -2);
  lua_rawseti(L, -2, n);
  lua_pop(L, 1);
  return 1;
}
#define lua_setiuservalue ps_lua_setiuservalue

#endif /* < 504 */

/* ---- 5.1 and LuaJIT ---------------------------------------------------------------------- */
#if LUA_VERSION_NUM == 501

_Static_assert(sizeof(lua_Integer) == sizeof(ptrdiff_t) && sizeof(lua_Integer) >= 8,
               "pairstore needs a 64-bit lua_Integer (ptrdiff_t on a 64-bit machine)");
#define LUA_MAXINTEGER PTRDIFF_MAX
#define LUA_MININTEGER PTRDIFF_MIN

#ifndef LUA_OK
#define LUA_OK 0
#endif

#define LUA_OPADD 0
#define LUA_OPSUB 1
#define LUA_OPMUL 2
#define LUA_OPDIV 3
#define LUA_OPMOD 4
#define LUA_OPPOW 5
#define LUA_OPUNM 12
#define LUA_OPEQ  0
#define LUA_OPLT  1
#define LUA_OPLE  2

static inline int ps_lua_absindex(lua_State *L, int idx)
{
  return idx > 0 || idx <= LUA_REGISTRYINDEX ? idx : lua_gettop(L) + idx + 1;
}
#define lua_absindex ps_lua_absindex

#define lua_rawlen(L, i) lua_objlen((L), (i))

/* The getters return the type they pushed, as from 5.3 on. */
static inline int ps_lua_getfield(lua_State *L, int idx, const char *k)
{
  (lua_getfield)(L, idx, k);
  return lua_type(L, -1);
}
#define lua_getfield ps_lua_getfield

static inline int ps_lua_gettable(lua_State *L, int idx)
{
  (lua_gettable)(L, idx);
  return lua_type(L, -1);
}
#define lua_gettable ps_lua_gettable

static inline int ps_lua_rawget(lua_State *L, int idx)
{
  (lua_rawget)(L, idx);
  return lua_type(L, -1);
}
#define lua_rawget ps_lua_rawget

static inline int ps_lua_rawgeti(lua_State *L, int idx, lua_Integer n)
{
  (lua_rawgeti)(L, idx, (int)n);
  return lua_type(L, -1);
}
#define lua_rawgeti ps_lua_rawgeti

static inline void ps_lua_rawseti(lua_State *L, int idx, lua_Integer n)
{
  (lua_rawseti)(L, idx, (int)n);
}
#define lua_rawseti ps_lua_rawseti

static inline int ps_lua_rawgetp(lua_State *L, int idx, const void *p)
{
  idx = lua_absindex(L, idx);
  lua_pushlightuserdata(L, (void *)(uintptr_t)p);
  return lua_rawget(L, idx);
}
#define lua_rawgetp ps_lua_rawgetp

static inline void ps_lua_rawsetp(lua_State *L, int idx, const void *p)
{
  idx = lua_absindex(L, idx);
  lua_pushlightuserdata(L, (void *)(uintptr_t)p);
  lua_insert(L, -2);
  lua_rawset(L, idx);
}
#define lua_rawsetp ps_lua_rawsetp

/* A double that a lua_Integer holds exactly: integral, in [-2^63, 2^63). */
static inline int ps_integral(lua_Number d)
{
  return d == floor(d) && d >= -0x1p63 && d < 0x1p63;
}

/* -0.0 is no integer (as on 5.4, where it is a float): the store makes it the integer 0, so
 * that whoever reads it back sees the same 0 as the one who stored it. */
static inline int ps_lua_isinteger(lua_State *L, int idx)
{
  lua_Number d;
  if (lua_type(L, idx) != LUA_TNUMBER) return 0;
  d = lua_tonumber(L, idx);
  return ps_integral(d) && !(d == 0 && signbit(d));
}
#define lua_isinteger ps_lua_isinteger

/* 5.4's: a number (or numeric string) with an exact integer value, else 0 and *isnum = 0. */
static inline lua_Integer ps_lua_tointegerx(lua_State *L, int idx, int *isnum)
{
  int ok = lua_isnumber(L, idx);
  lua_Number d = ok ? lua_tonumber(L, idx) : 0;
  ok = ok && ps_integral(d);
  if (isnum) *isnum = ok;
  return ok ? (lua_Integer)d : 0;
}
#define lua_tointegerx ps_lua_tointegerx
#define lua_tointeger(L, i) ps_lua_tointegerx((L), (i), NULL)

static inline lua_Integer ps_luaL_checkinteger(lua_State *L, int arg)
{
  int isnum;
  lua_Integer v = lua_tointegerx(L, arg, &isnum);
  if (!isnum) {
    if (lua_isnumber(L, arg)) luaL_argerror(L, arg, "number has no integer representation");
    else luaL_typeerror(L, arg, "number");
  }
  return v;
}
#define luaL_checkinteger ps_luaL_checkinteger

static inline lua_Integer ps_luaL_optinteger(lua_State *L, int arg, lua_Integer def)
{
  return lua_isnoneornil(L, arg) ? def : luaL_checkinteger(L, arg);
}
#define luaL_optinteger ps_luaL_optinteger

/* Numbers (and numeric strings) only: no metamethods. */
static inline void ps_lua_arith(lua_State *L, int op)
{
  lua_Number a, b, r;
  int n = op == LUA_OPUNM ? 1 : 2, i;
  for (i = 1; i <= n; i++)
    if (!lua_isnumber(L, -i))
      luaL_error(L, "attempt to perform arithmetic on a %s value", luaL_typename(L, -i));
  b = lua_tonumber(L, -1);
  a = n == 2 ? lua_tonumber(L, -2) : b;
  switch (op) {
  case LUA_OPADD: r = a + b; break;
  case LUA_OPSUB: r = a - b; break;
  case LUA_OPMUL: r = a * b; break;
  case LUA_OPDIV: r = a / b; break;
  case LUA_OPMOD: r = a - floor(a / b) * b; break;
  case LUA_OPPOW: r = pow(a, b); break;
  case LUA_OPUNM: r = -a; break;
  default: luaL_error(L, "pairstore compat: lua_arith op %d", op); return;
  }
  lua_pop(L, n);
  lua_pushnumber(L, r);
}
#define lua_arith ps_lua_arith

static inline int ps_lua_compare(lua_State *L, int a, int b, int op)
{
  switch (op) {
  case LUA_OPEQ: return lua_equal(L, a, b);
  case LUA_OPLT: return lua_lessthan(L, a, b);
  case LUA_OPLE:
    if (lua_type(L, a) == LUA_TNUMBER && lua_type(L, b) == LUA_TNUMBER)
      return lua_tonumber(L, a) <= lua_tonumber(L, b);
    return lua_lessthan(L, a, b) || lua_equal(L, a, b);
  default: return 0;
  }
}
#define lua_compare ps_lua_compare

#ifndef LUAJIT_VERSION /* LuaJIT 2.1 has these */

static inline void ps_luaL_setfuncs(lua_State *L, const luaL_Reg *l, int nup)
{
  luaL_checkstack(L, nup, "too many upvalues");
  for (; l->name; l++) {
    int i;
    for (i = 0; i < nup; i++) lua_pushvalue(L, -nup);
    lua_pushcclosure(L, l->func, nup);
    lua_setfield(L, -(nup + 2), l->name);
  }
  lua_pop(L, nup);
}
#define luaL_setfuncs ps_luaL_setfuncs

#define luaL_newlibtable(L, l) lua_createtable((L), 0, (int)(sizeof(l) / sizeof((l)[0]) - 1))
#define luaL_newlib(L, l) (luaL_newlibtable((L), (l)), luaL_setfuncs((L), (l), 0))

static inline void ps_luaL_setmetatable(lua_State *L, const char *tname)
{
  luaL_getmetatable(L, tname);
  lua_setmetatable(L, -2);
}
#define luaL_setmetatable ps_luaL_setmetatable

static inline void *ps_luaL_testudata(lua_State *L, int ud, const char *tname)
{
  void *p = lua_touserdata(L, ud);
  if (p && lua_getmetatable(L, ud)) {
    luaL_getmetatable(L, tname);
    if (!lua_rawequal(L, -1, -2)) p = NULL;
    lua_pop(L, 2);
    return p;
  }
  return NULL;
}
#define luaL_testudata ps_luaL_testudata

/* As 5.2's, in short: msg, then "stack traceback:" and a line a level (at most 40). */
static inline void ps_luaL_traceback(lua_State *L, lua_State *L1, const char *msg, int level)
{
  lua_Debug ar;
  int top = lua_gettop(L), shown = 0;
  if (msg) lua_pushfstring(L, "%s\n", msg);
  lua_pushliteral(L, "stack traceback:");
  while (lua_getstack(L1, level++, &ar)) {
    if (++shown > 40) {
      lua_pushliteral(L, "\n\t...");
      break;
    }
    lua_getinfo(L1, "Sln", &ar);
    lua_pushfstring(L, "\n\t%s:", ar.short_src);
    if (ar.currentline > 0) lua_pushfstring(L, "%d:", ar.currentline);
    if (*ar.namewhat) lua_pushfstring(L, " in function '%s'", ar.name);
    else if (*ar.what == 'm') lua_pushliteral(L, " in main chunk");
    else if (*ar.what == 'C') lua_pushliteral(L, " ?");
    else lua_pushfstring(L, " in function <%s:%d>", ar.short_src, ar.linedefined);
    lua_concat(L, lua_gettop(L) - top);
  }
  lua_concat(L, lua_gettop(L) - top);
}
#define luaL_traceback ps_luaL_traceback

#endif /* !LUAJIT_VERSION */

#endif /* 501 */

#endif /* PAIRSTORE_COMPAT_H */
