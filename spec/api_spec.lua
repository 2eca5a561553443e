-- The module table: constants, pure helpers, argument checking.
local pairstore = require "pairstore"
local helpers = require "helpers"

describe("pairstore constants", function()
  it("are the reference's integers", function()
    assert.are.equal(1, pairstore.FILE_VERSION)
    assert.are.equal(900000, pairstore.DEFAULT_TTL_MS)
    assert.are.equal(300000, pairstore.MIN_TTL_MS)
    assert.are.equal(3600000, pairstore.MAX_TTL_MS)
    assert.are.equal(3600000, pairstore.TERMINAL_RETENTION_MS)
    assert.are.equal(5, pairstore.MAX_CODE_ATTEMPTS)
    assert.are.equal(30000, pairstore.LOCK_STALE_MS)
    assert.are.equal(10000, pairstore.LOCK_WAIT_MS)
    for _, k in ipairs { "FILE_VERSION", "DEFAULT_TTL_MS", "MIN_TTL_MS", "MAX_TTL_MS",
      "TERMINAL_RETENTION_MS", "MAX_CODE_ATTEMPTS", "LOCK_STALE_MS", "LOCK_WAIT_MS" } do
      assert.is_true(helpers.is_integer(pairstore[k]), k)
    end
    assert.matches("^%d+%.%d+%.%d+", pairstore._VERSION)
  end)

  it("defines no globals", function()
    local before = {}
    for k in pairs(_G) do before[k] = true end
    package.loaded["pairstore"] = nil
    require "pairstore"
    for k in pairs(_G) do assert.is_true(before[k], "new global " .. tostring(k)) end
  end)

  it("keeps the test-only hooks out of the module tables (core.test_hooks() gives them)", function()
    local core = require "pairstore.core"
    for _, k in ipairs { "_fault", "_fault_state", "_errno", "_fault_coarse_ctime", "_selfcheck" } do
      assert.is_nil(core[k], k)
    end
    local dir = helpers.tmpdir()
    local store = pairstore.open(dir .. "/s.json", { durable = false })
    assert.is_nil(getmetatable(store._core).__index._selfcheck)
    local hooks = core.test_hooks()
    for _, k in ipairs { "fault", "fault_state", "errno", "fault_coarse_ctime", "selfcheck" } do
      assert.are.equal("function", type(hooks[k]), k)
    end
    assert.is_false((hooks.fault_state())) -- this build injects no faults
    assert.is_true((hooks.selfcheck(store._core)))
    store:close()
    helpers.cleanup()
  end)

  it("ships no test hooks: the build make all installs has no core.test_hooks, nor its code", function()
    local so = ("%s/build/%s/pairstore/core.so"):format(helpers.ROOT, helpers.LUA)
    assert.is_true(helpers.exists(so), so .. " (make all builds it)")
    local ok, out = helpers.run(("cd / && env LUA_PATH=%s LUA_CPATH=%s %s -e %s"):format(
      helpers.sh_quote(helpers.ROOT .. "/lua/?.lua;" .. helpers.ROOT .. "/lua/?/init.lua;;"),
      helpers.sh_quote(helpers.ROOT .. "/build/" .. helpers.LUA .. "/?.so;;"), helpers.LUA,
      helpers.sh_quote([[
        local core = require "pairstore.core"
        local function find(name, path) -- (package.searchpath, which Lua 5.1 lacks)
          for tpl in path:gmatch("[^;]+") do
            local f = tpl:gsub("%?", (name:gsub("%.", "/")))
            local h = io.open(f)
            if h then h:close(); return f end
          end
        end
        local found = (package.searchpath or find)("pairstore.core", package.cpath)
        assert(found:find("/build/[^/]+/pairstore/core%.so$"), found)
        assert(not found:find("%-test/"), found)
        print("test_hooks " .. type(core.test_hooks) .. " " .. type(require("pairstore").open))
      ]])))
    assert.is_true(ok, out)
    assert.matches("test_hooks nil function", out)
    -- nor the hooks' code or names in the library
    local _, strings = helpers.run("strings " .. helpers.sh_quote(so) .. " | grep -c -E 'test_hooks|pg_cut_commits|selfcheck|fault_state'")
    assert.are.equal("0", strings:match("%d+"))
  end)
end)

