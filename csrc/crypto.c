/*
 * crypto.c — the pairing crypto of pairstore.core over libsodium: X25519 keys and ECDH,
 * HKDF-SHA256 (RFC 5869, built on HMAC-SHA256), and the v2 (AES-256-GCM) / v1
 * (ChaCha20-Poly1305 IETF) seal and open. Every intermediate secret is wiped before return.
 */
#include "pairstore.h"

#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#define B64V           sodium_base64_VARIANT_URLSAFE_NO_PADDING
#define KEY_BYTES      32u /* X25519 keys, shared secret, AEAD key */
#define NONCE_BYTES    12u
#define TAG_BYTES      16u
#define KEY_B64_LEN    43u /* unpadded base64url of 32 bytes */
#define NONCE_B64_LEN  16u /* unpadded base64url of 12 bytes */
#define HKDF_HASH_LEN  32u
#define HKDF_MAX_LEN   (255u * HKDF_HASH_LEN)
/* Keep scratch sizes far from any size_t overflow in the length arithmetic below. */
#define MAX_MESSAGE    ((size_t)1 << 30)

typedef enum { AEAD_AES256GCM = 0, AEAD_CHACHA20POLY1305 = 1 } aead_kind;

static const char *const aead_names[] = { "aes-256-gcm", "chacha20-poly1305", NULL };
static const char *const aead_info[] = { "totalreclaw-pair-v2", "totalreclaw-pair-v1" };

/* ---- small helpers ------------------------------------------------------------------ */

/* A string argument (numbers are not accepted). */
static const char *arg_string(lua_State *L, int i, size_t *len)
{
  if (lua_type(L, i) != LUA_TSTRING)
    luaL_typeerror(L, i, "string");
  return lua_tolstring(L, i, len);
}

/* nil or a string; returns NULL for nil. */
static const char *arg_opt_string(lua_State *L, int i, size_t *len)
{
  if (lua_isnoneornil(L, i)) {
    *len = 0;
    return NULL;
  }
  return arg_string(L, i, len);
}

static aead_kind arg_aead(lua_State *L, int i)
{
  (void)arg_string(L, i, NULL);
  return (aead_kind)luaL_checkoption(L, i, NULL, aead_names);
}

static int aead_available(aead_kind k)
{
  return k == AEAD_CHACHA20POLY1305 || crypto_aead_aes256gcm_is_available() != 0;
}

/* Unpadded base64url length of n bytes. */
static size_t b64u_len(size_t n)
{
  return sodium_base64_ENCODED_LEN(n, B64V) - 1u;
}

/* Decodes text that must be the canonical unpadded base64url of exactly `want` bytes.
 * Returns 0, or -1 (out wiped). */
static int b64u_decode_exact(unsigned char *out, size_t want, const char *in, size_t inlen)
{
  size_t got = 0;
  if (inlen != b64u_len(want)
      || sodium_base642bin(out, want, in, inlen, NULL, &got, NULL, B64V) != 0
      || got != want) {
    sodium_memzero(out, want);
    return -1;
  }
  return 0;
}

/* Decodes canonical unpadded base64url of any length into out (outmax bytes).
 * Returns the decoded length, or -1 (out wiped). */
static long b64u_decode_any(unsigned char *out, size_t outmax, const char *in, size_t inlen)
{
  size_t got = 0;
  if (sodium_base642bin(out, outmax, in, inlen, NULL, &got, NULL, B64V) != 0
      || b64u_len(got) != inlen) {
    sodium_memzero(out, outmax);
    return -1;
  }
  return (long)got;
}

/* Pushes strings in protected mode, so a memory error while pushing cannot skip the
 * caller's wiping and freeing. A piece with p == NULL pushes nil. */
typedef struct piece {
  const void *p;
  size_t n;
} piece;

typedef struct pieces {
  const piece *v;
  int n;
} pieces;

