-- Faults from outside the process, on the production build:
--  * fiu-run -x (libfiu's POSIX preload) makes open, write, fsync and rename fail at random in
--    FIU_RUNS separate update processes; after each: a failed update left the file
--    byte-identical, a successful one added exactly 1; no temp file, no sentinel; at the end
--    the counter equals the number of acknowledged updates.
--  * a real EFBIG: ulimit -f below the size of the new file, SIGXFSZ ignored (trap '' XFSZ).
package.path = "spec/support/?.lua;spec/?.lua;" .. package.path
local H = require "fault.harness"

local RUNS = tonumber(os.getenv("FIU_RUNS")) or 150
local PROB = os.getenv("FIU_PROBABILITY") or "0.08"

local function one(path, args, prefix)
  local _, out = H.sh((prefix or "") .. " lua5.4 spec/fault/one_op.lua " .. H.q(path) .. " " .. args)
  return out
end

local function result(out)
  local ok = out:match("\nok (%S+)") or out:match("^ok (%S+)")
  local code, msg = out:match("err (%S+)\t([^\n]*)")
  return ok, code, msg
end

local function attempts(path)
  local ok, doc = pcall(H.json.decode, H.read(path) or "")
  return ok and doc.sessions and doc.sessions[1] and doc.sessions[1].secondaryCodeAttempts
end

---------------------------------------------------------------------------------------------
-- fiu-run
local have_fiu = H.sh("command -v fiu-run")
H.check("fiu-run is installed (package fiu-utils)", have_fiu)
if have_fiu then
  local dir = H.tmpdir("fiu")
  local path = dir .. "/pair-sessions.json"
  local sid = one(path, "seed"):match("^ok (%x+)")
  H.check("fiu: seed session", sid ~= nil)
  local points = { "posix/io/rw/write", "posix/io/sync/fsync", "posix/io/dir/rename", "posix/io/oc/open" }
  local enable = {}
  for _, p in ipairs(points) do enable[#enable + 1] = "-c " .. H.q("enable_random name=" .. p .. ",probability=" .. PROB) end
  local prefix = "fiu-run -x " .. table.concat(enable, " ")
  local acked, errors, problems, kinds, leaks, post = 0, 0, {}, {}, 0, 0
  for i = 1, RUNS do
    local before = H.read(path)
    local n0 = attempts(path)
    local out = one(path, "incr " .. sid, prefix)
    local ok, code, msg = result(out)
    local after = H.read(path)
    if H.leak(out) then leaks = leaks + 1; problems[#problems + 1] = i .. ": canary in output" end
    if ok then
      acked = acked + 1
      if attempts(path) ~= n0 + 1 then problems[#problems + 1] = i .. ": acknowledged but counter " .. tostring(attempts(path)) end
    elseif code then
      errors = errors + 1
      local k = msg:match("^(.-) /") or msg
      kinds[k] = (kinds[k] or 0) + 1
      if after ~= before and msg:find("file replaced, but", 1, true) then
        post = post + 1 -- published, then the directory fsync failed: counted, reported
        if attempts(path) ~= n0 + 1 then problems[#problems + 1] = i .. ": published update but counter " .. tostring(attempts(path)) end
      elseif after ~= before then
        problems[#problems + 1] = i .. ": failed update changed the file (" .. msg .. ")"
      end
    else
      problems[#problems + 1] = i .. ": no result: " .. out:sub(1, 200)
    end
    local left = H.ls(dir)
    if #left ~= 1 then problems[#problems + 1] = i .. ": left behind: " .. table.concat(left, " ") end
    if #problems > 8 then break end
  end
  local final = attempts(path)
  local klist = {}
  for k, v in pairs(kinds) do klist[#klist + 1] = k .. " x" .. v end
  table.sort(klist)
  H.check("fiu: every failed update left the file intact and nothing behind", #problems == 0, table.concat(problems, "; "))
  H.check("fiu: failures were injected (" .. table.concat(klist, ", ") .. ")", errors > 0 and acked > 0,
    errors .. " errors, " .. acked .. " acknowledged")
  H.check("fiu: counter equals acknowledged updates (+ those published before a failed directory fsync)",
    final == acked + post, tostring(final) .. " vs " .. acked .. " + " .. post)
  print(string.format("fiu: %d runs, %d acknowledged, %d failed (%d after publishing), counter %d, %d canary leaks",
    RUNS, acked, errors, post, math.tointeger(final) or -1, leaks))
  H.rmrf(dir)
end

---------------------------------------------------------------------------------------------
-- A real EFBIG from RLIMIT_FSIZE.
do
  local dir = H.tmpdir("efbig")
  local path = dir .. "/pair-sessions.json"
  local sid = one(path, "seed"):match("^ok (%x+)")
  local before = H.read(path)
  -- 8 KiB limit; the update makes the file ~40 KiB.
  local out = one(path, "big 40 " .. sid, "trap '' XFSZ; ulimit -f 8;")
  local ok, code, msg = result(out)
  H.check("efbig: update over the file size limit fails with nil, msg, code", ok == nil and code == "io" and msg and msg:find("EFBIG", 1, true) ~= nil, out)
  H.check("efbig: file byte-identical", H.read(path) == before)
  H.check("efbig: no temp file, no sentinel", #H.ls(dir) == 1, table.concat(H.ls(dir), " "))
  local out2 = one(path, "big 40 " .. sid)
  H.check("efbig: the same update succeeds without the limit", result(out2) == "1", out2)
  -- Control: without ignoring SIGXFSZ the kernel kills the writer (the limit is real).
  local _, o3 = H.sh("bash -c " .. H.q("ulimit -f 8; lua5.4 spec/fault/one_op.lua " .. H.q(path) .. " big 80 " .. sid .. "; echo status=$?"))
  H.check("efbig: control: the limit is real (SIGXFSZ kills a writer that does not ignore it)", o3:find("status=153", 1, true) ~= nil, o3)
  H.check("efbig: control: file still intact after the killed writer", attempts(path) == 1)
  print("efbig: " .. (msg or "?"))
  H.rmrf(dir)
end

H.finish()
