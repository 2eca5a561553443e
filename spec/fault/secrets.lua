-- Secrets: with a canary secret key and code planted through the rng hooks, no error message,
-- event, or CLI output may contain the key (raw, base64url, or a 20-character prefix of it) or
-- the code. Exercises the store's outcomes and failures and every CLI command, capturing all
-- of stdout and stderr. (The code is printed by `pairstore create` on purpose, to the
-- operator who made the session: that one output is checked for the key only.)
package.path = "spec/support/?.lua;spec/?.lua;" .. package.path
local H = require "fault.harness"
local pairstore = require "pairstore"

local dir = H.tmpdir("secrets")
local path = dir .. "/pair-sessions.json"
local captured = {}
local function capture(where, ...)
  local parts = {}
  for i = 1, select("#", ...) do parts[#parts + 1] = tostring((select(i, ...))) end
  captured[#captured + 1] = { where = where, text = table.concat(parts, " ") }
end

local now = 1764300000000
local store = pairstore.open(path, {
  rng = H.canary_rng(), now = function() return now end, lock_wait_ms = 300,
  on_event = function(name, info)
    for k, v in pairs(info) do capture("event " .. name .. "." .. k, v) end
  end,
})

-- The store's outcomes and failures.
local s = assert(store:create { operator = { channel = "secrets" } })
H.check("secrets: the canary is really in the session", s.skGatewayB64 == H.CANARY_KEY_B64 and s.secondaryCode == H.CANARY_CODE)
capture("verify wrong", store:verify_code(s.sid, "000000"))
capture("verify bad", store:verify_code(s.sid, "12"))
capture("consume", select(2, store:consume(s.sid)))
capture("consume again", store:consume(s.sid))
capture("transition illegal", store:transition(s.sid, "awaiting_scan"))
capture("get absent", store:get(string.rep("f", 32)))
capture("update raising", store:update(s.sid, function(x) error("mutator saw " .. x.sid) end))
capture("update invalid", store:update(s.sid, function(x) x.secondaryCode = "12" end))
capture("update non-finite", store:update(s.sid, function(x) x.extra = 0 / 0 end))
for _ = 1, 5 do capture("failed code", select(2, store:register_failed_code(s.sid))) end
-- a file cut right after the secret: quarantined
assert(store:create { operator = { channel = "secrets" } }) -- a second session in the file
local text = H.read(path)
local cut = text:find(H.CANARY_KEY_B64, 1, true) + #H.CANARY_KEY_B64 + 3
H.write(path, text:sub(1, cut))
capture("list after corruption", store:list_all())
-- a sentinel held by someone else: timeout message
H.write(path .. ".lock", "1\n")
capture("timeout", store:create {})
os.remove(path .. ".lock")
-- a reentrant call
local st = assert(store:create { operator = { channel = "secrets" } })
capture("reentrant", store:update(st.sid, function() capture("inner", store:get(st.sid)) end))
-- the file replaced by a directory, by a symlink
os.rename(path, path .. ".save")
os.execute("mkdir " .. H.q(path))
capture("directory", store:list_all())
os.execute("rmdir " .. H.q(path) .. "; ln -s " .. H.q(path .. ".save") .. " " .. H.q(path))
capture("symlink", store:list_all())
os.remove(path)
os.rename(path .. ".save", path)
capture("redacted", table.concat((function()
  local t = {}
  for k, v in pairs(pairstore.redact(st)) do t[#t + 1] = k .. "=" .. tostring(v) end
  return t
end)(), " "))

-- The CLI, every command, success and failure.
local cli = os.getenv("PAIRSTORE_CLI") or "bin/pairstore"
local have_cli = H.sh("test -x " .. H.q(cli))
local cli_runs = 0
if have_cli then
  -- sessions created with the canary by the library (the CLI's own create uses real randomness)
  local ids = {}
  local p2 = dir .. "/cli.json"
  local s3 = pairstore.open(p2, { rng = H.canary_rng() })
  for i = 1, 3 do ids[i] = assert(s3:create { operator = { channel = "cli" } }).sid end
  assert(s3:verify_code(ids[2], H.CANARY_CODE))
  local function run(args, where)
    local _, out = H.sh("PAIRSTORE_DEV=1 timeout 20 " .. cli .. " --file " .. H.q(p2) .. " " .. args .. " </dev/null")
    capture(where or ("cli " .. args), out)
    cli_runs = cli_runs + 1
    return out
  end
  run("list")
  run("list --all")
  run("list --json")
  run("list --all --json")
  for i = 1, 3 do run("show " .. ids[i]); run("show " .. ids[i]:sub(1, 6)) end
  run("show ffff")
  run("show " .. ids[1]:sub(1, 1) .. "zz")
  run("reject " .. ids[3])
  run("reject " .. ids[3])
  run("watch " .. ids[3])
  run("prune")
  run("create --ascii --url https://gw.example/pair") -- (create refuses without a URL base)
  local created = captured[#captured]
  created.key_only = true -- prints its own (random) code on purpose
  run("bogus")
  run("show")
  -- corrupt and hostile files
  local t3 = H.read(p2)
  H.write(p2, t3:sub(1, (t3:find(H.CANARY_KEY_B64, 1, true)) + 50))
  run("list --all")
  run("corrupt")
  run("corrupt --remove")
  H.write(p2, t3)
  os.execute("chmod 000 " .. H.q(p2))
  run("list --all", "cli list (unreadable file)")
  os.execute("chmod 600 " .. H.q(p2))
  H.write(p2 .. ".lock", "1\n")
  run("reject " .. ids[1], "cli reject (lock held)")
  os.remove(p2 .. ".lock")
  H.check("secrets: the CLI ran (" .. cli_runs .. " invocations)", cli_runs > 15)
else
  H.check("secrets: CLI " .. cli .. " present", false)
end

if os.getenv("SECRETS_VERBOSE") then for _, c in ipairs(captured) do print(c.where, (c.text:gsub("\n", " / "):sub(1, 160))) end end
local leaks = {}
for _, c in ipairs(captured) do
  local leak = H.leak(c.text)
  if leak and not (c.key_only and leak == "canary code") then
    leaks[#leaks + 1] = c.where .. ": " .. leak .. " in [" .. c.text:sub(1, 300) .. "]"
  end
end
H.check(string.format("secrets: no canary key or code in %d captured messages, events and CLI outputs", #captured), #leaks == 0, table.concat(leaks, "\n   "))
print(string.format("secrets: %d messages/events/outputs captured (%d CLI runs), %d leaks", #captured, cli_runs, #leaks))
H.rmrf(dir)
H.finish()