static int push_pieces(lua_State *L)
{
  const pieces *ps = (const pieces *)lua_touserdata(L, 1);
  int i;
  for (i = 0; i < ps->n; i++) {
    if (ps->v[i].p == NULL)
      lua_pushnil(L);
    else
      lua_pushlstring(L, (const char *)ps->v[i].p, ps->v[i].n);
  }
  return ps->n;
}

/* Needs 2 + n free stack slots (checked by the caller before it allocates). Returns a
 * lua_pcall status; on error the error object is on top of the stack. */
static int push_protected(lua_State *L, const piece *v, int n)
{
  pieces ps;
  ps.v = v;
  ps.n = n;
  lua_pushcfunction(L, push_pieces);
  lua_pushlightuserdata(L, &ps);
  return lua_pcall(L, 1, n, 0);
}

static int push_fail(lua_State *L, const char *code)
{
  lua_pushnil(L);
  lua_pushstring(L, code);
  lua_pushstring(L, code);
  return 3;
}

/* ---- HKDF-SHA256 (RFC 5869) ----------------------------------------------------------- */

static void hkdf_sha256(unsigned char *out, size_t outlen,
                        const unsigned char *ikm, size_t ikmlen,
                        const unsigned char *salt, size_t saltlen,
                        const unsigned char *info, size_t infolen)
{
  static const unsigned char empty[1] = { 0 };
  crypto_auth_hmacsha256_state st;
  unsigned char prk[crypto_auth_hmacsha256_BYTES];
  unsigned char t[crypto_auth_hmacsha256_BYTES];
  unsigned char counter = 1;
  size_t done = 0;

  /* Extract: PRK = HMAC(salt, IKM). An absent salt is HashLen zero bytes, which as an
   * HMAC key is the same as the empty key. */
  crypto_auth_hmacsha256_init(&st, saltlen ? salt : empty, saltlen);
  crypto_auth_hmacsha256_update(&st, ikmlen ? ikm : empty, ikmlen);
  crypto_auth_hmacsha256_final(&st, prk);

  /* Expand: T(i) = HMAC(PRK, T(i-1) | info | i). */
  while (done < outlen) {
    size_t take = outlen - done < sizeof t ? outlen - done : sizeof t;
    crypto_auth_hmacsha256_init(&st, prk, sizeof prk);
    if (done > 0)
      crypto_auth_hmacsha256_update(&st, t, sizeof t);
    crypto_auth_hmacsha256_update(&st, infolen ? info : empty, infolen);
    crypto_auth_hmacsha256_update(&st, &counter, 1);
    crypto_auth_hmacsha256_final(&st, t);
    memcpy(out + done, t, take);
    done += take;
    counter++;
  }

  sodium_memzero(&st, sizeof st);
  sodium_memzero(prk, sizeof prk);
  sodium_memzero(t, sizeof t);
}

/* ECDH + HKDF: the AEAD key for a session. Returns 0, or -1 for a low-order peer key. */
static int derive_key(unsigned char key[KEY_BYTES], const unsigned char sk[KEY_BYTES],
                      const unsigned char pk[KEY_BYTES], const char *sid, size_t sidlen,
                      aead_kind k)
{
  unsigned char shared[crypto_scalarmult_BYTES];
  int rc = crypto_scalarmult(shared, sk, pk);
  if (rc == 0)
    hkdf_sha256(key, KEY_BYTES, shared, sizeof shared, (const unsigned char *)sid, sidlen,
                (const unsigned char *)aead_info[k], strlen(aead_info[k]));
  else
    sodium_memzero(key, KEY_BYTES);
  sodium_memzero(shared, sizeof shared);
  return rc == 0 ? 0 : -1;
}

/* ---- Lua functions -------------------------------------------------------------------- */

