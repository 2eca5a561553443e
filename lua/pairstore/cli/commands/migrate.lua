--- pairstore migrate FROM TO: every session of one store copied into another.
-- Each session as the exact text it holds (store:export()), imported into TO in one
-- transaction (store:import(texts)): added when TO lacks the sid, same when TO has the very
-- text, and the whole call refused (conflict) when TO has that sid with another text.
local compat = require "pairstore.compat"
local output = require "pairstore.cli.output"
local targets = require "pairstore.cli.targets"
local utf8 = compat.utf8

-- The sid a session's text gives, for messages (nil for a text that is not one). cjson
-- refuses a lone surrogate escape, which a session's strings may hold: every surrogate
-- escape is read as U+FFFD here (only the sid, plain ASCII, is wanted).
local function sid_of(text)
  local ok, v = pcall(require("cjson").decode, (text:gsub("\\u[dD][89abAB]%x%x", "\\ufffd")))
  if ok and type(v) == "table" and type(v.sid) == "string" then return v.sid end
end

-- The sids whose text differs between the texts given and what store holds now.
local function conflicts(store, texts)
  local held, found = {}, {}
  for _, t in ipairs(store:export() or {}) do
    local sid = sid_of(t)
    if sid then held[sid] = t end
  end
  for _, t in ipairs(texts) do
    local sid = sid_of(t)
    if sid and held[sid] and held[sid] ~= t then found[#found + 1] = sid end
  end
  return found
end

-- For stderr (made visible there, with the passwords scrubbed).
local function name_of(store)
  return tostring(store.path) .. " (" .. store:backend() .. ")"
end

local function run(ctx, args)
  local from = targets.open_target(ctx, args.from, args.from_store_name, "--from-store-name", "FROM")
  local to = targets.open_target(ctx, args.to, args.to_store_name, "--to-store-name", "TO")
  local texts, msg, code = from:export()
  if not texts then ctx:failed("cannot read the sessions of " .. name_of(from), msg, code) end
  local added, same
  added, same, code = to:import(texts)
  if not added then
    if code == "conflict" then
      local sids = conflicts(to, texts)
      if #sids == 0 then ctx:failed("cannot migrate into " .. name_of(to), same, code) end
      ctx:die(string.format("cannot migrate: %s holds sessions %s with another text than %s; nothing was copied"
        .. " [conflict]", name_of(to), table.concat(sids, ", "), name_of(from)))
    end
    -- A file passes through bytes that are not UTF-8 (a hand edit); a PostgreSQL text column
    -- cannot hold them, and the server's message does not say which session it was.
    local not_utf8 = {}
    for _, t in ipairs(texts) do
      if not utf8.len(t) then not_utf8[#not_utf8 + 1] = sid_of(t) or "?" end
    end
    if #not_utf8 > 0 and to:backend() == "postgresql" then
      ctx:die(string.format("cannot migrate into %s: sessions %s of %s hold bytes that are not UTF-8, which"
        .. " PostgreSQL cannot store (%s); nothing was copied [%s]", name_of(to),
        table.concat(not_utf8, ", "), name_of(from), tostring(same), tostring(code)))
    end
    if code == "outcome_unknown" then
      ctx:die(string.format("cannot migrate into %s: %s [%s]; run it again: it adds only what is missing",
        name_of(to), tostring(same), code))
    end
    ctx:failed("cannot migrate into " .. name_of(to), same, code)
  end
  if #texts == 0 then
    -- (a mistyped FROM is an empty store: say so rather than report success quietly)
    ctx.w:warn("pairstore: note: ", name_of(from), " holds no sessions")
  end
  local shown = function(store) return output.visible(ctx.w:scrub(name_of(store))) end
  ctx.w:out("from: ", shown(from), "\n")
  ctx.w:out("to:   ", shown(to), "\n")
  ctx.w:out(string.format("%d session%s: %d added, %d same\n", #texts, #texts == 1 and "" or "s", added, same))
  from:close()
  to:close()
  return 0
end

return {
  summary = "Copy every session of one store into another (file <-> PostgreSQL).",
  epilog = "FROM and TO are targets as for --store (a file path or a PostgreSQL target); --store,\n"
    .. "--file and their variables do not apply. Each session is copied as its exact text (unknown\n"
    .. "fields, number texts and key order kept byte for byte), all in one transaction on TO:\n"
    .. "a session TO lacks is added; one TO holds with the same text is counted as same; if TO holds\n"
    .. "a session with the same sid and another text, nothing is copied and the exit code is 2\n"
    .. "(conflict: the sids are named). Safe to run again: a second run adds 0. Both stores prune as\n"
    .. "any operation does (overdue sessions expire; ended ones past the retention hour go).\n"
    .. "After outcome_unknown, run it again: it adds only what is missing.",
  define = function(cmd)
    cmd:argument("from", "The store to copy from."):argname("FROM")
    cmd:argument("to", "The store to copy into."):argname("TO")
    cmd:option("--from-store-name", "FROM's store name, when FROM is PostgreSQL."):argname("NAME")
    cmd:option("--to-store-name", "TO's store name, when TO is PostgreSQL."):argname("NAME")
  end,
  store = false,
  check = function(ctx, args)
    if args.store or args.file or args.store_name then
      ctx:usage_error("migrate takes its stores as FROM and TO: --store, --file and --store-name do not apply")
    end
  end,
  run = run,
}
