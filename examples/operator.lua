-- operator.lua: a housekeeping pass an operator could run from cron:
--   1. prune (expire overdue sessions, delete ended ones past the retention hour);
--   2. list the active sessions, redacted;
--   3. reject the active sessions older than N minutes (a pairing nobody finished);
--   4. print a count per status.
--
--   lua5.4 examples/operator.lua                   a demonstration on a temp store
--   lua5.4 examples/operator.lua FILE [MINUTES]    the real thing on FILE (default 10 minutes)

-- Run from a source tree (after `make`): use the tree's lua/ and build/ (examples/lib).
do
  local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
  local tree = loadfile(here .. "/lib/source_tree.lua")
  if tree then tree(here .. "/..") end
end

local pairstore = require "pairstore"

local operator = {}

local function age(ms)
  local s = math.floor(ms / 1000)
  return string.format("%dm%02ds", math.floor(s / 60), s % 60)
end

--- One housekeeping pass over store. Returns the number of sessions rejected as stale.
function operator.run(store, stale_minutes)
  local pruned = assert(store:prune())
  print(string.format("pruned: %d ended session%s past retention removed", pruned, pruned == 1 and "" or "s"))

  local now = store:now()
  local active = assert(store:list_active())
  print(string.format("active sessions: %d", #active))
  for _, s in ipairs(active) do
    local r = pairstore.redact(s)
    print(string.format("  %s  %-16s  %-8s  %-8s  age %-7s  attempts %d  code %s", r.sid:sub(1, 8), r.status,
      r.mode, r.operatorContext.channel, age(now - r.createdAtMs), r.secondaryCodeAttempts, r.secondaryCode))
  end

  local limit, rejected = stale_minutes * 60000, 0
  for _, s in ipairs(active) do
    if now - s.createdAtMs > limit then
      local ok, msg = store:reject(s.sid)
      if ok then
        rejected = rejected + 1
        print(string.format("rejected stale session %s (%s for %s)", s.sid:sub(1, 8), s.status, age(now - s.createdAtMs)))
      else
        print(string.format("could not reject %s: %s", s.sid:sub(1, 8), tostring(msg)))
      end
    end
  end
  print(string.format("stale (older than %d min): %d rejected", stale_minutes, rejected))

  local counts, names = {}, {}
  for _, s in ipairs(assert(store:list_all())) do
    if not counts[s.status] then names[#names + 1] = s.status end
    counts[s.status] = (counts[s.status] or 0) + 1
  end
  table.sort(names)
  local parts = {}
  for _, n in ipairs(names) do parts[#parts + 1] = n .. " " .. counts[n] end
  print("by status: " .. (#parts > 0 and table.concat(parts, ", ") or "(empty store)"))
  return rejected
end

-- A demonstration store: sessions of various ages, made with a clock we control.
local function demo()
  local tmp = io.popen("mktemp -d /tmp/pairstore-operator.XXXXXX"):read("*l")
  local T0 = 1764300000000
  local t = T0
  local store = pairstore.open(tmp .. "/pair-sessions.json", { now = function() return t end })
  local MIN = 60000
  local ok, err = pcall(function()
    t = T0 - 61 * MIN -- completed just over an hour ago: pruned now
    local done = assert(store:create { operator = { channel = "telegram" } })
    assert(store:verify_code(done.sid, done.secondaryCode))
    assert(store:consume(done.sid))
    assert(store:transition(done.sid, "completed"))
    t = T0 - 40 * MIN -- a 5-minute session nobody scanned: expired, kept for the hour
    assert(store:create { operator = { channel = "web" }, ttl_ms = 5 * MIN })
    t = T0 - 20 * MIN -- never scanned, still within its hour-long TTL: stale
    assert(store:create { operator = { channel = "cli" }, ttl_ms = 60 * MIN })
    t = T0 - 12 * MIN -- scanned but the phone never answered: stale
    local half = assert(store:create { mode = "import", operator = { channel = "cli" } })
    assert(store:verify_code(half.sid, half.secondaryCode))
    t = T0 - 1 * MIN -- a fresh one: left alone
    assert(store:create { operator = { channel = "web" } })
    t = T0
    print("demo store: " .. tmp .. "/pair-sessions.json (5 sessions of various ages)")
    print()
    local rejected = operator.run(store, 10)
    assert(rejected == 2, "expected 2 stale sessions, got " .. rejected)
    assert(#assert(store:list_active()) == 1, "expected 1 active session left")
  end)
  store:close()
  os.execute("rm -rf '" .. tmp .. "'")
  if not ok then
    io.stderr:write("operator.lua: ", tostring(err), "\n")
    os.exit(1)
  end
end

if arg and arg[0] and arg[0]:match("operator%.lua$") then
  if arg[1] then
    local minutes = tonumber(arg[2] or "10")
    if not minutes or minutes <= 0 then
      io.stderr:write("usage: lua5.4 operator.lua [FILE [MINUTES]]\n")
      os.exit(2)
    end
    local store = pairstore.open(arg[1])
    local ok, err = pcall(operator.run, store, minutes)
    store:close()
    if not ok then
      io.stderr:write("operator.lua: ", tostring(err), "\n")
      os.exit(1)
    end
  else
    demo()
  end
  os.exit(0)
end

return operator