/* crypto_keypair() -> sk_b64u, pk_b64u */
static int l_keypair(lua_State *L)
{
  unsigned char sk[KEY_BYTES], pk[KEY_BYTES];
  char sk64[KEY_B64_LEN + 1], pk64[KEY_B64_LEN + 1];
  piece out[2];
  int st;

  luaL_checkstack(L, 4, "pairstore.crypto");
  do {
    randombytes_buf(sk, sizeof sk);
  } while (crypto_scalarmult_base(pk, sk) != 0);
  sodium_bin2base64(sk64, sizeof sk64, sk, sizeof sk, B64V);
  sodium_bin2base64(pk64, sizeof pk64, pk, sizeof pk, B64V);
  sodium_memzero(sk, sizeof sk);

  out[0].p = sk64; out[0].n = KEY_B64_LEN;
  out[1].p = pk64; out[1].n = KEY_B64_LEN;
  st = push_protected(L, out, 2);
  sodium_memzero(sk64, sizeof sk64);
  if (st != LUA_OK)
    return lua_error(L);
  return 2;
}

/* crypto_public_key(sk_b64u) -> pk_b64u */
static int l_public_key(lua_State *L)
{
  size_t sklen;
  const char *sk64 = arg_string(L, 1, &sklen);
  unsigned char sk[KEY_BYTES], pk[KEY_BYTES];
  char pk64[KEY_B64_LEN + 1];
  int rc;

  if (b64u_decode_exact(sk, sizeof sk, sk64, sklen) != 0)
    return luaL_argerror(L, 1, "secret key must be 32 bytes, unpadded base64url");
  rc = crypto_scalarmult_base(pk, sk);
  sodium_memzero(sk, sizeof sk);
  if (rc != 0)
    return luaL_argerror(L, 1, "unusable secret key");
  sodium_bin2base64(pk64, sizeof pk64, pk, sizeof pk, B64V);
  lua_pushlstring(L, pk64, KEY_B64_LEN);
  return 1;
}

/* crypto_hkdf_sha256(ikm, salt, info, length) -> bytes */
static int l_hkdf_sha256(lua_State *L)
{
  size_t ikmlen, saltlen, infolen;
  const char *ikm = arg_string(L, 1, &ikmlen);
  const char *salt = arg_string(L, 2, &saltlen);
  const char *info = arg_string(L, 3, &infolen);
  lua_Integer len = luaL_checkinteger(L, 4);
  unsigned char okm[HKDF_MAX_LEN];
  piece out[1];
  int st;

  luaL_argcheck(L, len >= 1 && len <= (lua_Integer)HKDF_MAX_LEN, 4,
                "length must be 1..8160");
  luaL_checkstack(L, 3, "pairstore.crypto");
  hkdf_sha256(okm, (size_t)len, (const unsigned char *)ikm, ikmlen,
              (const unsigned char *)salt, saltlen, (const unsigned char *)info, infolen);
  out[0].p = okm; out[0].n = (size_t)len;
  st = push_protected(L, out, 1);
  sodium_memzero(okm, (size_t)len);
  if (st != LUA_OK)
    return lua_error(L);
  return 1;
}

/* crypto_aead_available(aead) -> boolean */
static int l_aead_available(lua_State *L)
{
  aead_kind k = arg_aead(L, 1);
  lua_pushboolean(L, aead_available(k));
  return 1;
}

/* crypto_seal(pk_gateway_b64u, sid, plaintext, aead, sk_device_b64u|nil, nonce_b64u|nil)
 *   -> pk_d_b64u, nonce_b64u, ct_b64u | nil, code, code */
