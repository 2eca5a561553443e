/*
 * rand.c — clocks and randomness: sids, unbiased 6-digit codes, X25519 key pairs, and
 * base64url, all from libsodium.
 */
#include "pairstore.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

int64_t ps_wall_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t ps_mono_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

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

void ps_b64u_encode(char *out, size_t outlen, const unsigned char *in, size_t n)
{
  sodium_bin2base64(out, outlen, in, n, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

long ps_b64u_decode(unsigned char *out, size_t outmax, const char *in, size_t n)
{
  size_t got = 0;
  const char *end = NULL;
  if (sodium_base642bin(out, outmax, in, n, NULL, &got, &end,
                        sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0 || end != in + n)
    return -1;
  return (long)got;
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