describe("pairstore.clamp_ttl()", function()
  local cases = {
    { nil, 900000 }, { "600000", 900000 }, { {}, 900000 }, { 0, 900000 }, { -5, 900000 },
    { 0 / 0, 900000 }, { -1 / 0, 900000 }, { 1, 300000 }, { 299999, 300000 },
    { 300000, 300000 }, { 300001, 300001 }, { 900000, 900000 }, { 3599999, 3599999 },
    { 3600000, 3600000 }, { 3600001, 3600000 }, { 1 / 0, 3600000 }, { 1e300, 3600000 },
    { 450000.7, 450000 }, { 0.5, 300000 }, { helpers.compat.maxinteger, 3600000 },
  }
  for _, c in ipairs(cases) do
    it(("maps %s to %d"):format(tostring(c[1]), c[2]), function()
      local v = pairstore.clamp_ttl(c[1])
      assert.are.equal(c[2], v)
      assert.is_true(helpers.is_integer(v))
    end)
  end
end)

describe("pairstore.default_path()", function()
  it("appends pair-sessions.json", function()
    assert.are.equal("/var/lib/gw/pair-sessions.json", pairstore.default_path("/var/lib/gw"))
    assert.are.equal("/var/lib/gw/pair-sessions.json", pairstore.default_path("/var/lib/gw/"))
    assert.are.equal("rel/pair-sessions.json", pairstore.default_path("rel"))
  end)

  it("raises on a bad base_dir", function()
    assert.has_error(function() pairstore.default_path() end)
    assert.has_error(function() pairstore.default_path("") end)
    assert.has_error(function() pairstore.default_path(42) end)
  end)
end)

describe("pairstore.redact()", function()
  it("returns a copy with the secret key and code hidden", function()
    local s = { sid = "a", skGatewayB64 = "SECRET", pkGatewayB64 = "PUB", secondaryCode = "123456",
      operatorContext = { channel = "cli" } }
    local r = pairstore.redact(s)
    assert.are.equal("[redacted]", r.skGatewayB64)
    assert.are.equal("[redacted]", r.secondaryCode)
    assert.are.equal("PUB", r.pkGatewayB64)
    assert.are.equal("SECRET", s.skGatewayB64)
    assert.are.equal("123456", s.secondaryCode)
    r.operatorContext.channel = "changed"
    assert.are.equal("cli", s.operatorContext.channel)
  end)

  it("raises on a non-table", function()
    assert.has_error(function() pairstore.redact("x") end, "pairstore.redact: session must be a table")
  end)
end)

describe("pairstore.is_terminal()", function()
  it("knows the four terminal statuses", function()
    for _, s in ipairs { "completed", "consumed", "expired", "rejected" } do
      assert.is_true(pairstore.is_terminal(s))
    end
    for _, s in ipairs { "awaiting_scan", "device_connected", "something_new", "" } do
      assert.is_false(pairstore.is_terminal(s))
    end
    assert.has_error(function() pairstore.is_terminal(nil) end)
  end)
end)

describe("pairstore.pairing_url()", function()
  it("puts the sid in the query and the key only in the fragment", function()
    local url = pairstore.pairing_url("https://gw.example/pair",
      { sid = "00112233445566778899aabbccddeeff", pkGatewayB64 = "B6N8vBQgk8i3VdwbEOhstCY3StFqqFPtC9_AsrhtHHw" })
    assert.are.equal("https://gw.example/pair?sid=00112233445566778899aabbccddeeff#pk=B6N8vBQgk8i3VdwbEOhstCY3StFqqFPtC9_AsrhtHHw", url)
  end)
end)

