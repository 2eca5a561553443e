-- One store operation in its own process, for the harnesses that act from outside (fiu-run,
-- ulimit -f, strace, chaos): lua5.4 spec/fault/one_op.lua PATH OP [ARG]
--   incr [SID]    update: secondaryCodeAttempts + 1     -> "ok <attempts>"
--   incr2 [SID]   the same twice, in two transactions   -> "ok <attempts>"
--   big KB [SID]  update: set a field of KB kilobytes   -> "ok <attempts>"
-- (without SID, the first session of list_all, found in a transaction of its own).
-- Environment: PS_LOCK_WAIT_MS (lock_wait_ms), PS_DURABLE=0 (durable = false).
--   seed      create one session (canary key and code) -> "ok <sid>"
--   list      list_all                                 -> "ok <count>"
-- Failures print "err <code>\t<message>"; every event prints "event <name>\t<message>\t<path>".
package.path = "spec/support/?.lua;spec/?.lua;" .. package.path
local H = require "fault.harness"
local pairstore = require "pairstore"

local path, op, a3, a4 = arg[1], arg[2], arg[3], arg[4]
local store = pairstore.open(path, {
  max_session_bytes = 4 * 1024 * 1024, -- "big" writes sessions far above the default bound
  rng = H.canary_rng(),
  lock_wait_ms = tonumber(os.getenv("PS_LOCK_WAIT_MS")) or nil,
  durable = os.getenv("PS_DURABLE") ~= "0",
  on_event = function(name, info)
    io.write("event ", name, "\t", tostring(info.message), "\t", tostring(info.path), "\n")
  end,
})

local function sid_of(given)
  if given then return given end
  local all = assert(store:list_all())
  return assert(all[1], "no session").sid
end

local r, msg, code
if op == "seed" then
  r, msg, code = store:create { operator = { channel = "harness" }, ttl_ms = pairstore.MAX_TTL_MS }
  if r then r = r.sid end
elseif op == "incr" or op == "incr2" or op == "big" then
  local filler = op == "big" and string.rep("b", 1024 * tonumber(a3)) or nil
  local sid = sid_of(op == "big" and a4 or a3)
  for _ = 1, op == "incr2" and 2 or 1 do
    r, msg, code = store:update(sid, function(s)
      s.secondaryCodeAttempts = s.secondaryCodeAttempts + 1
      if filler then s.bigField = filler end
    end)
    if not r then break end
  end
  if r then r = r.secondaryCodeAttempts end
elseif op == "list" then
  r, msg, code = store:list_all()
  if r then r = #r end
else
  error("unknown op " .. tostring(op))
end
store:close()
if r ~= nil then
  io.write("ok ", tostring(r), "\n")
else
  io.write("err ", tostring(code), "\t", tostring(msg), "\n")
end
