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
  -- libpq: its header to build; the library is loaded when a PostgreSQL target is first
  -- opened (csrc/pq.c), so a process that opens only files never maps it
  PQ = { header = "postgresql/libpq-fe.h" },
}
build = {
  type = "builtin",
  modules = {
    ["pairstore.core"] = {
      sources = {
        -- every C file but csrc/testhooks.c (the test build's, -DPS_TEST)
        "csrc/base64url.c", "csrc/bind.c", "csrc/buf.c", "csrc/clock.c", "csrc/crypto.c",
        "csrc/engine_pg.c", "csrc/err.c", "csrc/json.c", "csrc/pg_link.c", "csrc/pg_schema.c", "csrc/pq.c",
        "csrc/qr.c", "csrc/rand.c", "csrc/target.c",
        "csrc/record.c", "csrc/rules.c", "csrc/sys.c", "csrc/txn.c", "csrc/wait.c",
        "csrc/engine/file/datafile.c", "csrc/engine/file/engine.c", "csrc/engine/file/fs.c",
        "csrc/engine/file/lock.c", "csrc/engine/file/beside.c",
      },
      defines = { "_GNU_SOURCE" },
      libraries = { "sodium", "qrencode", "dl", "pthread" },
      incdirs = { "$(SODIUM_INCDIR)", "$(QRENCODE_INCDIR)", "$(PQ_INCDIR)/postgresql" },
      libdirs = { "$(SODIUM_LIBDIR)", "$(QRENCODE_LIBDIR)" },
    },
    ["pairstore"] = "lua/pairstore/init.lua",
    ["pairstore.crypto"] = "lua/pairstore/crypto.lua",
    ["pairstore.respond"] = "lua/pairstore/respond.lua",
    ["pairstore.qr"] = "lua/pairstore/qr.lua",
    ["pairstore.deferred"] = "lua/pairstore/deferred.lua",
    ["pairstore.attempts"] = "lua/pairstore/attempts.lua",
    ["pairstore.text"] = "lua/pairstore/text.lua",
    ["pairstore.thread"] = "lua/pairstore/thread.lua",
    ["pairstore.compat"] = "lua/pairstore/compat.lua",
    ["pairstore.cli"] = "lua/pairstore/cli/init.lua",
    ["pairstore.cli.output"] = "lua/pairstore/cli/output.lua",
    ["pairstore.cli.targets"] = "lua/pairstore/cli/targets.lua",
    ["pairstore.cli.live"] = "lua/pairstore/cli/live.lua",
    ["pairstore.cli.commands"] = "lua/pairstore/cli/commands/init.lua",
    ["pairstore.cli.commands.list"] = "lua/pairstore/cli/commands/list.lua",
    ["pairstore.cli.commands.show"] = "lua/pairstore/cli/commands/show.lua",
    ["pairstore.cli.commands.reject"] = "lua/pairstore/cli/commands/reject.lua",
    ["pairstore.cli.commands.prune"] = "lua/pairstore/cli/commands/prune.lua",
    ["pairstore.cli.commands.create"] = "lua/pairstore/cli/commands/create.lua",
    ["pairstore.cli.commands.watch"] = "lua/pairstore/cli/commands/watch.lua",
    ["pairstore.cli.commands.corrupt"] = "lua/pairstore/cli/commands/corrupt.lua",
    ["pairstore.cli.commands.schema"] = "lua/pairstore/cli/commands/schema.lua",
    ["pairstore.cli.commands.migrate"] = "lua/pairstore/cli/commands/migrate.lua",
    ["pairstore.cli.commands.stats"] = "lua/pairstore/cli/commands/stats.lua",
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
