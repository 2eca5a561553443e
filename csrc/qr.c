/*
 * qr.c — QR codes for pairing URLs: pairstore.core.qr_matrix(text) over libqrencode, giving
 * the module matrix as rows of "0"/"1" so that the rendering (pairstore.qr) stays in Lua.
 */
#include "pairstore.h"

#include <errno.h>
#include <string.h>

#include <qrencode.h>

/* Adds qr_matrix to the table on top of the stack (called from luaopen_pairstore_core).
 * Declared here until pairstore.h carries it. */
void ps_qr_register(lua_State *L);

#define QR_MAX_WIDTH 177 /* version 40 */

/* Builds { width = n, version = v, rows = { "0101...", ... } } from the QRcode passed as a
 * light userdata. Runs under lua_pcall so that a memory error while building cannot skip
 * QRcode_free in the caller. */
static int qr_build(lua_State *L)
{
  const QRcode *qr = (const QRcode *)lua_touserdata(L, 1);
  char row[QR_MAX_WIDTH + 1];
  int y, x;

  lua_createtable(L, 0, 3);
  lua_pushinteger(L, qr->width);
  lua_setfield(L, -2, "width");
  lua_pushinteger(L, qr->version);
  lua_setfield(L, -2, "version");
  lua_createtable(L, qr->width, 0);
  for (y = 0; y < qr->width; y++) {
    const unsigned char *p = qr->data + (size_t)y * (size_t)qr->width;
    for (x = 0; x < qr->width; x++) row[x] = (p[x] & 1) ? '1' : '0';
    lua_pushlstring(L, row, (size_t)qr->width);
    lua_rawseti(L, -2, (lua_Integer)y + 1);
  }
  lua_setfield(L, -2, "rows");
  return 1;
}

static int qr_fail(lua_State *L, const char *msg)
{
  lua_pushnil(L);
  lua_pushstring(L, msg);
  lua_pushliteral(L, "qr");
  return 3;
}

/* qr_matrix(text) -> { width, version, rows } | nil, message, "qr"
 * Error correction level M, automatic mode selection (8-bit for non-alphanumerics),
 * case-sensitive, smallest version that fits. */
static int qr_matrix(lua_State *L)
{
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  QRcode *qr;
  int st;

  luaL_argcheck(L, strlen(text) == len, 1, "text must not contain NUL bytes");
  if (len == 0) return qr_fail(L, "qr: cannot encode an empty text");
  luaL_checkstack(L, 8, "pairstore.qr");

  errno = 0;
  qr = QRcode_encodeString(text, 0, QR_ECLEVEL_M, QR_MODE_8, 1);
  if (qr == NULL) {
    int saved = errno;
    if (saved == ERANGE) return qr_fail(L, "qr: text too long for a QR code");
    if (saved == ENOMEM) return qr_fail(L, "qr: out of memory");
    return qr_fail(L, "qr: libqrencode could not encode the text");
  }
  if (qr->width <= 0 || qr->width > QR_MAX_WIDTH || qr->data == NULL) {
    QRcode_free(qr);
    return qr_fail(L, "qr: libqrencode returned an unexpected symbol");
  }

  lua_pushcfunction(L, qr_build);
  lua_pushlightuserdata(L, qr);
  st = lua_pcall(L, 1, 1, 0);
  QRcode_free(qr);
  if (st != LUA_OK) return lua_error(L);
  return 1;
}

static const luaL_Reg qr_funcs[] = {
  { "qr_matrix", qr_matrix },
  { NULL, NULL },
};

void ps_qr_register(lua_State *L)
{
  luaL_setfuncs(L, qr_funcs, 0);
}
