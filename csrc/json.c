/*
 * json.c — raw JSON text, kept as written: a structural scanner that checks a file's grammar
 * and finds where each session starts and ends (the decoding itself is cjson's), exact
 * numbers, and the encoder that writes a changed session back differing only in what changed.
 */
#include "pairstore.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- scanning ------------------------------------------------------------------------------ */

static const char *ws(const char *s, const char *end)
{
  while (s < end && (*s == ' ' || *s == '\n' || *s == '\r' || *s == '\t')) s++;
  return s;
}

static int hexval(int c)
{
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* The code unit of "\uXXXX" at s (s points at the backslash), or -1. */
static long uescape(const char *s, const char *end)
{
  long v = 0;
  int i;
  if (end - s < 6 || s[0] != '\\' || s[1] != 'u') return -1;
  for (i = 2; i < 6; i++) {
    int h = hexval((unsigned char)s[i]);
    if (h < 0) return -1;
    v = v * 16 + h;
  }
  return v;
}

/* Whether the "\uXXXX" at s is a surrogate without its partner (JSON.stringify writes those
 * for strings cut inside a pair; JSON.parse accepts them; cjson does not). */
static int lone_at(const char *s, const char *end, long u, size_t *skip)
{
  *skip = 6;
  if (u >= 0xD800 && u <= 0xDBFF) {
    long lo = uescape(s + 6, end);
    if (lo >= 0xDC00 && lo <= 0xDFFF) { *skip = 12; return 0; }
    return 1;
  }
  return u >= 0xDC00 && u <= 0xDFFF;
}

/* A string token at s (the opening quote). Returns the end (after the closing quote), or
 * NULL. *esc: it holds an escape; *lone: a lone surrogate escape. */
static const char *scan_string(const char *s, const char *end, int *esc, int *lone)
{
  s++;
  for (;;) {
    while (s < end && *s != '"' && *s != '\\' && (unsigned char)*s >= 0x20) s++;
    if (s >= end || (unsigned char)*s < 0x20) return NULL;
    if (*s == '"') return s + 1;
    *esc = 1;
    if (end - s < 2) return NULL;
    if (strchr("\"\\/bfnrt", s[1]) && s[1]) { s += 2; continue; }
    {
      long u = uescape(s, end);
      size_t skip;
      if (u < 0) return NULL;
      if (lone_at(s, end, u, &skip)) *lone = 1;
      s += skip;
    }
  }
}

/* A number token at s. Returns its end or NULL; *bigint: an integer literal too long for a
 * double to hold exactly; *nonfinite: its value overflows a double. */
static const char *scan_number(const char *s, const char *end, int *bigint, int *nonfinite)
{
  const char *start = s, *digits;
  int integer = 1;
  if (s < end && *s == '-') s++;
  digits = s;
  if (s < end && *s == '0') s++;
  else if (s < end && *s >= '1' && *s <= '9') while (s < end && *s >= '0' && *s <= '9') s++;
  else return NULL;
  if (s < end && *s == '.') {
    integer = 0;
    s++;
    if (s >= end || *s < '0' || *s > '9') return NULL;
    while (s < end && *s >= '0' && *s <= '9') s++;
  }
  if (s < end && (*s == 'e' || *s == 'E')) {
    integer = 0;
    s++;
    if (s < end && (*s == '+' || *s == '-')) s++;
    if (s >= end || *s < '0' || *s > '9') return NULL;
    while (s < end && *s >= '0' && *s <= '9') s++;
  }
  if (integer && s - digits > 15) *bigint = 1;
  if (!integer || s - digits > 300) {
    char tmp[512], *copy = tmp;
    size_t n = (size_t)(s - start);
    if (n >= sizeof tmp && !(copy = malloc(n + 1))) return NULL;
    memcpy(copy, start, n);
    copy[n] = '\0';
    if (!isfinite(strtod(copy, NULL))) *nonfinite = 1;
    if (copy != tmp) free(copy);
  }
  return s;
}

static int span_add(ps_jscan *sc, size_t off, size_t len, int bigint)
{
  if (sc->nspans == sc->cap) {
    size_t cap = sc->cap ? 2 * sc->cap : 64;
    ps_jspan *p = realloc(sc->spans, cap * sizeof *p);
    if (!p) return -1;
    sc->spans = p;
    sc->cap = cap;
  }
  sc->spans[sc->nspans].off = off;
  sc->spans[sc->nspans].len = len;
  sc->spans[sc->nspans].bigint = bigint;
  sc->nspans++;
  return 0;
}

const char *ps_json_scan(const char *p, size_t n, ps_jscan *sc)
{
  const char *s = p, *end = p + n;
  char stack[PS_MAX_DEPTH + 4]; /* the document, its sessions array, a session, its values */
  int depth = 0, in_sessions = 0, key_is_sessions = 0, bigint = 0;
  size_t span_start = 0;

  sc->nspans = 0;
  sc->lone = 0;
  sc->bigint = 0;
  s = ws(s, end);

value:
  if (s >= end) return "unexpected end of the text";
  if (depth == 2 && in_sessions) { span_start = (size_t)(s - p); bigint = 0; }
  switch (*s) {
  case '{':
  case '[':
    if (depth >= PS_MAX_DEPTH + 3) return "nested too deeply";
    stack[depth++] = *s;
    if (*s == '[' && depth == 2 && key_is_sessions) {
      in_sessions = 1;
      sc->nspans = 0; /* a later "sessions" replaces an earlier one, as in JSON.parse */
    }
    s = ws(s + 1, end);
    if (s < end && *s == (stack[depth - 1] == '{' ? '}' : ']')) {
      s++;
      depth--;
      if (depth == 1 && in_sessions) in_sessions = 0;
      goto after;
    }
    if (stack[depth - 1] == '{') goto key;
    goto value;
  case '"': {
    int esc = 0;
    if (!(s = scan_string(s, end, &esc, &sc->lone))) return "invalid string";
    goto after;
  }
  case 't':
    if (end - s < 4 || memcmp(s, "true", 4)) return "invalid literal";
    s += 4;
    goto after;
  case 'f':
    if (end - s < 5 || memcmp(s, "false", 5)) return "invalid literal";
    s += 5;
    goto after;
  case 'n':
    if (end - s < 4 || memcmp(s, "null", 4)) return "invalid literal";
    s += 4;
    goto after;
  default: {
    int nonfinite = 0, big = 0;
    if (!(s = scan_number(s, end, &big, &nonfinite))) return "invalid value";
    if (nonfinite) return "number out of range (not finite)";
    if (big) bigint = sc->bigint = 1;
    goto after;
  }
  }

key:
  {
    const char *k = s;
    int esc = 0;
    if (s >= end || *s != '"') return "expected a string key";
    if (!(s = scan_string(s, end, &esc, &sc->lone))) return "invalid string";
    if (depth == 1 && !sc->value) {
      if (esc) return "escaped key at the top level";
      key_is_sessions = s - k == 10 && memcmp(k, "\"sessions\"", 10) == 0;
    }
    s = ws(s, end);
    if (s >= end || *s != ':') return "expected ':'";
    s = ws(s + 1, end);
    goto value;
  }

after:
  if (depth == 2 && in_sessions &&
      span_add(sc, span_start, (size_t)(s - p) - span_start, bigint) != 0)
    return "out of memory";
  s = ws(s, end);
  if (depth == 0) return s == end ? NULL : "text after the JSON value";
  if (s < end && *s == ',') {
    s = ws(s + 1, end);
    if (stack[depth - 1] == '{') goto key;
    goto value;
  }
  if (s < end && *s == (stack[depth - 1] == '{' ? '}' : ']')) {
    s++;
    depth--;
    if (depth == 1 && in_sessions) in_sessions = 0;
    goto after;
  }
  return "expected ',' or the end of a container";
}

void ps_json_scan_free(ps_jscan *sc)
{
  free(sc->spans);
  sc->spans = NULL;
  sc->nspans = sc->cap = 0;
}

void ps_json_sanitize(char *p, size_t n)
{
  char *s = p, *end = p + n;
  while ((s = memchr(s, '\\', (size_t)(end - s))) != NULL) {
    long u = uescape(s, end);
    size_t skip = 2;
    if (u >= 0 && lone_at(s, end, u, &skip)) memcpy(s + 2, "fffd", 4);
    s += skip;
  }
}

/* ---- values of raw text ---------------------------------------------------------------------- */

/* Whether the number token p[0..n) is an integer literal (no fraction, no exponent). Bounded
 * by n: the token is not NUL-terminated, and a search past it costs the rest of the file. */
static int integer_literal(const char *p, size_t n)
{
  size_t i;
  for (i = 0; i < n; i++)
    if (p[i] == '.' || p[i] == 'e' || p[i] == 'E') return 0;
  return 1;
}

/* The end of the (valid) value at s. */
static const char *skip_value(const char *s, const char *end)
{
  int depth = 0;
  do {
    s = ws(s, end);
    if (s >= end) return end;
    if (*s == '"') {
      int esc = 0, lone = 0;
      s = scan_string(s, end, &esc, &lone);
      if (!s) return end;
    } else if (*s == '{' || *s == '[') {
      depth++;
      s++;
    } else if (*s == '}' || *s == ']') {
      depth--;
      s++;
    } else if (*s == ',' || *s == ':') {
      s++;
    } else {
      while (s < end && !strchr(",:]} \t\r\n", *s)) s++;
    }
  } while (depth > 0);
  return s;
}

/* Iterates the members of a raw object: k and kn the key token, v and vn the value text.
 * Returns 0 at the end. */
static int next_member(const char **s, const char *end, const char **k, size_t *kn,
                       const char **v, size_t *vn)
{
  const char *p = ws(*s, end);
  if (p < end && (*p == '{' || *p == ',')) p = ws(p + 1, end);
  if (p >= end || *p == '}') return 0;
  *k = p;
  p = skip_value(p, end);
  *kn = (size_t)(p - *k);
  p = ws(p, end) + 1; /* ':' */
  *v = ws(p, end);
  p = skip_value(*v, end);
  *vn = (size_t)(p - *v);
  *s = p;
  return 1;
}

void ps_json_push_number(lua_State *L, const char *p, size_t n)
{
  char tmp[512], *copy = tmp;
  int integer = integer_literal(p, n);
  if (n >= sizeof tmp && !(copy = malloc(n + 1))) {
    lua_pushnumber(L, 0); /* unreachable for a scanned file: numbers are short */
    return;
  }
  memcpy(copy, p, n);
  copy[n] = '\0';
  if (integer) {
    long long v;
    errno = 0;
    v = strtoll(copy, NULL, 10);
    if (errno == 0) lua_pushinteger(L, (lua_Integer)v);
    else lua_pushnumber(L, strtod(copy, NULL)); /* outside int64: a float, even if integral */
    goto done;
  }
  {
    /* a fraction or an exponent: its value through a double (exact up to 2^53) */
    double d = strtod(copy, NULL);
    if (d == floor(d) && d >= -0x1p63 && d < 0x1p63) lua_pushinteger(L, (lua_Integer)d);
    else lua_pushnumber(L, d);
  }
done:
  if (copy != tmp) free(copy);
}

/* Pushes the Lua value of the raw string token at p (a cjson decode of it, lone surrogates
 * read as U+FFFD). Returns 0, or -1 with nothing pushed. */
static int push_string(lua_State *L, int decode, const char *p, size_t n)
{
  const char *q = memchr(p, '\\', n);
  if (!q) {
    lua_pushlstring(L, p + 1, n - 2);
    return 0;
  }
  {
    char tmp[256], *copy = n <= sizeof tmp ? tmp : malloc(n);
    int rc;
    if (!copy) return -1;
    memcpy(copy, p, n);
    ps_json_sanitize(copy, n);
    lua_pushvalue(L, decode);
    lua_pushlstring(L, copy, n);
    if (copy != tmp) free(copy);
    rc = lua_pcall(L, 1, 1, 0);
    if (rc != LUA_OK || lua_type(L, -1) != LUA_TSTRING) {
      lua_pop(L, 1);
      return -1;
    }
    return 0;
  }
}

/* Whether a member after p (inside an object's text ending at end) has the key at the top of
 * the stack, decoded: JSON.parse keeps the last of duplicate keys. */
static int key_later(lua_State *L, int decode, const char *p, const char *end)
{
  const char *k, *v;
  size_t kn, vn;
  while (next_member(&p, end, &k, &kn, &v, &vn)) {
    int same;
    if (push_string(L, decode, k, kn) != 0) return 0;
    same = lua_rawequal(L, -1, -2);
    lua_pop(L, 1);
    if (same) return 1;
  }
  return 0;
}

/* Exact integers where cjson gave a rounded float: the value at vidx was decoded from raw. */
int ps_json_fixup(lua_State *L, int decode, const char *raw, size_t n, int vidx, int depth)
{
  const char *s = ws(raw, raw + n), *end = raw + n;
  int isobj, i = 0;
  vidx = lua_absindex(L, vidx);
  if (s >= end || (*s != '{' && *s != '[') || lua_type(L, vidx) != LUA_TTABLE) return 0;
  if (depth > PS_MAX_DEPTH) return 0;
  luaL_checkstack(L, 6, "pairstore: nesting");
  isobj = *s == '{';
  s = ws(s + 1, end);
  while (s < end && *s != '}' && *s != ']') {
    const char *v, *ve;
    if (isobj) {
      const char *k = s;
      s = skip_value(s, end);
      if (push_string(L, decode, k, (size_t)(s - k)) != 0) return -1;
      s = ws(s, end) + 1; /* ':' */
    } else {
      lua_pushinteger(L, ++i);
    }
    v = ws(s, end);
    ve = skip_value(v, end);
    if (isobj && key_later(L, decode, ve, end)) {
      /* an earlier duplicate: the value Lua has is a later one's */
    } else if (*v == '-' || (*v >= '0' && *v <= '9')) {
      if (integer_literal(v, (size_t)(ve - v))) {
        lua_pushvalue(L, -1);
        ps_json_push_number(L, v, (size_t)(ve - v));
        lua_rawset(L, vidx);
      }
    } else if (*v == '{' || *v == '[') {
      lua_pushvalue(L, -1);
      lua_rawget(L, vidx);
      if (ps_json_fixup(L, decode, v, (size_t)(ve - v), -1, depth + 1) != 0) return -1;
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
    s = ws(ve, end);
    if (s < end && *s == ',') s = ws(s + 1, end);
  }
  return 0;
}

/* ---- writing values as JSON.stringify does --------------------------------------------------- */

int ps_utf8_valid(const unsigned char *s, size_t n)
{
  size_t i = 0;
  while (i < n) {
    unsigned c = s[i];
    size_t k, j;
    unsigned long cp;
    if (c < 0x80) { i++; continue; }
    if (c >= 0xC2 && c <= 0xDF) { k = 1; cp = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) { k = 2; cp = c & 0x0F; }
    else if (c >= 0xF0 && c <= 0xF4) { k = 3; cp = c & 0x07; }
    else return 0;
    if (n - i <= k) return 0;
    for (j = 1; j <= k; j++) {
      if ((s[i + j] & 0xC0) != 0x80) return 0;
      cp = (cp << 6) | (s[i + j] & 0x3F);
    }
    if ((k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return 0;
    i += k + 1;
  }
  return 1;
}

static int put_string(ps_buf *b, const char *s, size_t n)
{
  size_t i, run = 0;
  if (!ps_utf8_valid((const unsigned char *)s, n)) return -1;
  ps_buf_reserve(b, n + 2);
  ps_buf_lit(b, "\"");
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    const char *esc = NULL;
    char u[8];
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    ps_buf_add(b, s + run, i - run);
    run = i + 1;
    switch (c) {
    case '"': esc = "\\\""; break;
    case '\\': esc = "\\\\"; break;
    case '\b': esc = "\\b"; break;
    case '\f': esc = "\\f"; break;
    case '\n': esc = "\\n"; break;
    case '\r': esc = "\\r"; break;
    case '\t': esc = "\\t"; break;
    default: snprintf(u, sizeof u, "\\u%04x", c); esc = u;
    }
    ps_buf_add(b, esc, strlen(esc));
  }
  ps_buf_add(b, s + run, n - run);
  ps_buf_lit(b, "\"");
  return 0;
}

/* Number::toString of ECMAScript (what JSON.stringify writes): the shortest digits that
 * read back as the same double, without an exponent for 1e-7 < |d| < 1e21. */
static void put_double(ps_buf *b, double d)
{
  char e[40], digits[24], out[64];
  int prec, k = 0, exp10, n, i, o = 0;
  const char *c;
  if (d == 0) { ps_buf_lit(b, "0"); return; }
  for (prec = 1; prec <= 17; prec++) {
    snprintf(e, sizeof e, "%.*e", prec - 1, d);
    if (strtod(e, NULL) == d) break;
  }
  c = e;
  if (*c == '-') out[o++] = *c++;
  for (; *c && *c != 'e'; c++)
    if (*c != '.') digits[k++] = *c;
  while (k > 1 && digits[k - 1] == '0') k--;
  exp10 = atoi(c + 1);
  n = exp10 + 1;
  if (k <= n && n <= 21) {
    memcpy(out + o, digits, (size_t)k); o += k;
    for (i = k; i < n; i++) out[o++] = '0';
  } else if (0 < n && n <= 21) {
    memcpy(out + o, digits, (size_t)n); o += n;
    out[o++] = '.';
    memcpy(out + o, digits + n, (size_t)(k - n)); o += k - n;
  } else if (-6 < n && n <= 0) {
    out[o++] = '0';
    out[o++] = '.';
    for (i = 0; i < -n; i++) out[o++] = '0';
    memcpy(out + o, digits, (size_t)k); o += k;
  } else {
    out[o++] = digits[0];
    if (k > 1) {
      out[o++] = '.';
      memcpy(out + o, digits + 1, (size_t)(k - 1)); o += k - 1;
    }
    o += snprintf(out + o, sizeof out - (size_t)o, "e%c%d", n - 1 < 0 ? '-' : '+', abs(n - 1));
  }
  ps_buf_add(b, out, (size_t)o);
}

static void put_number(lua_State *L, int idx, ps_buf *b)
{
  if (lua_isinteger(L, idx)) {
    char num[32];
    int k = snprintf(num, sizeof num, "%lld", (long long)lua_tointeger(L, idx));
    ps_buf_add(b, num, (size_t)k);
  } else {
    put_double(b, (double)lua_tonumber(L, idx));
  }
}

typedef struct ps_enc {
  lua_State *L;
  int decode;        /* stack index of cjson's decode */
  ps_buf *b;
  const char *why;   /* what could not be encoded */
} ps_enc;

static int put_value(ps_enc *x, int idx, const ps_jorder *order, int depth);
static int raw_has_key(ps_enc *x, const char *raw, size_t rawn, const char *key, size_t keyn);

typedef struct { const char *s; size_t n; } keyref;

static int cmp_key(const void *a, const void *b)
{
  const keyref *x = a, *y = b;
  size_t n = x->n < y->n ? x->n : y->n;
  int c = memcmp(x->s, y->s, n);
  return c ? c : (x->n > y->n) - (x->n < y->n);
}

static int in_order(const ps_jorder *order, const char *k, size_t n)
{
  const char *const *o;
  if (!order) return 0;
  for (o = order->keys; *o; o++)
    if (strlen(*o) == n && memcmp(*o, k, n) == 0) return 1;
  return 0;
}

static const ps_jorder *child_order(const ps_jorder *order, const char *k, size_t n)
{
  if (order && order->child_key && strlen(order->child_key) == n && !memcmp(order->child_key, k, n))
    return order->child;
  return NULL;
}

/* Appends the members of the table at idx that raw (an object's text, or NULL) does not
 * have: known keys in their order, then the others sorted by bytes. */
static int put_new_members(ps_enc *x, int idx, const char *raw, size_t rawn,
                           const ps_jorder *order, int depth, int *first)
{
  lua_State *L = x->L;
  keyref st[32], *keys = st;
  size_t nk = 0, cap = 32, i;
  int rc = 0;
  const char *const *o;

  /* Does raw already hold key k? (raw keys are compared after decoding) */
#define HAS_RAW(k, kn) (raw && raw_has_key(x, raw, rawn, (k), (kn)))
  if (order)
    for (o = order->keys; *o && rc == 0; o++) {
      lua_getfield(L, idx, *o);
      if (!lua_isnil(L, -1) && !HAS_RAW(*o, strlen(*o))) {
        if (!*first) ps_buf_lit(x->b, ",");
        *first = 0;
        put_string(x->b, *o, strlen(*o));
        ps_buf_lit(x->b, ":");
        rc = put_value(x, -1, child_order(order, *o, strlen(*o)), depth + 1);
      }
      lua_pop(L, 1);
    }
  if (rc) return rc;
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    size_t kn;
    const char *k;
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING) {
      lua_pop(L, 1);
      x->why = "a table mixes string and other keys";
      rc = -1;
      break;
    }
    k = lua_tolstring(L, -1, &kn);
    if (in_order(order, k, kn) || HAS_RAW(k, kn)) continue;
    if (nk == cap) {
      keyref *g = malloc(2 * cap * sizeof *g);
      if (!g) { lua_pop(L, 1); x->why = "out of memory"; rc = -1; break; }
      memcpy(g, keys, nk * sizeof *keys);
      if (keys != st) free(keys);
      keys = g;
      cap *= 2;
    }
    keys[nk].s = k; /* anchored by the table */
    keys[nk].n = kn;
    nk++;
  }
#undef HAS_RAW
  if (rc == 0) {
    qsort(keys, nk, sizeof *keys, cmp_key);
    for (i = 0; i < nk && rc == 0; i++) {
      if (!*first) ps_buf_lit(x->b, ",");
      *first = 0;
      if (put_string(x->b, keys[i].s, keys[i].n) != 0) {
        x->why = "a key is not valid UTF-8";
        rc = -1;
        break;
      }
      ps_buf_lit(x->b, ":");
      lua_pushlstring(L, keys[i].s, keys[i].n);
      lua_rawget(L, idx);
      rc = put_value(x, -1, NULL, depth + 1);
      lua_pop(L, 1);
    }
  }
  if (keys != st) free(keys);
  return rc;
}

/* How many keys the table at idx has, and whether they are exactly 1..n. */
static size_t count_keys(lua_State *L, int idx, int *seq)
{
  size_t n = 0, len = lua_rawlen(L, idx);
  *seq = 1;
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    lua_pop(L, 1);
    n++;
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 || (size_t)lua_tointeger(L, -1) > len)
      *seq = 0;
  }
  if (n != len) *seq = 0;
  return n;
}

