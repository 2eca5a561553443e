--- spec/ha/client.lua — one client of `make test-ha` (spec/ha/run.sh).
--
--   client.lua TARGET ID WORK
--
-- Loops until WORK/stop appears (or 60 s at most): creates a session, checks a wrong code,
-- then the right one, consumes it; every third step it also consumes a session another client
-- created (read from the other clients' logs), so that consumes of one sid race across
-- clients. The sid and the code of each create come from the `rng` hooks, so they are known
-- before the call and logged whatever its answer. Every operation is logged to WORK/logs/ID
-- as it returns, one line each, tab-separated:
--   phase  op  sid  ok|err  code-or-result  detail
-- phase: pre (before the primary is killed), switch (from the kill until 2 s after the
-- promotion), post. After an `outcome_unknown` answer the client reads the session back
-- (retrying until the server answers) and logs a `resolve` line with what it found.
-- Writes WORK/done-ID when it stops.
local pairstore = require "pairstore"
package.path = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local peers = require "peers"

local target, id, work = arg[1], arg[2], arg[3]
assert(target and id and work, "usage: client.lua TARGET ID WORK")

local fmt = string.format

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

local function phase()
  if exists(work .. "/settled") then return "post" end
  if exists(work .. "/killed") then return "switch" end
  return "pre"
end

local urandom = assert(io.open("/dev/urandom", "rb"))
local function random_bytes(n) return urandom:read(n) end
local function hex(s) return (s:gsub(".", function(c) return fmt("%02x", c:byte()) end)) end

local next_sid, next_code
local function new_code()
  local b = random_bytes(4)
  return fmt("%06d", ((b:byte(1) << 24 | b:byte(2) << 16 | b:byte(3) << 8 | b:byte(4)) % 1000000))
end

local store = pairstore.open(target, {
  max_sessions = 100000,
  rng = {
    sid = function() return next_sid end,
    code = function() return next_code end,
  },
})

local log = assert(io.open(work .. "/logs/" .. id, "w"))
log:setvbuf("line")
local function record(op, sid, ok, code, detail)
  log:write(table.concat({ phase(), op, sid, ok and "ok" or "err", code or "-", detail or "-" }, "\t"), "\n")
end

local function pause() os.execute("sleep 0.05") end

-- What is allowed to fail: the switch, and nothing else. Anything else is logged as it is
-- (check.lua fails the run on it).
local TRANSIENT = { unavailable = true, outcome_unknown = true }

-- Reads a session back after an outcome_unknown answer, until the server answers.
local function resolve(sid)
  for _ = 1, 400 do
    local s, _, code = store:get(sid)
    if s then
      record("resolve", sid, true, s.status, fmt("attempts=%d", s.secondaryCodeAttempts))
      return s
    elseif code == "not_found" then
      record("resolve", sid, true, "not_found")
      return nil
    end
    record("resolve", sid, false, code)
    pause()
  end
  return nil
end

-- One operation: logged; on a transient error a pause; on outcome_unknown a resolve.
-- Returns the value, the code and (after outcome_unknown) the session as read back.
local function op(name, sid, fn, detail_of)
  local v, _, code = fn()
  if v ~= nil then
    record(name, sid, true, "-", detail_of and detail_of(v) or nil)
    return v
  end
  record(name, sid, false, code)
  if code == "outcome_unknown" then return nil, code, resolve(sid) end
  if TRANSIENT[code] then pause() end
  return nil, code
end

-- Sessions other clients created (their logs' acknowledged creates), refreshed now and then.
local others = {}
local new_lines = peers(work, id)
local function refresh_others()
  new_lines(function(line)
    local o, sid, res = line:match("^%S+\t(%S+)\t(%x+)\t(%S+)")
    if o == "create" and res == "ok" then others[#others + 1] = sid end
  end)
end

local function wrong(code)
  local n = (tonumber(code) + 1 + (random_bytes(1):byte() % 999998)) % 1000000
  return fmt("%06d", n)
end

local deadline = os.time() + 60
local step = 0
while not exists(work .. "/stop") and os.time() < deadline do
  step = step + 1
  -- create, with a sid and a code chosen here
  next_sid, next_code = random_bytes(16), new_code()
  local sid, code = hex(next_sid), next_code
  local s, _, found = op("create", sid, function() return store:create { operator = { channel = "ha" } } end,
    function(v) return fmt("code=%s pk=%s", v.secondaryCode, v.pkGatewayB64) end)
  if s or found then
    -- a wrong code (counts an attempt), the right one, the consume; a step that failed with
    -- a transient error is tried once more
    local bad = wrong(code)
    for _, st in ipairs {
      { "verify_wrong", function() return store:verify_code(sid, bad) end },
      { "verify_right", function() return store:verify_code(sid, code) end },
      { "consume", function() return store:consume(sid) end },
    } do
      for _ = 1, 2 do
        local v, _, c = st[2]()
        if v ~= nil then
          record(st[1], sid, true, "-")
          break
        end
        record(st[1], sid, false, c)
        if c == "outcome_unknown" then resolve(sid) break end
        if not TRANSIENT[c] then break end
        pause()
      end
    end
  end
  if step % 3 == 0 then
    if step % 30 == 0 or #others == 0 then refresh_others() end
    if #others > 0 then
      local other = others[(random_bytes(1):byte() * 256 + random_bytes(1):byte()) % #others + 1]
      op("consume_other", other, function() return store:consume(other) end)
    end
  end
end
log:close()
store:close()
local done = assert(io.open(work .. "/done-" .. id, "w"))
done:write("done\n")
done:close()
