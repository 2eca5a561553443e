rockspec_format = "3.0"
package = "pairstore"
version = "scm-1"
source = {
  url = "git+https://example.invalid/pairstore.git",
}
description = {
  summary = "QR device-pairing sessions in one file shared by every process, or in PostgreSQL",
  detailed = [[
    pairstore keeps the short-lived sessions of a QR device-pairing flow (sid, X25519 key
    pair, 6-digit code, status, TTL) in one JSON file: persistent, atomic, durable,
    TTL-evicted, single-use, under a crash-safe cross-process lock that a reference
    TypeScript gateway shares. Mutators are Lua callbacks run while the lock is held.
    Includes the pairing crypto (X25519, HKDF-SHA256, AES-256-GCM / ChaCha20-Poly1305)
    and an operator command-line tool.
  ]],
  license = "MIT",
  labels = { "pairing", "qr", "session", "lock", "libsodium" },
}
dependencies = {
  "lua >= 5.1",
  "lua-cjson >= 2.1.0",
  "argparse",
}
external_dependencies = {
  SODIUM = { header = "sodium.h", library = "sodium" },
  QRENCODE = { header = "qrencode.h", library = "qrencode" },
  PQ = { header = "postgresql/libpq-fe.h", library = "pq" },
}
build = {
  type = "builtin",
  modules = {
    ["pairstore.core"] = {
      sources = {
        "csrc/bind.c", "csrc/crypto.c", "csrc/engine_file.c", "csrc/engine_pg.c", "csrc/err.c",
        "csrc/file.c", "csrc/json.c", "csrc/lock.c", "csrc/qr.c", "csrc/rand.c",
        "csrc/record.c", "csrc/rules.c", "csrc/sys.c", "csrc/testhooks.c", "csrc/txn.c",
        "csrc/wait.c",
      },
      defines = { "_GNU_SOURCE" },
      libraries = { "sodium", "qrencode", "pq" },
      incdirs = { "$(SODIUM_INCDIR)", "$(QRENCODE_INCDIR)", "$(PQ_INCDIR)/postgresql" },
      libdirs = { "$(SODIUM_LIBDIR)", "$(QRENCODE_LIBDIR)", "$(PQ_LIBDIR)" },
    },
    ["pairstore"] = "lua/pairstore/init.lua",
    ["pairstore.crypto"] = "lua/pairstore/crypto.lua",
    ["pairstore.respond"] = "lua/pairstore/respond.lua",
    ["pairstore.qr"] = "lua/pairstore/qr.lua",
    ["pairstore.compat"] = "lua/pairstore/compat.lua",
    ["pairstore.metrics"] = "lua/pairstore/metrics.lua",
    ["pairstore.stats"] = "lua/pairstore/stats.lua",
  },
  install = {
    bin = { pairstore = "bin/pairstore" },
  },
}
test = {
  type = "command",
  command = "make test",
}
