--- pairstore stats [--json | --prometheus]: a snapshot of the store (pairstore.stats) as a
-- table, JSON, or a Prometheus text exposition for node_exporter's textfile collector.
local stats = require "pairstore.stats"
local output = require "pairstore.cli.output"

local json_encode = require("pairstore.core").json_encode

local function run(ctx, args, store)
  local snap, msg, code = stats.snapshot(store)
  if not snap and args.prometheus then
    -- the exposition is the product: it says the store is down (a textfile collector's
    -- `> x.prom.tmp && mv` then replaces the last one); why goes to stderr
    ctx.w:out(stats.prometheus(stats.down(store, msg, code)))
    ctx.w:warn("pairstore: cannot read the store: ", msg, code and code ~= msg and (" [" .. code .. "]") or "")
    return 0
  end
  if not snap then ctx:failed("cannot read the store", msg, code) end
  if args.prometheus then
    ctx.w:out(stats.prometheus(snap))
  elseif args.json then
    local text, why = json_encode(output.utf8_copy(snap))
    if not text then ctx:die("cannot encode the snapshot as JSON: " .. tostring(why)) end
    ctx.w:out(output.escape_hidden(text), "\n")
  else
    for _, r in ipairs(stats.rows(snap)) do ctx.w:out(string.format("%-12s %s\n", r[1], output.visible(r[2]))) end
  end
  return 0
end

return {
  summary = "A snapshot of the store: sessions by status, the oldest live one, size, lock, ...",
  epilog = "Sessions by status and the oldest live session's age (one read); for a file: its size, the\n"
    .. "lock's holder and age, the corrupt files moved aside; for PostgreSQL: the server reached,\n"
    .. "whether it is the primary, and the store's rows. --prometheus prints the same as a text\n"
    .. "exposition for node_exporter's textfile collector (write it to a .prom file atomically);\n"
    .. "a store that cannot be read is pairstore_store_up 0 there (exit status 0, the reason on stderr).",
  define = function(cmd)
    cmd:mutex(
      cmd:flag("--json", "Print it as JSON."),
      cmd:flag("--prometheus", "Print it in the Prometheus text format 0.0.4.")
    )
  end,
  run = run,
}
