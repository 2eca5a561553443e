-- holder.lua TARGET SID HOLD_MS DIR: another process holding the store's lock for SID (the
-- file lock; on PostgreSQL the session's row lock, SELECT ... FOR UPDATE in an open
-- transaction) inside a store:update mutator for HOLD_MS, for spec/nginx/driver.lua.
-- Writes DIR/held (the monotonic ms it got the lock) once it holds it, DIR/released (the
-- monotonic ms it let go) after, and DIR/releasing_wall (the wall clock's ms just before it
-- lets go); exits 0 when the update committed.
local pairstore = require "pairstore"
local core = require "pairstore.core"

local target, sid, hold_ms, dir = arg[1], arg[2], tonumber(arg[3]), arg[4]
assert(target and sid and hold_ms and dir, "usage: holder.lua TARGET SID HOLD_MS DIR")

local function put(name, text)
  local f = assert(io.open(dir .. "/" .. name .. ".tmp", "w"))
  f:write(text, "\n")
  f:close()
  assert(os.rename(dir .. "/" .. name .. ".tmp", dir .. "/" .. name))
end

local store = pairstore.open(target, { lock_wait_ms = 20000 })
local ok, msg, code = store:update(sid, function(s)
  put("held", tostring(core.mono_ms()))
  os.execute(string.format("sleep %.3f", hold_ms / 1000)) -- a child: no yield, the lock stays held
  s.operatorContext.accountId = "held"
  -- the wall clock's ms (what nginx's $msec says) while still holding it: no request that
  -- needs the lock can end before this
  local d = io.popen("date +%s%3N")
  put("releasing_wall", d:read("l"))
  d:close()
end)
put("released", tostring(core.mono_ms()))
store:close()
if not ok then
  io.stderr:write("holder: ", tostring(msg), " (", tostring(code), ")\n")
  os.exit(1)
end
