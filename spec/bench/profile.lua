--- spec/bench/profile.lua — a small driver for profiling one operation at a level (issue 5),
-- run by spec/bench/profile.sh under callgrind / strace / perf.
--
--   profile.lua seed PATH N             grow the store at PATH to N live sessions (durable=false)
--   profile.lua run OP PATH COUNT [nd]  COUNT times OP on it (nd: durable = false), where OP is
--     get          get of a session; the file unchanged since this store's last call
--     get_changed  get after another store rewrote the file (that rewrite is m_update, not m_get)
--     update       update of a session, a size-neutral edit of operatorContext.accountId
--     create       create, then delete it again (the delete is an update)
--     list_active  list_active
-- Under valgrind --tool=callgrind --collect-atstart=no, only the measured calls are counted
-- (after WARM uncounted ones), through benchutil.collect; the rewrite by the other store in
-- get_changed and the delete after each create are not counted.
local pairstore = require "pairstore"
local bu = require "benchutil"

local mode, a2, a3, a4, a5 = arg[1], arg[2], arg[3], arg[4], arg[5]
local fmt = string.format

local SPEC = {
  mode = "generate",
  operator = { channel = "telegram", senderId = "user-000000001", accountId = "acct-0000000" },
  ttl_ms = pairstore.MAX_TTL_MS,
}

local function must(v, msg, code)
  if v == nil then error(fmt("store call failed: %s (%s)", tostring(msg), tostring(code)), 2) end
  return v
end

local function bump(s)
  local c = s.operatorContext
  c.accountId = fmt("acct-%07d", (tonumber(c.accountId:sub(6)) + 1) % 10000000)
end

if mode == "seed" then
  local store = pairstore.open(a2, { durable = false, max_sessions = 100000 })
  local n = tonumber(a3)
  local have = #must(store:list_all())
  for _ = have + 1, n do must(store:create(SPEC)) end
  return
end

assert(mode == "run", "usage: profile.lua seed PATH N | run OP PATH COUNT [nd]")
local op, path, count, durable = a2, a3, tonumber(a4), a5 ~= "nd"
local A = pairstore.open(path, { durable = durable, max_sessions = 100000 })
local B = pairstore.open(path, { durable = durable, max_sessions = 100000 })
local all = must(A:list_all())
local sids = {}
for i, s in ipairs(all) do sids[i] = s.sid end
local function sid(i) return sids[(i * 37) % #sids + 1] end

-- Warm-up outside the counts (a long-running process has its caches warm), then each
-- operation with callgrind collecting around that call only.
local counting = false
local function measured(f, ...)
  if counting then bu.collect(true) end
  local r, msg, code = f(...)
  if counting then bu.collect(false) end
  return must(r, msg, code)
end
local WARM = 3
local run
if op == "get" then
  run = function(i) measured(A.get, A, sid(i)) end
elseif op == "get_changed" then
  run = function(i)
    must(B:update(sid(i + 1), bump))
    measured(A.get, A, sid(i))
  end
elseif op == "update" then
  run = function(i) measured(A.update, A, sid(i), bump) end
elseif op == "create" then
  run = function()
    local s = measured(A.create, A, SPEC)
    must(A:update(s.sid, function() return false end))
  end
elseif op == "list_active" then
  run = function() measured(A.list_active, A) end
else
  error("unknown op " .. tostring(op))
end
for i = 1, WARM do run(-i) end -- also with COUNT = 0: strace subtracts that run
counting = true
for i = 1, count do run(i) end