/* A value written from scratch (nothing of it was read). */
static int put_value(ps_enc *x, int idx, const ps_jorder *order, int depth)
{
  lua_State *L = x->L;
  size_t n, i;
  int seq, first = 1;
  idx = lua_absindex(L, idx);
  switch (lua_type(L, idx)) {
  case LUA_TSTRING: {
    const char *s = lua_tolstring(L, idx, &n);
    if (put_string(x->b, s, n) != 0) { x->why = "a string is not valid UTF-8"; return -1; }
    return 0;
  }
  case LUA_TNUMBER:
    if (!lua_isinteger(L, idx) && !isfinite(lua_tonumber(L, idx))) {
      x->why = "a number is not finite";
      return -1;
    }
    put_number(L, idx, x->b);
    return 0;
  case LUA_TBOOLEAN:
    if (lua_toboolean(L, idx)) ps_buf_lit(x->b, "true");
    else ps_buf_lit(x->b, "false");
    return 0;
  case LUA_TLIGHTUSERDATA:
    if (lua_touserdata(L, idx) == NULL) { ps_buf_lit(x->b, "null"); return 0; } /* cjson.null */
    break;
  case LUA_TTABLE:
    if (depth > PS_MAX_DEPTH) { x->why = "nested too deeply"; return -1; }
    luaL_checkstack(L, 6, "pairstore: nesting");
    n = count_keys(L, idx, &seq);
    if (n > 0 && seq) {
      ps_buf_lit(x->b, "[");
      for (i = 1; i <= n; i++) {
        int rc;
        if (i > 1) ps_buf_lit(x->b, ",");
        lua_rawgeti(L, idx, (lua_Integer)i);
        rc = put_value(x, -1, NULL, depth + 1);
        lua_pop(L, 1);
        if (rc) return rc;
      }
      ps_buf_lit(x->b, "]");
      return 0;
    }
    ps_buf_lit(x->b, "{");
    if (put_new_members(x, idx, NULL, 0, order, depth, &first) != 0) return -1;
    ps_buf_lit(x->b, "}");
    return 0;
  default:
    break;
  }
  x->why = "a value is not a JSON value (function, userdata, ...)";
  return -1;
}


