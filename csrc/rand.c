/*
 * rand.c — randomness, from libsodium: sids, unbiased 6-digit codes, X25519 key pairs.
 */
#include "pairstore.h"

#include <stdio.h>
#include <string.h>

#include <sodium.h>

void ps_random_hex(char *out, size_t nbytes)
{
  unsigned char raw[64];
  if (nbytes > sizeof raw) nbytes = sizeof raw;
  randombytes_buf(raw, nbytes);
  sodium_bin2hex(out, 2 * nbytes + 1, raw, nbytes);
  sodium_memzero(raw, sizeof raw);
}

void ps_random_code(char out[7])
{
  /* randombytes_uniform rejects the biased tail, so every code is equally likely. */
  uint32_t v = randombytes_uniform(1000000);
  snprintf(out, 7, "%06u", (unsigned)v);
}

void ps_keypair_b64u(char sk[44], char pk[44], const unsigned char *sk_in)
{
  unsigned char s[crypto_scalarmult_SCALARBYTES], p[crypto_scalarmult_BYTES];
  if (sk_in) memcpy(s, sk_in, sizeof s);
  else randombytes_buf(s, sizeof s);
  crypto_scalarmult_base(p, s);
  ps_b64u_encode(sk, 44, s, sizeof s);
  ps_b64u_encode(pk, 44, p, sizeof p);
  sodium_memzero(s, sizeof s);
}
