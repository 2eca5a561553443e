-- A stress worker: increments secondaryCodeAttempts of one session under the lock, forever
-- (chaos) or COUNT times (mixed), and appends one line per acknowledged increment to ACKFILE:
--   "A <op_start_ms> <enter_ms> <op_end_ms>"
-- op_start: before the call; enter: first thing inside the mutator (the lock is held);
-- op_end: after the call returned (committed and released). Failures: "E <code> <message>".
-- WORKER_UNLOCKED=1: the negative control, the same increments without the lock.
-- A lock this worker broke: "B <delivered_ms> <dead holder pid> <sentinel age ms>" (events
-- are delivered after the call, so delivered_ms is an upper bound of the moment of the break).
--   lua5.4 spec/stress/worker.lua PATH SID ACKFILE [COUNT]
local pairstore = require "pairstore"
local core = require "pairstore.core"
local now = core.now_ms

local path, sid, ackfile, count = arg[1], arg[2], arg[3], tonumber(arg[4])
local log
local store = pairstore.open(path, {
  on_event = function(name, info)
    if name == "lock_broken" then log(string.format("B %d %d %d", now(), info.pid or 0, info.age_ms or 0)) end
  end,
  durable = os.getenv("PS_DURABLE") ~= "0",
  lock_wait_ms = tonumber(os.getenv("PS_LOCK_WAIT_MS")) or 10000,
})

function log(line)
  local f = assert(io.open(ackfile, "a"))
  f:write(line, "\n") -- one write(2) at close: a kill leaves a whole line or none
  f:close()
end

if os.getenv("WORKER_UNLOCKED") then
  -- Negative control: the same read-modify-write without the lock (atomic rename only).
  local json = require("cjson").new()
  local n = 0
  store = { update = function(_, id, fn)
    local f = io.open(path, "rb")
    local doc = json.decode(f:read("a"))
    f:close()
    for _, s in ipairs(doc.sessions) do if s.sid == id then fn(s) end end
    n = n + 1
    local tmp = path .. ".tmp-unlocked-" .. n .. "-" .. tostring(os.clock()):gsub("%.", "")
    f = io.open(tmp, "wb")
    f:write(json.encode(doc))
    f:close()
    os.rename(tmp, path)
    return true
  end }
end
local hold = tonumber(os.getenv("WORKER_HOLD_MS")) -- stay that long inside the mutator
local acked, i = 0, 0
while not count or i < count do
  i = i + 1
  local enter
  local t0 = now()
  local r, msg, code = store:update(sid, function(s)
    enter = now()
    if hold then repeat until now() - enter >= hold end
    s.secondaryCodeAttempts = s.secondaryCodeAttempts + 1
  end)
  local t1 = now()
  if r then
    acked = acked + 1
    log(string.format("A %d %d %d", t0, enter, t1))
  else
    log(string.format("E %s %s", tostring(code), tostring(msg)))
  end
end
print("acked " .. acked)