static int l_seal(lua_State *L)
{
  size_t pkglen, sidlen, ptlen, sklen, noncelen, ctlen, ct64len;
  const char *pkg64 = arg_string(L, 1, &pkglen);
  const char *sid = arg_string(L, 2, &sidlen);
  const char *pt = arg_string(L, 3, &ptlen);
  aead_kind k = arg_aead(L, 4);
  const char *sk64 = arg_opt_string(L, 5, &sklen);
  const char *nonce64 = arg_opt_string(L, 6, &noncelen);
  unsigned char pkg[KEY_BYTES], sk[KEY_BYTES], pkd[KEY_BYTES], key[KEY_BYTES];
  unsigned char nonce[NONCE_BYTES];
  char pkd64[KEY_B64_LEN + 1], nonceout64[NONCE_B64_LEN + 1];
  unsigned char *ct = NULL;
  char *ct64 = NULL;
  unsigned long long clen = 0;
  piece out[3];
  int rc, st;

  /* All argument checks first: nothing secret is allocated yet. */
  luaL_argcheck(L, ptlen > 0, 3, "plaintext must not be empty");
  luaL_argcheck(L, ptlen <= MAX_MESSAGE, 3, "plaintext too long");
  luaL_checkstack(L, 6, "pairstore.crypto");
  if (b64u_decode_exact(pkg, sizeof pkg, pkg64, pkglen) != 0)
    return luaL_argerror(L, 1, "gateway public key must be 32 bytes, unpadded base64url");
  if (nonce64 != NULL && b64u_decode_exact(nonce, sizeof nonce, nonce64, noncelen) != 0)
    return luaL_argerror(L, 6, "nonce must be 12 bytes, unpadded base64url");
  if (sk64 != NULL && b64u_decode_exact(sk, sizeof sk, sk64, sklen) != 0)
    return luaL_argerror(L, 5, "device secret key must be 32 bytes, unpadded base64url");

  if (!aead_available(k)) {
    sodium_memzero(sk, sizeof sk);
    return push_fail(L, "unsupported");
  }

  if (sk64 == NULL)
    randombytes_buf(sk, sizeof sk);
  if (nonce64 == NULL)
    randombytes_buf(nonce, sizeof nonce);
  rc = crypto_scalarmult_base(pkd, sk);
  if (rc == 0)
    rc = derive_key(key, sk, pkg, sid, sidlen, k);
  sodium_memzero(sk, sizeof sk);
  if (rc != 0) {
    sodium_memzero(key, sizeof key);
    return push_fail(L, "decrypt_failed");
  }

  ctlen = ptlen + TAG_BYTES;
  ct64len = b64u_len(ctlen);
  ct = (unsigned char *)malloc(ctlen);
  ct64 = (char *)malloc(ct64len + 1);
  if (ct == NULL || ct64 == NULL) {
    sodium_memzero(key, sizeof key);
    free(ct);
    free(ct64);
    return luaL_error(L, "pairstore.crypto: out of memory");
  }

  if (k == AEAD_AES256GCM)
    rc = crypto_aead_aes256gcm_encrypt(ct, &clen, (const unsigned char *)pt, ptlen,
                                       (const unsigned char *)sid, sidlen, NULL, nonce, key);
  else
    rc = crypto_aead_chacha20poly1305_ietf_encrypt(ct, &clen, (const unsigned char *)pt,
                                                   ptlen, (const unsigned char *)sid, sidlen,
                                                   NULL, nonce, key);
  sodium_memzero(key, sizeof key);
  if (rc != 0 || clen != ctlen) {
    free(ct);
    free(ct64);
    return luaL_error(L, "pairstore.crypto: encryption failed");
  }

  sodium_bin2base64(ct64, ct64len + 1, ct, ctlen, B64V);
  sodium_bin2base64(pkd64, sizeof pkd64, pkd, sizeof pkd, B64V);
  sodium_bin2base64(nonceout64, sizeof nonceout64, nonce, sizeof nonce, B64V);
  free(ct);

  out[0].p = pkd64;      out[0].n = KEY_B64_LEN;
  out[1].p = nonceout64; out[1].n = NONCE_B64_LEN;
  out[2].p = ct64;       out[2].n = ct64len;
  st = push_protected(L, out, 3);
  free(ct64);
  if (st != LUA_OK)
    return lua_error(L);
  return 3;
}

/* crypto_open(sk_gateway_b64u, pk_device_b64u, sid, nonce_b64u, ct_b64u, aead)
 *   -> plaintext | nil, "decrypt_failed", "decrypt_failed" (or "unsupported") */
