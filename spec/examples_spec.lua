-- Every script in examples/ runs to completion (exit 0) and prints what it promises, so the
-- examples cannot rot. Each one makes and removes its own temp directory.
local helpers = require "helpers"
local q = helpers.sh_quote

-- Key lines per example (Lua patterns, in order of appearance).
local EXPECT = {
  ["basic.lua"] = {
    "created  %x+  status awaiting_scan  code %d%d%d%d%d%d",
    "wrong code   %-> wrong_code",
    "right code   %-> device_connected",
    "consumed     %-> was device_connected, now consumed",
    "consume again %-> already_consumed",
    "list     %x+  consumed  sk=%[redacted%] code=%[redacted%]",
  },
  ["pairing_flow.lua"] = {
    "== 1%. Gateway: create a pairing session ==",
    "pairing URL:   https://pair%.example/pair%?sid=%x+#pk=[%w_-]+",
    "\226\150\136\226\150\136\226\150\136",
    "== 2%. Phone %(a separate " .. helpers.LUA:gsub("%p", "%%%0") .. " process%)",
    "%[phone%] entered code %d+: accepted, session is device_connected",
    "%[phone%] POST /respond {",
    "== 3%. Gateway: store:respond%(%)",
    "status:          consumed",
    "opened mnemonic: %l+ %l+ %l+ %l+ %l+ %l+ %l+ %l+ %l+ %l+ %l+ %l+\n",
    "matches what the phone sealed: yes",
    "the same response again:        already_consumed",
    "== 4%. Gateway: import the key, then mark the session completed ==",
    "status: completed",
    "== 5%. The store, as an operator sees it %(redacted%) ==",
    "%x+  completed  mode generate  code %[redacted%]  sk %[redacted%]",
    "pairing complete",
  },
  ["http_handler.lua"] = {
    "ok   start: code not 6 digits%s+%-> 400 bad_code",
    "ok   start: wrong code%s+%-> 403 wrong_code",
    "ok   start: right code%s+%-> 200 device_connected",
    "ok   respond: sealed mnemonic%s+%-> 200 completed",
    "ok   respond: the same body again%s+%-> 409 already_consumed",
    "ok   start: 5th wrong code%s+%-> 403 attempts_exhausted",
    "ok   respond: code never checked%s+%-> 409 not_device_connected",
    "ok   respond: does not decrypt%s+%-> 400 decrypt_failed",
    "ok   respond: expired session%s+%-> 410 expired",
    "all checks passed",
  },
  ["operator.lua"] = {
    "pruned: 1 ended session past retention removed",
    "active sessions: 3",
    "rejected stale session %x+ %(awaiting_scan for 20m00s%)",
    "rejected stale session %x+ %(device_connected for 12m00s%)",
    "stale %(older than 10 min%): 2 rejected",
    "by status: awaiting_scan 1, expired 1, rejected 2",
  },
}

local function examples()
  local names = {}
  for _, n in ipairs(helpers.ls(helpers.ROOT .. "/examples")) do
    if n:match("%.lua$") then names[#names + 1] = n end
  end
  return names
end

local function run(name, args)
  return helpers.run_split(string.format("cd %s && %s timeout 120 %s examples/%s %s", q(helpers.ROOT),
    helpers.LUA_ENV, helpers.LUA, name, args or ""))
end

describe("examples/", function()
  after_each(helpers.cleanup)

  it("has expectations for every example", function()
    local names = examples()
    assert.is_true(#names >= 4)
    for _, n in ipairs(names) do assert.is_table(EXPECT[n], "no expectations for examples/" .. n) end
  end)

  for name, patterns in pairs(EXPECT) do
    it(name .. " runs standalone, exits 0 and prints its key lines", function()
      local ok, out, err, rc = run(name)
      assert.are.equal(0, rc, err)
      assert.is_true(ok)
      local at = 1
      for _, p in ipairs(patterns) do
        local s, e = out:find(p, at)
        assert.is_truthy(s, ("examples/%s: %q not found (in order) in:\n%s"):format(name, p, out))
        at = e + 1
      end
      -- It removed the temp directory it announced (if it announced one).
      local tmp = out:match("(/tmp/pairstore%-[%w.-]+)/pair%-sessions%.json")
      if tmp then assert.is_false(helpers.exists(tmp)) end
    end)
  end

  it("pairing_flow.lua finds the modules without LUA_PATH/LUA_CPATH (from the source tree)", function()
    local ok, out, err = helpers.run_split(string.format(
      "cd / && env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 timeout 120 %s %s",
      helpers.LUA, q(helpers.ROOT .. "/examples/pairing_flow.lua")))
    assert.is_true(ok, err)
    assert.matches("pairing complete", out, 1, true)
  end)

  it("operator.lua works on a real sessions file given as an argument", function()
    local dir = helpers.tmpdir()
    local path = dir .. "/pair-sessions.json"
    local pairstore = require "pairstore"
    local store = pairstore.open(path, { durable = false })
    assert(store:create { operator = { channel = "web" } })
    local ok, out, err = run("operator.lua", q(path) .. " 10")
    assert.is_true(ok, err)
    assert.matches("active sessions: 1", out, 1, true)
    assert.matches("stale (older than 10 min): 0 rejected", out, 1, true)
    assert.matches("by status: awaiting_scan 1", out, 1, true)
  end)

  it("http_handler.lua can be loaded as a module without running its self-test", function()
    local h = dofile(helpers.ROOT .. "/examples/http_handler.lua")
    assert.is_function(h.start)
    assert.is_function(h.respond)
    assert.is_function(h.status)
    local dir = helpers.tmpdir()
    local store = require("pairstore").open(dir .. "/pair-sessions.json", { durable = false })
    local s = assert(store:create {})
    local status, body = h.start(store, { sid = s.sid, c = s.secondaryCode })
    assert.are.equal(200, status)
    assert.are.equal("device_connected", body.status)
    status, body = h.status(store, { sid = s.sid })
    assert.are.equal(200, status)
    assert.are.same({ status = "device_connected", mode = "generate", expires_in_ms = body.expires_in_ms }, body)
    assert.is_nil(body.secondaryCode)
  end)
end)
