/*
 * qr_none.c — a build without QR codes (make QR=0): no qr_matrix in the core, so
 * pairstore.qr says so instead of linking libqrencode.
 */
#include "pairstore.h"

void ps_qr_register(lua_State *L)
{
  (void)L;
}