int ps_crypto_open(lua_State *L)
{
  size_t sklen, pkdlen, sidlen, noncelen, ct64len, ctmax, ptlen = 0;
  const char *sk64 = arg_string(L, 1, &sklen);
  const char *pkd64 = arg_string(L, 2, &pkdlen);
  const char *sid = arg_string(L, 3, &sidlen);
  const char *nonce64 = arg_string(L, 4, &noncelen);
  const char *ct64 = arg_string(L, 5, &ct64len);
  aead_kind k = arg_aead(L, 6);
  unsigned char sk[KEY_BYTES], pkd[KEY_BYTES], key[KEY_BYTES], nonce[NONCE_BYTES];
  unsigned char *ct = NULL, *pt = NULL;
  unsigned long long mlen = 0;
  long ctlen;
  piece out[1];
  int rc, st;

  /* Our own key is checked strictly; what the phone sent only ever fails to decrypt. */
  luaL_checkstack(L, 4, "pairstore.crypto");
  if (b64u_decode_exact(sk, sizeof sk, sk64, sklen) != 0)
    return luaL_argerror(L, 1, "gateway secret key must be 32 bytes, unpadded base64url");

  if (!aead_available(k)) {
    sodium_memzero(sk, sizeof sk);
    return push_fail(L, "unsupported");
  }
  if (b64u_decode_exact(pkd, sizeof pkd, pkd64, pkdlen) != 0
      || b64u_decode_exact(nonce, sizeof nonce, nonce64, noncelen) != 0
      || ct64len < b64u_len(TAG_BYTES + 1) || ct64len > b64u_len(MAX_MESSAGE + TAG_BYTES)) {
    sodium_memzero(sk, sizeof sk);
    return push_fail(L, "decrypt_failed");
  }

  ctmax = ct64len / 4u * 3u + 3u;
  ct = (unsigned char *)malloc(ctmax);
  if (ct == NULL) {
    sodium_memzero(sk, sizeof sk);
    return luaL_error(L, "pairstore.crypto: out of memory");
  }
  ctlen = b64u_decode_any(ct, ctmax, ct64, ct64len);
  if (ctlen < (long)(TAG_BYTES + 1)) {
    sodium_memzero(sk, sizeof sk);
    free(ct);
    return push_fail(L, "decrypt_failed");
  }
  ptlen = (size_t)ctlen - TAG_BYTES;
  pt = (unsigned char *)malloc(ptlen);
  if (pt == NULL) {
    sodium_memzero(sk, sizeof sk);
    free(ct);
    return luaL_error(L, "pairstore.crypto: out of memory");
  }

  rc = derive_key(key, sk, pkd, sid, sidlen, k);
  sodium_memzero(sk, sizeof sk);
  if (rc == 0) {
    if (k == AEAD_AES256GCM)
      rc = crypto_aead_aes256gcm_decrypt(pt, &mlen, NULL, ct, (unsigned long long)ctlen,
                                         (const unsigned char *)sid, sidlen, nonce, key);
    else
      rc = crypto_aead_chacha20poly1305_ietf_decrypt(pt, &mlen, NULL, ct,
                                                     (unsigned long long)ctlen,
                                                     (const unsigned char *)sid, sidlen,
                                                     nonce, key);
  }
  sodium_memzero(key, sizeof key);
  free(ct);
  if (rc != 0 || mlen != ptlen) {
    sodium_memzero(pt, ptlen);
    free(pt);
    return push_fail(L, "decrypt_failed");
  }

  out[0].p = pt; out[0].n = ptlen;
  st = push_protected(L, out, 1);
  sodium_memzero(pt, ptlen);
  free(pt);
  if (st != LUA_OK)
    return lua_error(L);
  return 1;
}

/* ---- registration --------------------------------------------------------------------- */

static const luaL_Reg crypto_funcs[] = {
  { "crypto_keypair", l_keypair },
  { "crypto_public_key", l_public_key },
  { "crypto_hkdf_sha256", l_hkdf_sha256 },
  { "crypto_seal", l_seal },
  { "crypto_open", ps_crypto_open },
  { "crypto_aead_available", l_aead_available },
  { NULL, NULL }
};

void ps_crypto_register(lua_State *L)
{
  luaL_setfuncs(L, crypto_funcs, 0);
}