static int key_equal(ps_enc *x, const char *k, size_t kn, const char *key, size_t keyn)
{
  if (!memchr(k, '\\', kn)) return kn == keyn + 2 && memcmp(k + 1, key, keyn) == 0;
  if (push_string(x->L, x->decode, k, kn) != 0) return 0;
  {
    size_t dn;
    const char *d = lua_tolstring(x->L, -1, &dn);
    int eq = dn == keyn && memcmp(d, key, keyn) == 0;
    lua_pop(x->L, 1);
    return eq;
  }
}

/* Two key tokens that decode alike in Lua: whether JSON.parse also takes them as one key
 * (it does unless a lone surrogate, which Lua reads as U+FFFD, tells them apart). */
static int same_json_key(const char *a, size_t an, const char *b, size_t bn)
{
  int esc = 0, la = 0, lb = 0;
  if (an == bn && memcmp(a, b, an) == 0) return 1;
  scan_string(a, a + an, &esc, &la);
  scan_string(b, b + bn, &esc, &lb);
  return !la && !lb;
}

static int raw_has_key(ps_enc *x, const char *raw, size_t rawn, const char *key, size_t keyn)
{
  const char *s = raw, *end = raw + rawn, *k, *v;
  size_t kn, vn;
  while (next_member(&s, end, &k, &kn, &v, &vn))
    if (key_equal(x, k, kn, key, keyn)) return 1;
  return 0;
}

