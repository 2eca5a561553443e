-- basic.lua: the smallest useful pairstore session: create, check the phone's code,
-- consume, and list the store with the secrets redacted.
--
--   lua5.4 examples/basic.lua        (from a source tree after `make`, or with pairstore installed)

-- Run from a source tree (after `make`): use the tree's lua/ and build/ (examples/lib).
do
  local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
  local tree = loadfile(here .. "/lib/source_tree.lua")
  if tree then tree(here .. "/..") end
end

local pairstore = require "pairstore"

local tmp = io.popen("mktemp -d /tmp/pairstore-basic.XXXXXX"):read("*l")
local store = pairstore.open(tmp .. "/pair-sessions.json")

local function main()
  -- 1. The gateway starts a session for an operator on the CLI.
  local s = assert(store:create { mode = "generate", operator = { channel = "cli" } })
  print("created  " .. s.sid .. "  status " .. s.status .. "  code " .. s.secondaryCode)

  -- 2. The phone scanned the QR code and typed the code: a wrong one first, then the right one.
  local _, err = store:verify_code(s.sid, s.secondaryCode == "000000" and "111111" or "000000")
  print("wrong code   -> " .. err)
  local v = assert(store:verify_code(s.sid, s.secondaryCode))
  print("right code   -> " .. v.status .. " (attempts so far: " .. v.secondaryCodeAttempts .. ")")

  -- 3. The phone's payload arrived: consume the session (single use).
  local before = assert(store:consume(s.sid))
  print("consumed     -> was " .. before.status .. ", now " .. store:get(s.sid).status)
  local _, again = store:consume(s.sid)
  print("consume again -> " .. again)

  -- 4. The operator's view: every session, secrets redacted.
  for _, x in ipairs(assert(store:list_all())) do
    local r = pairstore.redact(x)
    print(string.format("list     %s  %-9s sk=%s code=%s", r.sid, r.status, r.skGatewayB64, r.secondaryCode))
  end
end

local ok, err = pcall(main)
store:close()
os.execute("rm -rf '" .. tmp .. "'")
if not ok then
  io.stderr:write("basic.lua: ", tostring(err), "\n")
  os.exit(1)
end
