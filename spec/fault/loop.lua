-- The fault loop: for each operation and each fault kind, make the Nth wrapped system call
-- fail (N = 1, 2, ... until the operation runs without reaching the fault) and check the
-- promises of docs/locking-and-writes.md ("Writes") after every single run:
--   * the call returns nil, message, code (or succeeds, for EINTR and short writes, which the
--     core must retry);
--   * a failed call leaves the sessions file byte-identical (the one exception: the fault hit
--     the directory fsync after the rename, when the file must be exactly the new version);
--   * a successful call leaves exactly the bytes of a run without fault;
--   * no temp, candidate or break file remains and the sentinel <path>.lock is gone;
--   * directories the call created are 0700 and the file 0600 once a normal call succeeded;
--   * the next normal call succeeds; no descriptor leaks; no canary in any message or event.
-- Needs the fault-injection build: LUA_CPATH=build-fault/?.so.
package.path = "spec/support/?.lua;spec/?.lua;" .. package.path
local H = require "fault.harness"
local core = H.need_fault_build("fault loop")
local pairstore = require "pairstore"

local T0 = 1764300000000
local SID_A = string.rep("\1", 16)          -- sid 0101...01
local SID_B = string.rep("\2", 16)
local SID_A_HEX = string.rep("01", 16)
local MAX_N = tonumber(os.getenv("FAULT_MAX_N")) or 200

local FAULTS = {
  { name = "ENOSPC", errno = core.errno("ENOSPC") },
  { name = "EIO", errno = core.errno("EIO") },
  { name = "EACCES", errno = core.errno("EACCES") },
  { name = "EDQUOT", errno = core.errno("EDQUOT") },
  { name = "EROFS", errno = core.errno("EROFS") },
  { name = "EINTR", errno = core.errno("EINTR"), may_succeed = true },
  { name = "short", errno = 0, short = true, must_succeed = true },
}

local root = H.tmpdir("fault")
local events = {}