static int merge(ps_enc *x, const char *raw, size_t rawn, int idx, const ps_jorder *order,
                 int depth);

/* An object member by member: each key the table still has keeps its place and its key's
 * text, its value merged; a key it no longer has is left out; a key seen twice in raw
 * (JSON.parse keeps the last value) is written once, at its first place. */
static int merge_object(ps_enc *x, const char *raw, size_t rawn, int idx, const ps_jorder *order,
                        int depth)
{
  lua_State *L = x->L;
  const char *s = raw, *end = raw + rawn, *k, *v;
  size_t kn, vn, nraw = 0, ntable;
  int first = 1, seq, alike = 0;
  /* Can two of raw's keys be one key to JSON.parse or to Lua? Only if two have the same
   * bytes, or one has an escape: otherwise no member needs to look for a later twin (a
   * search of all later members for each, which would make the merge quadratic). */
  lua_newtable(L);
  while (next_member(&s, end, &k, &kn, &v, &vn)) {
    if (memchr(k, '\\', kn)) { alike = 1; break; }
    lua_pushlstring(L, k, kn);
    if (lua_rawget(L, -2) != LUA_TNIL) { lua_pop(L, 1); alike = 1; break; }
    lua_pop(L, 1);
    lua_pushlstring(L, k, kn);
    lua_pushboolean(L, 1);
    lua_rawset(L, -3);
  }
  lua_pop(L, 1);
  s = raw;
  ps_buf_lit(x->b, "{");
  lua_newtable(L); /* keys written */
  while (next_member(&s, end, &k, &kn, &v, &vn)) {
    size_t keyn;
    const char *key;
    if (push_string(L, x->decode, k, kn) != 0) { x->why = "bad key"; return -1; }
    key = lua_tolstring(L, -1, &keyn);
    lua_pushvalue(L, -1);
    if (lua_rawget(L, -3) != LUA_TNIL) { lua_pop(L, 2); continue; }
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_rawget(L, idx);
    if (lua_isnil(L, -1)) { lua_pop(L, 2); continue; }
    if (!first) ps_buf_lit(x->b, ",");
    first = 0;
    /* JSON.parse keeps the last of duplicate keys: merge against that value's text. A later
     * key that Lua cannot tell from this one but JSON.parse can ("x\ud800" and "x\udbff" both
     * read as "x" U+FFFD) shadows it in Lua: this member is kept as it is. */
    {
      const char *s2 = s, *k2, *v2, *lv = v;
      size_t kn2, vn2, lvn = vn;
      int shadowed = 0;
      while (alike && next_member(&s2, end, &k2, &kn2, &v2, &vn2))
        if (key_equal(x, k2, kn2, key, keyn)) {
          if (same_json_key(k, kn, k2, kn2)) { lv = v2; lvn = vn2; }
          else shadowed = 1;
        }
      if (shadowed) {
        ps_buf_add(x->b, k, kn);
        ps_buf_lit(x->b, ":");
        ps_buf_add(x->b, v, vn);
        lua_pop(L, 2);
        continue;
      }
      ps_buf_add(x->b, k, kn);
      ps_buf_lit(x->b, ":");
      if (merge(x, lv, lvn, lua_gettop(L), child_order(order, key, keyn), depth + 1) != 0)
        return -1;
    }
    lua_pop(L, 1);
    lua_pushboolean(L, 1);
    lua_rawset(L, -3);
    nraw++;
  }
  lua_pop(L, 1);
  ntable = count_keys(L, idx, &seq);
  if (ntable > nraw && put_new_members(x, idx, raw, rawn, order, depth, &first) != 0) return -1;
  ps_buf_lit(x->b, "}");
  return 0;
}

