/*
 * base64url.c — base64url without padding (RFC 4648 section 5), strict on decode.
 */
#include "pairstore.h"

#include <sodium.h>

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