local function open(path, now, sid)
  return pairstore.open(path, {
    now = function() return now end,
    rng = H.canary_rng(sid),
    on_event = function(name, info)
      events[#events + 1] = { name = name, info = info }
    end,
  })
end

-- Each case: dir, path, setup() -> writes the state before the operation, op(store) -> ok, msg,
-- code; now: the clock of the operation.
local function seed_one(path, ttl)
  local s = open(path, T0, SID_A)
  local r, msg = s:create { operator = { channel = "fault", senderId = "u1" }, ttl_ms = ttl }
  assert(r, msg)
  s:close()
end

local cases = {
  {
    name = "create",
    now = T0 + 1000,
    setup = function(c) os.execute("rm -rf " .. H.q(c.dir)); os.execute("mkdir -p " .. H.q(c.dir)); seed_one(c.path) end,
    op = function(s) return s:create { operator = { channel = "fault" } } end,
    sid = SID_B,
  },
  {
    name = "update",
    now = T0 + 2000,
    setup = function(c) os.execute("rm -rf " .. H.q(c.dir)); os.execute("mkdir -p " .. H.q(c.dir)); seed_one(c.path) end,
    op = function(s)
      return s:update(SID_A_HEX, function(x)
        x.secondaryCodeAttempts = x.secondaryCodeAttempts + 1
        x.faultNote = string.rep("n", 9000) -- several KB: more than one write per chunk
      end)
    end,
  },
  {
    name = "consume",
    now = T0 + 3000,
    setup = function(c) os.execute("rm -rf " .. H.q(c.dir)); os.execute("mkdir -p " .. H.q(c.dir)); seed_one(c.path) end,
    op = function(s) return s:consume(SID_A_HEX) end,
  },
  {
    name = "prune",
    -- the session (ttl 300 s) expired 1 ms ago: prune marks it expired and writes
    now = T0 + 300001,
    setup = function(c) os.execute("rm -rf " .. H.q(c.dir)); os.execute("mkdir -p " .. H.q(c.dir)); seed_one(c.path, 300000) end,
    op = function(s) return s:prune() end,
  },
  {
    name = "first-write",
    now = T0,
    nested = true,
    setup = function(c) os.execute("rm -rf " .. H.q(c.top)) end,
    op = function(s) return s:create { operator = { channel = "fault" } } end,
    sid = SID_B,
  },
}

for i, c in ipairs(cases) do
  c.top = root .. "/c" .. i
  c.dir = c.nested and (c.top .. "/new1/new2") or c.top
  c.path = c.dir .. "/pair-sessions.json"
end

local function leftovers(c)
  local bad = {}
  local dirs = { c.dir }
  for _, d in ipairs(dirs) do
    for _, n in ipairs(H.ls(d)) do
      if n ~= "pair-sessions.json" then bad[#bad + 1] = n end
    end
  end
  return bad
end

-- FAULT_WARM=1: the store makes one transaction before the fault is armed, so the faulted
-- operation publishes the lock sentinel parked by that one instead of making a new one.
local WARM = os.getenv("FAULT_WARM") == "1"

local function run_op(c, arm)
  local s = open(c.path, c.now, c.sid)
  if WARM then s:list_all() end
  if arm then arm() end
  local r, msg, code = c.op(s)
  s:close()
  return r, msg, code
end

local function check_messages(where, ...)
  local n = select("#", ...)
  for i = 1, n do
    local v = select(i, ...)
    local leak = v ~= nil and H.leak(v)
    if leak then return where .. ": " .. leak .. " in " .. tostring(v) end
  end
  for _, ev in ipairs(events) do
    for k, v in pairs(ev.info) do
      local leak = H.leak(v)
      if leak then return where .. ": " .. leak .. " in event " .. ev.name .. "." .. k end
    end
  end
  return nil
end

local fds_before = H.fds()
local total_runs, total_err, total_ok, total_post = 0, 0, 0, 0
local all_problems = 0

for _, c in ipairs(cases) do
  -- The reference result: the operation without any fault.
  c.setup(c)
  local before = H.read(c.path)
  events = {}
  local r0, m0 = run_op(c)
  H.check(c.name .. ": runs without a fault", r0 ~= nil and r0 ~= false or c.name == "prune", m0)
  local expected = H.read(c.path)
  H.check(c.name .. ": the operation changes the file", expected ~= nil and expected ~= before)
  local calls
  do
    c.setup(c)
    run_op(c, function() core.fault(1000000, core.errno("EIO"), false) end)
    local _, seen = core.fault_state()
    core.fault(0)
    calls = seen
  end

  for _, fault in ipairs(FAULTS) do
    local problems, n_err, n_ok, n_post, N = {}, 0, 0, 0, 0
    local function problem(s)
      if #problems < 6 then problems[#problems + 1] = "N=" .. N .. " " .. s end
      all_problems = all_problems + 1
    end
    while true do
      N = N + 1
      if N > MAX_N then problem("operation still reaches the fault after " .. MAX_N .. " calls"); break end
      c.setup(c)
      events = {}
      local ok, r, msg, code = pcall(run_op, c, function()
        before = H.read(c.path)
        core.fault(N, fault.errno, fault.short)
      end)
      local _, _, hit = core.fault_state()
      core.fault(0)
      if not ok then
        problem("raised an error: " .. tostring(r))
      elseif not hit then
        -- ran to the end without reaching call N: the loop is over for this fault
        if r == nil then problem("failed without a fault: " .. tostring(msg)) end
        break
      end
      total_runs = total_runs + 1
      local after = H.read(c.path)
      local failed = ok and r == nil
      if ok and failed then
        n_err = n_err + 1
        if type(msg) ~= "string" or type(code) ~= "string" then
          problem("error is not nil, message, code: " .. tostring(msg) .. ", " .. tostring(code))
        end
        if fault.must_succeed then problem("a short write is not an error, got: " .. tostring(msg)) end
        if not fault.short and not tostring(msg):find("(" .. fault.name .. ")", 1, true) then
          problem("the message does not name the failure " .. fault.name .. ": [" .. tostring(code) .. "] " .. tostring(msg))
        end
        if after ~= before then
          if after == expected and code == "not_durable" and tostring(msg):find("file replaced, but", 1, true) then
            n_post = n_post + 1 -- published, then the directory fsync failed
          else
            problem("file changed by a failed call ([" .. tostring(code) .. "] " .. tostring(msg) .. ")")
          end
        elseif code == "not_durable" then
          problem("'not_durable' although the file was not replaced: " .. tostring(msg))
        end
      elseif ok then
        n_ok = n_ok + 1
        if not (fault.may_succeed or fault.must_succeed) then
          problem("succeeded although call " .. N .. " failed with " .. fault.name)
        end
        if after ~= expected then problem("succeeded but the file is not the expected new version") end
      end
      local left = leftovers(c)
      if #left > 0 then problem("left behind: " .. table.concat(left, " ")) end
      local leak = check_messages(c.name, msg, code)
      if leak then problem(leak) end
      -- The next normal call succeeds (from the state the faulted call left).
      events = {}
      local r2, m2
      if failed and after == before then
        r2, m2 = run_op(c)
        if r2 == nil then problem("next normal call failed: " .. tostring(m2))
        elseif H.read(c.path) ~= expected then problem("next normal call wrote something else") end
      else
        local s = open(c.path, c.now)
        r2, m2 = s:list_all()
        s:close()
        if r2 == nil then problem("next normal call failed: " .. tostring(m2)) end
      end
      left = leftovers(c)
      if #left > 0 then problem("left behind after the next call: " .. table.concat(left, " ")) end
      if H.mode(c.path) ~= "600" then problem("file mode " .. tostring(H.mode(c.path))) end
      if c.nested then
        for _, d in ipairs { c.top .. "/new1", c.top .. "/new1/new2" } do
          if H.mode(d) ~= "700" then problem(d:sub(#c.top + 2) .. " has mode " .. tostring(H.mode(d))) end
        end
      end
    end
    total_err, total_ok, total_post = total_err + n_err, total_ok + n_ok, total_post + n_post
    H.check(string.format("%s x %s: %d calls faulted, %d errors, %d recovered%s", c.name, fault.name,
      N - 1, n_err, n_ok, n_post > 0 and (", " .. n_post .. " failed after publishing") or ""),
      #problems == 0, table.concat(problems, "; "))
  end
  c.calls = calls
end

local fds_after = H.fds()
H.check("no descriptor leaked by the fault runs", table.concat(fds_before, " ") == table.concat(fds_after, " "),
  "before: " .. table.concat(fds_before, " ") .. " after: " .. table.concat(fds_after, " "))

H.rmrf(root)
print(string.format("fault loop: %d runs over %d operations x %d faults, %d errors returned, %d recovered, %d published-then-failed, %d broken promises",
  total_runs, #cases, #FAULTS, total_err, total_ok, total_post, all_problems))
H.finish()