static int merge_array(ps_enc *x, const char *raw, size_t rawn, int idx, size_t n, int depth)
{
  lua_State *L = x->L;
  const char *s = ws(raw, raw + rawn) + 1, *end = raw + rawn;
  size_t i;
  ps_buf_lit(x->b, "[");
  for (i = 1; i <= n; i++) {
    const char *v;
    int rc;
    if (i > 1) ps_buf_lit(x->b, ",");
    s = ws(s, end);
    if (s < end && *s == ',') s = ws(s + 1, end);
    lua_rawgeti(L, idx, (lua_Integer)i);
    if (s < end && *s != ']') {
      v = s;
      s = skip_value(s, end);
      rc = merge(x, v, (size_t)(s - v), lua_gettop(L), NULL, depth + 1);
    } else {
      rc = put_value(x, -1, NULL, depth + 1);
    }
    lua_pop(L, 1);
    if (rc) return rc;
  }
  ps_buf_lit(x->b, "]");
  return 0;
}

/* Writes the value at idx, reusing raw (the text it was read from) wherever the value is
 * still the one raw says. */
static int merge(ps_enc *x, const char *raw, size_t rawn, int idx, const ps_jorder *order,
                 int depth)
{
  lua_State *L = x->L;
  int t = lua_type(L, idx), same = 0;
  idx = lua_absindex(L, idx);
  if (!raw || rawn == 0) return put_value(x, idx, order, depth);
  if (depth > PS_MAX_DEPTH) { x->why = "nested too deeply"; return -1; }
  switch (*raw) {
  case '"':
    if (t == LUA_TSTRING) {
      if (push_string(L, x->decode, raw, rawn) != 0) break;
      same = lua_rawequal(L, -1, idx);
      lua_pop(L, 1);
    }
    break;
  case 't': same = t == LUA_TBOOLEAN && lua_toboolean(L, idx); break;
  case 'f': same = t == LUA_TBOOLEAN && !lua_toboolean(L, idx); break;
  case 'n': same = t == LUA_TLIGHTUSERDATA && lua_touserdata(L, idx) == NULL; break;
  case '{':
    if (t == LUA_TTABLE) {
      int seq;
      size_t n = count_keys(L, idx, &seq);
      if (n == 0 || !seq) return merge_object(x, raw, rawn, idx, order, depth);
    }
    break;
  case '[':
    if (t == LUA_TTABLE) {
      int seq;
      size_t n = count_keys(L, idx, &seq);
      if (n == 0 || seq) return merge_array(x, raw, rawn, idx, n, depth);
    }
    break;
  default:
    if (t == LUA_TNUMBER) {
      luaL_checkstack(L, 2, "pairstore: nesting");
      ps_json_push_number(L, raw, rawn);
      same = lua_rawequal(L, -1, idx);
      lua_pop(L, 1);
    }
  }
  if (same) {
    ps_buf_add(x->b, raw, rawn);
    return 0;
  }
  return put_value(x, idx, order, depth);
}

const char *ps_json_encode(lua_State *L, int decode, const char *raw, size_t rawn, int idx,
                           const ps_jorder *order, ps_buf *b)
{
  ps_enc x;
  int top = lua_gettop(L);
  x.L = L;
  x.decode = lua_absindex(L, decode);
  x.b = b;
  x.why = NULL;
  idx = lua_absindex(L, idx);
  if (merge(&x, raw, rawn, idx, order, 0) != 0) {
    lua_settop(L, top);
    return x.why ? x.why : "not encodable";
  }
  lua_settop(L, top);
  return b->oom ? "out of memory" : NULL;
}
