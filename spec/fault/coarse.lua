-- The cache's fallback for file systems whose change times are coarse (kernels before
-- multigrain timestamps): the store must not trust the inode it pins, so a transaction after
-- its own write reads the file again (and compares it byte for byte), and an in-place edit
-- of the same size made within one clock tick, with the mtime put back, is still seen.
-- Forced on any kernel through the fault-injection build's switch; the number of wrapped
-- system calls per update tells whether the file was read (on a kernel with multigrain
-- timestamps the ctime betrays the edits anyway: there the count is what proves the
-- fallback). Prints its checks and "N passed, N failed".
local H = dofile("spec/fault/harness.lua")
local core = H.need_fault_build("coarse")
local pairstore = require "pairstore"

local dir = H.tmpdir("coarse")

-- Wrapped calls of the second of two updates of one store (the first one writes the file).
local function calls_of_second_update(path, coarse)
  core.fault_coarse_ctime(coarse)
  local store = pairstore.open(path, { durable = false })
  local s = assert(store:create {})
  assert(store:update(s.sid, function(x) x.n = 1 end))
  core.fault(1e9, 0, false) -- counts calls, never fails one
  assert(store:update(s.sid, function(x) x.n = 2 end))
  local _, calls = core.fault_state()
  core.fault(0)
  store:close()
  core.fault_coarse_ctime(false)
  return calls
end

local fine = calls_of_second_update(dir .. "/fine/pair-sessions.json", false)
local coarse = calls_of_second_update(dir .. "/coarse/pair-sessions.json", true)
-- open + fstat + read of the file, and read's end-of-file call at most
H.check("coarse: without fine change times the update reads the file (calls " .. fine .. " -> " .. coarse .. ")",
  coarse >= fine + 3 and coarse <= fine + 4)

-- In-place edits right after our own write, mtime put back: seen every time.
core.fault_coarse_ctime(true)
local path = dir .. "/edit/pair-sessions.json"
local store = pairstore.open(path, { durable = false })
local s = assert(store:create {})
local seen = 0
for i = 1, 20 do
  assert(store:update(s.sid, function(x) x.n = i % 10 end))
  local text = H.read(path)
  local edited = text:gsub('"n":%d', '"n":' .. (i + 5) % 10)
  os.execute("touch -r " .. H.q(path) .. " " .. H.q(dir .. "/ref"))
  local f = assert(io.open(path, "r+b")) -- same inode, same size
  f:write(edited)
  f:close()
  os.execute("touch -r " .. H.q(dir .. "/ref") .. " " .. H.q(path))
  if store:get(s.sid).n == (i + 5) % 10 then seen = seen + 1 end
end
store:close()
core.fault_coarse_ctime(false)
H.check("coarse: 20 in-place edits that keep size and mtime, each seen", seen == 20, seen .. " seen")
print(string.format("coarse: an update after its own write makes %d wrapped calls, %d without fine change times; %d/20 edits seen",
  fine, coarse, seen))
H.rmrf(dir)
H.finish()
