-- The lock's fallback for file systems without O_TMPFILE: the candidate sentinel is then a
-- uniquely named file (<path>.lock.new-<random>) linked into place. Forced here by failing
-- the O_TMPFILE open (the third system call of a new store's first operation, after the open
-- and fstat of its directory) with EOPNOTSUPP, on the fault-injection build. Prints its checks and "N passed, N failed".
local H = dofile("spec/fault/harness.lua")
local core = H.need_fault_build("fallback")
local pairstore = require "pairstore"

local dir = H.tmpdir("fallback")
local path = dir .. "/pair-sessions.json"
local store = pairstore.open(path, { durable = false })
local s = assert(store:create {})

local ok_all, calls = true, 0
for i = 1, 20 do
  -- a store of its own each time: a store makes its sentinel once, then parks and reuses it
  local st = pairstore.open(path, { durable = false })
  core.fault(3, core.errno("EOPNOTSUPP"), false)
  local r, msg = st:update(s.sid, function(x) x.n = i end)
  local _, _, hit = core.fault_state()
  core.fault(0)
  -- call 3 is the O_TMPFILE open: EOPNOTSUPP anywhere else would fail the update
  calls = calls + 1
  if hit and r and r.n == i then
    -- the named candidate, parked after the first update, is published again by the second
    r, msg = st:update(s.sid, function(x) x.m = i end)
  end
  st:close()
  if not (hit and r and r.n == i and r.m == i) then
    ok_all = false
    H.check("fallback: update " .. i .. " succeeds through the named candidate", false, msg)
    break
  end
end
H.check("fallback: 20 updates succeed when O_TMPFILE is refused", ok_all)
H.check("fallback: the updates all landed", store:get(s.sid).n == 20, tostring(store:get(s.sid).n))
store:close()
local left = {}
for _, n in ipairs(H.ls(dir)) do
  if n ~= "pair-sessions.json" then left[#left + 1] = n end
end
H.check("fallback: no candidate, sentinel or temp file left", #left == 0, table.concat(left, " "))
print(string.format("fallback: %d updates through the named candidate, %d files left", calls, #left))
H.rmrf(dir)
H.finish()