describe("pairstore.open()", function()
  local dir
  before_each(function() dir = helpers.tmpdir() end)
  after_each(helpers.cleanup)

  it("touches nothing until the first operation", function()
    local store = pairstore.open(dir .. "/x/y/pair-sessions.json")
    assert.is_false(helpers.exists(dir .. "/x"))
    assert.are.equal(dir .. "/x/y/pair-sessions.json", store.path)
  end)

  it("makes a relative path absolute", function()
    local store = pairstore.open("spec-relative/pair-sessions.json")
    assert.are.equal(helpers.ROOT .. "/spec-relative/pair-sessions.json", store.path)
  end)

  it("raises at the caller's level on bad arguments", function()
    local ok, err = pcall(pairstore.open, 42)
    assert.is_false(ok)
    assert.matches("path must be a non%-empty string", err)
    assert.has_error(function() pairstore.open("") end)
    assert.has_error(function() pairstore.open(dir .. "/p", "nope") end)
    assert.has_error(function() pairstore.open(dir .. "/p", { durabel = true }) end)
    assert.has_error(function() pairstore.open(dir .. "/p", { now = 5 }) end)
    assert.has_error(function() pairstore.open(dir .. "/p", { lock_wait_ms = -1 }) end)
    assert.has_error(function() pairstore.open(dir .. "/p", { lock_wait_ms = 1.5 }) end)
    assert.has_error(function() pairstore.open(dir .. "/p", { max_sessions = 0 }) end)
    assert.has_error(function() pairstore.open(dir .. "/p", { rng = { sid = "x" } }) end)
    assert.has_error(function() pairstore.open(dir .. "/p", { rng = { salt = function() end } }) end)
    assert.has_error(function() pairstore.open(dir .. "/") end)
    -- the error names the caller's file, not pairstore's
    local _, e = pcall(function() pairstore.open(dir .. "/p", { bogus = 1 }) end)
    assert.matches("api_spec.lua", e)
  end)
end)

