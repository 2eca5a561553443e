-- Stale-break race waiter: signals it is ready, blocks on a FIFO until the driver releases every
-- waiter at once, then increments the counter under the lock with an overlap detector inside the
-- critical section: an O_EXCL marker file (sh's noclobber redirection opens O_CREAT|O_EXCL)
-- created first and removed last; failing to create it means another holder is inside.
--   lua5.4 spec/stress/race_waiter.lua PATH SID FIFO MARKER LOG [LOCK_WAIT_MS]
-- RACE_NO_LOCK=1: run the critical section without the lock (the negative control).
-- FIFO "-": no gate; RACE_HOLD_S: stay that long inside the critical section.
local pairstore = require "pairstore"
local core = require "pairstore.core"
local path, sid, fifo, marker, logpath, wait_ms = arg[1], arg[2], arg[3], arg[4], arg[5], tonumber(arg[6])

local lines = {}
local function log(s) lines[#lines + 1] = s end
local store = pairstore.open(path, {
  durable = false,
  lock_wait_ms = wait_ms or 20000,
  on_event = function(name, info) log("event " .. name .. " " .. tostring(info.pid) .. " " .. tostring(info.age_ms)) end,
})
local excl = "sh -c " .. string.format("%q", "set -C; : > '" .. marker .. "'") .. " 2>/dev/null"

local f = assert(io.open(logpath, "a"))
f:write("ready\n")
f:close()
if fifo ~= "-" then
  local gate = assert(io.open(fifo, "r")) -- blocks until the driver opens the FIFO for writing
  gate:read("a")                           -- returns when the driver closes it: everyone at once
  gate:close()
end
local hold = tonumber(os.getenv("RACE_HOLD_S"))

local function critical(s)
  if os.execute(excl) ~= true then log("OVERLAP") end
  if hold then os.execute("sleep " .. hold) end
  s.secondaryCodeAttempts = s.secondaryCodeAttempts + 1
  os.remove(marker)
end
local t0 = core.now_ms()
local r, msg, code
if os.getenv("RACE_NO_LOCK") then -- negative control: the same critical section, no lock
  critical({ secondaryCodeAttempts = 0 })
  r = true
else
  r, msg, code = store:update(sid, critical)
end
log(r and ("ok " .. (core.now_ms() - t0)) or ("err " .. tostring(code) .. " " .. tostring(msg)))
f = assert(io.open(logpath, "a"))
f:write(table.concat(lines, "\n"), "\n")
f:close()
