-- Shared by the heavy harnesses (spec/fault, spec/stress, spec/sanitize): counted checks,
-- directory listings, the canary secrets, and small process utilities. Each harness
-- prints one line per check and ends with "N passed, N failed".
local H = { passed = 0, failed = 0 }
-- Standalone on purpose (not spec/support/helpers.lua): it is loaded inside processes whose I/O is
-- failed from outside by fiu-run, where helpers' start-up (a `pwd` through popen) fails.

H.json = require("cjson").new()

function H.check(name, ok, detail)
  if ok then
    H.passed = H.passed + 1
    print("ok   " .. name)
  else
    H.failed = H.failed + 1
    print("FAIL " .. name .. (detail and (": " .. tostring(detail)) or ""))
  end
  io.stdout:flush()
  return ok
end

function H.finish()
  print(string.format("%d passed, %d failed", H.passed, H.failed))
  os.exit(H.failed == 0 and 0 or 1)
end

-- Ends the harness with a failed check unless pairstore.core is the fault-injection build
-- (LUA_CPATH=build-fault/?.so); returns its test hooks (core.test_hooks()) otherwise.
function H.need_fault_build(name)
  local core = require("pairstore.core").test_hooks()
  if not core.fault_state() then
    H.check(name .. ": the fault-injection build is loaded", false,
      "pairstore.core was not built with -DPS_FAULT_INJECTION (run with build-fault on LUA_CPATH)")
    H.finish()
  end
  return core
end

function H.q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- (the exit status through the output: a popen's close gives none on 5.1)
function H.sh(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"__rc=$?\"")
  local out = p:read("*a")
  p:close()
  local rc = tonumber(out:match("__rc=(%d+)%s*$"))
  out = out:gsub("__rc=%d+%s*$", "")
  return rc == 0, out, rc
end

function H.read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

function H.write(path, s)
  local f = assert(io.open(path, "wb"))
  assert(f:write(s))
  assert(f:close())
end

function H.ls(dir)
  local t = {}
  local p = io.popen("ls -A " .. H.q(dir) .. " 2>/dev/null")
  for l in p:lines() do t[#t + 1] = l end
  p:close()
  table.sort(t)
  return t
end

function H.mode(path)
  local _, out = H.sh("stat -c %a " .. H.q(path))
  return out:match("^(%d+)")
end

function H.tmpdir(tag)
  local p = io.popen("mktemp -d /tmp/pairstore-" .. (tag or "h") .. ".XXXXXX")
  local d = p:read("*l")
  p:close()
  return d
end

function H.rmrf(dir)
  os.execute("chmod -R u+rwx " .. H.q(dir) .. " 2>/dev/null; rm -rf " .. H.q(dir))
end

function H.pid()
  local s = H.read("/proc/self/stat")
  return tonumber(s:match("^(%d+)"))
end

--- Open descriptors of this process (link targets, sorted), not counting the listing's own.
function H.fds()
  local pid = H.pid()
  local t = {}
  local p = io.popen("for f in /proc/" .. pid .. "/fd/*; do readlink \"$f\"; done 2>/dev/null")
  for l in p:lines() do
    if not l:match("^pipe:") then t[#t + 1] = l end
  end
  p:close()
  table.sort(t)
  return t
end

-- The canary: a secret key and a code that must never show in any message, event or output.
H.CANARY_KEY = "pairstore-CANARY-secret-key-0042"   -- 32 bytes
assert(#H.CANARY_KEY == 32)
H.CANARY_CODE = "424242"

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
function H.b64u(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local k = c and 4 or b and 3 or 2
    for j = 1, k do
      local v = math.floor(n / 2 ^ (6 * (4 - j))) % 64
      out[#out + 1] = B64:sub(v + 1, v + 1)
    end
  end
  return table.concat(out)
end
H.CANARY_KEY_B64 = H.b64u(H.CANARY_KEY)

--- The rng hooks that plant the canary (and, optionally, a fixed sid of 16 bytes).
function H.canary_rng(sid16)
  return {
    secret_key = function() return H.CANARY_KEY end,
    code = function() return H.CANARY_CODE end,
    sid = sid16 and function() return sid16 end or nil,
  }
end

--- Where text leaks a canary: nil when clean, else what was found.
function H.leak(text)
  text = tostring(text)
  if text:find(H.CANARY_KEY_B64, 1, true) then return "canary key (base64url)" end
  if text:find(H.CANARY_KEY_B64:sub(1, 20), 1, true) then return "canary key prefix" end
  if text:find(H.CANARY_KEY, 1, true) then return "canary key (raw)" end
  if text:find(H.CANARY_CODE, 1, true) then return "canary code" end
  return nil
end

return H