describe("pairstore.core (the C layer) checks its own arguments", function()
  after_each(helpers.cleanup)

  it("raises on a short secret key, a bad sid or a bad code instead of reading past them", function()
    local core = require "pairstore.core"
    local store = core.open(helpers.tmpdir() .. "/pair-sessions.json", { durable = false })
    local op = { channel = "cli" }
    assert.has_error(function() store:create("generate", op, 300000, nil, "short") end)
    assert.has_error(function() store:create("generate", op, 300000, "00112233", nil) end)
    assert.has_error(function() store:create("generate", op, 300000, nil, nil, "12345") end)
    assert.is_table(store:create("generate", op, 300000, nil, ("k"):rep(32), "123456"))
  end)

  it("holds the rules the Lua layer relies on: the sid check, the operator field limit, store names", function()
    local core = require "pairstore.core"
    local store = core.open(helpers.tmpdir() .. "/pair-sessions.json", { durable = false })
    -- the sid check and its messages (the Lua layer raises them at its caller's level)
    local ok, err = pcall(store.get, store, 42)
    assert.is_false(ok)
    assert.are.equal("pairstore.get: sid must be a string, got number", err)
    ok, err = pcall(store.consume, store, "0123456789ABCDEF0123456789abcdef")
    assert.is_false(ok)
    assert.are.equal('pairstore.consume: sid must be 32 lowercase hex characters, got "0123456789ABCDEF0123456789abcdef"', err)
    assert.is_nil(core.sid_error("get", ("ab"):rep(16)))
    assert.are.equal("pairstore.wait: sid must be a string, got nil", core.sid_error("wait", nil))
    -- each operator field is bounded here too, not only in the Lua layer
    local v, msg, code = store:create("generate", { channel = "cli", senderId = ("s"):rep(257) }, 300000)
    assert.is_nil(v)
    assert.are.equal("limit", code)
    assert.are.equal("operator.senderId is 257 bytes, above the limit of 256", msg)
    assert.is_table(store:create("generate", { channel = ("c"):rep(256) }, 300000))
    -- a PostgreSQL store's name (nothing connects at open)
    for _, bad in ipairs { "", ("n"):rep(201), "a\0b", "tab\there", "\127", "\255\254", "\237\160\128" } do
      ok, err = pcall(core.open, "postgresql://nobody@/db?host=/nonexistent", { store = bad })
      assert.is_false(ok, ("%q"):format(bad))
      assert.are.equal("pairstore.open: option store must be a name of 1 to 200 bytes of printable UTF-8", err)
    end
    assert.is_true((pcall(core.open, "postgresql://nobody@/db?host=/nonexistent", { store = "ünï " .. ("n"):rep(190) })))
  end)
end)

-- What open checks is the same on both backends; each refuses the other's own options.
for _, backend in ipairs(helpers.backends()) do
  describe("[" .. backend .. "] pairstore.open()", function()
    after_each(helpers.cleanup)

    local OWN = { file = { "lock_stale_ms", "max_file_bytes" },
      postgresql = { "store", "connect_timeout_ms", "statement_timeout_ms" } }
    local OTHER = backend == "file" and "postgresql" or "file"

    local function target()
      if backend == "file" then return helpers.tmpdir() .. "/pair-sessions.json" end
      return helpers.pg_target()
    end

    it("says which backend it is", function()
      local store = helpers.open_store(backend, { durable = false })
      assert.are.equal(backend, store:backend())
    end)

    it("raises at the caller's level on bad options", function()
      local t = target()
      for i, bad in ipairs {
        "nope", { durabel = true }, { now = 5 }, { lock_wait_ms = -1 }, { lock_wait_ms = 1.5 },
        { max_sessions = 0 }, { rng = { sid = "x" } }, { rng = { salt = function() end } },
        { durable = "yes" }, { on_event = true },
      } do
        local ok, err = pcall(function() local s = pairstore.open(t, bad); return s end)
        assert.is_false(ok, "case " .. i)
        assert.matches("api_spec.lua", tostring(err), nil, nil, "case " .. i)
      end
    end)

    it("refuses the options of the other backend, and takes its own", function()
      local t = target()
      for _, k in ipairs(OWN[OTHER]) do
        local ok, err = pcall(function() local s = pairstore.open(t, { [k] = k == "store" and "x" or 1000 }); return s end)
        assert.is_false(ok, k .. " accepted for a " .. backend .. " target")
        assert.matches(k, tostring(err), 1, true)
        assert.matches("api_spec.lua", tostring(err))
      end
      for _, k in ipairs(OWN[backend]) do
        local s = pairstore.open(t, { [k] = k == "store" and helpers.store_name() or 60000 })
        s:close()
      end
    end)

    it("works with the common options", function()
      local events = {}
      local store = helpers.open_store(backend, { durable = true, lock_wait_ms = 5000, max_sessions = 2,
        max_session_bytes = 4096, now = function() return 1764300000000 end,
        on_event = function(name) events[#events + 1] = name end })
      local s = assert(store:create {})
      assert.are.equal(1764300000000, s.createdAtMs)
      assert(store:create {})
      assert.are.equal("limit", select(3, store:create {}))
      assert.are.equal("limit", select(3, store:update(s.sid, function(x) x.b = ("b"):rep(5000) end)))
      assert.are.same({}, events)
    end)
  end)
end

describe("the rockspec", function()
  it("builds every C file the Makefile ships (but the test hooks and the PG=0/QR=0 stand-ins)", function()
    local rockspec = helpers.read(helpers.ROOT .. "/pairstore-scm-1.rockspec")
    local listed = {}
    for f in rockspec:gmatch('"(csrc/[%w_/]+%.c)"') do listed[f] = true end
    local p = io.popen("cd " .. helpers.sh_quote(helpers.ROOT) .. " && ls csrc/*.c csrc/engine/file/*.c")
    local missing, extra = {}, {}
    for f in p:lines() do
      local not_shipped = f == "csrc/testhooks.c" or f == "csrc/pg_none.c" or f == "csrc/qr_none.c"
      if not not_shipped and not listed[f] then missing[#missing + 1] = f end
      if not_shipped and listed[f] then extra[#extra + 1] = f end
      listed[f] = nil
    end
    p:close()
    for f in pairs(listed) do extra[#extra + 1] = f end
    assert.are.same({}, missing)
    assert.are.same({}, extra)
  end)

  it("installs every Lua module of the tree, each under its name", function()
    local rockspec = helpers.read(helpers.ROOT .. "/pairstore-scm-1.rockspec")
    local listed = {}
    for name, f in rockspec:gmatch('%["([%w_.]+)"%] = "(lua/[%w_/]+%.lua)"') do listed[f] = name end
    local p = io.popen("cd " .. helpers.sh_quote(helpers.ROOT) .. " && find -L lua -name '*.lua' | sort")
    local missing = {}
    for f in p:lines() do
      local name = f:gsub("^lua/", ""):gsub("/init%.lua$", ""):gsub("%.lua$", ""):gsub("/", ".")
      if listed[f] ~= name then missing[#missing + 1] = f .. " as " .. name end
      listed[f] = nil
    end
    p:close()
    assert.are.same({}, missing)
    assert.are.same({}, listed)
  end)
end)
