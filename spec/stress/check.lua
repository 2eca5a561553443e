-- Checks for the stress harnesses (run by the scripts in spec/stress/).
--   check.lua chaos WORK PATH SID WORKERS T_START T_END
--   check.lua watch PATH            a coprocess: for each line read, check the file once
package.path = "spec/?.lua;" .. package.path
local H = require "fault.harness"
local json = H.json

local mode = arg[1]

local function load_file(path)
  local text = H.read(path)
  if not text then return nil, "missing" end
  local ok, doc = pcall(json.decode, text)
  if not ok then return nil, "does not parse: " .. tostring(doc):sub(1, 120) .. " (" .. #text .. " bytes)" end
  if type(doc) ~= "table" or doc.version ~= 1 or type(doc.sessions) ~= "table" then return nil, "wrong shape" end
  return doc, text
end

if mode == "chaos" then
  -- arg[4], arg[6], arg[7]: the sid and the run's start and end times (for the log)
  local work, path, workers = arg[2], arg[3], tonumber(arg[5])
  -- acknowledged increments and their timings
  local acked, errors, breaks = 0, {}, {}
  local max_op, max_wait, max_hold = 0, 0, 0
  for _, name in ipairs(H.ls(work .. "/acks")) do
    for line in io.lines(work .. "/acks/" .. name) do
      local t0, e, t1 = line:match("^A (%d+) (%d+) (%d+)$")
      local bt, bpid = line:match("^B (%d+) (%d+)")
      if t0 then
        t0, e, t1 = tonumber(t0), tonumber(e), tonumber(t1)
        acked = acked + 1
        max_op = math.max(max_op, t1 - t0)
        max_wait = math.max(max_wait, e - t0)
        max_hold = math.max(max_hold, t1 - e)
      elseif bt then
        breaks[#breaks + 1] = { t = tonumber(bt), pid = bpid }
      elseif line:match("^E ") then
        errors[#errors + 1] = line
      end
    end
  end
  -- Takeover: a killed holder's sentinel is broken by the next contender, which reports the
  -- dead pid in its lock_broken event. takeover = (event delivered) - (kill), an upper bound of
  -- how long anyone waited for that dead holder. A break naming a pid that was never killed
  -- would be a live holder broken.
  local killed_at, kills = {}, 0
  for line in io.lines(work .. "/kills") do
    local t, victim = line:match("^(%S+) (%d+)")
    if t then
      kills = kills + 1
      killed_at[victim] = math.floor(tonumber(t) * 1000)
    end
  end
  local holder_kills, max_takeover, stalls, live_broken = 0, 0, {}, {}
  for _, b in ipairs(breaks) do
    local k = killed_at[b.pid]
    if not k then
      live_broken[#live_broken + 1] = "pid " .. b.pid
    else
      holder_kills = holder_kills + 1
      max_takeover = math.max(max_takeover, b.t - k)
      if b.t - k > 1000 then stalls[#stalls + 1] = string.format("pid %s: taken over %d ms after the kill", b.pid, b.t - k) end
    end
  end
  local total_kills = kills + workers
  -- one more normal call, then the file and the directory
  local _, out = H.sh("lua5.4 spec/fault/one_op.lua " .. H.q(path) .. " list")
  H.check("chaos: one more normal call succeeds", out:match("^ok ") ~= nil or out:match("\nok ") ~= nil, out)
  local doc, why = load_file(path)
  H.check("chaos: the file parses", doc ~= nil, why)
  local counter = doc and doc.sessions[1] and math.tointeger(doc.sessions[1].secondaryCodeAttempts) or -1
  local dir = path:match("^(.*)/")
  local left = H.ls(dir)
  H.check("chaos: no temp, break or candidate file remains, no sentinel", #left == 1 and left[1] == "pair-sessions.json", table.concat(left, " "))
  H.check(string.format("chaos: counter %d within [acknowledged %d, acknowledged + kills %d]", counter, acked, acked + total_kills),
    counter >= acked and counter <= acked + total_kills)
  H.check("chaos: workers made progress", acked > 10 * workers, acked .. " increments")
  H.check("chaos: no store call failed (timeouts would show a stalled lock)", #errors == 0, table.concat(errors, " | ", 1, math.min(#errors, 5)))
  H.check("chaos: some kills hit the lock holder", holder_kills > 0, "0 of " .. kills)
  H.check("chaos: every killed holder was taken over within 1 s", #stalls == 0, table.concat(stalls, "; "))
  H.check("chaos: no live holder was ever broken", #live_broken == 0, table.concat(live_broken, ", "))
  print(string.format("chaos: %d increments, %d kills (%d while holding the lock), %d lost, max takeover %d ms, max op %d ms (max wait %d, max hold %d)",
    acked, total_kills, holder_kills, math.max(0, acked - counter), max_takeover, max_op, max_wait, max_hold))
  H.finish()
elseif mode == "watch" then
  -- Crash atomicity: after each kill the driver writes a line; the file must parse and be one
  -- complete version: every session intact and bigField made of the letter its counter names.
  local path = arg[2]
  local last = -1
  for line in io.lines() do
    local doc, why = load_file(path)
    local res
    if not doc then
      res = "torn " .. why
    else
      local s = doc.sessions[1]
      local n = s and math.tointeger(s.secondaryCodeAttempts)
      local big = s and s.bigField
      local letter = n and string.char(97 + n % 26)
      if not (n and type(big) == "string") then
        res = "torn: session incomplete"
      elseif #big ~= 1024 * 1024 or big:find("[^" .. letter .. "]") then
        res = "torn: bigField is not version " .. n
      elseif #doc.sessions ~= tonumber(line) then
        res = "torn: " .. #doc.sessions .. " sessions"
      elseif n < last then
        res = "torn: went back from version " .. last .. " to " .. n
      else
        last = n
        res = "ok " .. n
      end
    end
    io.write(res, "\n")
    io.flush()
  end
end
