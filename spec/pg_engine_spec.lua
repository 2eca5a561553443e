-- PostgreSQL engine details the behaviour specs do not reach: how a target is shown, the
-- server's clock, texts kept byte for byte through import/export, refusals that name the
-- session. Needs the private cluster `make test` starts (PAIRSTORE_TEST_PG).
local helpers = require "helpers"
local pairstore = require "pairstore"

local TARGET = os.getenv("PAIRSTORE_TEST_PG")
local n = 0
local function open(opts)
  assert(TARGET, "PAIRSTORE_TEST_PG is not set: run the suite with `make test` (it starts PostgreSQL)")
  n = n + 1
  opts = opts or {}
  opts.store = string.format("engine-%d-%d-%d", os.time(), n, math.random(1e9))
  return pairstore.open(TARGET, opts)
end

local function session_text(sid, extra)
  return helpers.session_text({
    sid = '"' .. sid .. '"', skGatewayB64 = '"AAAA"', pkGatewayB64 = '"BBBB"',
    createdAtMs = os.time() * 1000, expiresAtMs = os.time() * 1000 + 600000,
    operatorContext = '{"channel":"x"}', mode = '"import"', lastStatusChangeAtMs = 1,
  }, extra and (extra:gsub("^,", "")))
end

describe("PostgreSQL engine", function()
  it("shows a target without its password, ports or a dbname that could hold one", function()
    local s = pairstore.open("postgresql://gw:Sekr3t@db1,db2/pairstore?target_session_attrs=read-write",
                             { store = "prod" })
    assert.are.equal("postgresql://gw@db1,db2/pairstore (store prod)", s.path)
    local t = pairstore.open("pg:dbname=postgresql://u:Sekr3t@/db host=/nowhere")
    assert.falsy(t.path:find("Sekr3t", 1, true))
    assert.falsy(tostring(t):find("Sekr3t", 1, true))
  end)

  it("keeps the password out of a connection failure", function()
    local s = pairstore.open("postgresql://gw:Sekr3t@/pairstore?host=/nonexistent-dir", { connect_timeout_ms = 2000 })
    local r, msg, code = s:get(string.rep("a", 32))
    assert.is_nil(r)
    assert.are.equal("unavailable", code)
    assert.falsy(msg:find("Sekr3t", 1, true), msg)
  end)

  it("takes now from the database server unless the caller gives a clock", function()
    local s = open()
    local server = assert(s:now())
    assert.is_true(helpers.is_integer(server))
    assert.is_true(math.abs(server - os.time() * 1000) < 5000)
    local c = open { now = function() return 42 end }
    assert.are.equal(42, c:now())
  end)

  it("imports and exports session texts byte for byte, and a repeat adds nothing", function()
    local s = open()
    local texts = {
      session_text("s-1", ',"caf\\u00e9":"\\ud83d","big":12345678901234567890123,"n":[],"o":{},"f":2.50'),
      session_text("s-2", ',"z":{"b":1,"a":[1.0,1e3]}'),
    }
    assert.are.same({ 2, 0 }, { s:import(texts) })
    assert.are.same({ 0, 2 }, { s:import(texts) })
    local out = assert(s:export())
    table.sort(out)
    table.sort(texts)
    assert.are.same(texts, out)
    local r, msg, code = s:import { (texts[1]:gsub('"x"', '"y"')) }
    assert.is_nil(r)
    assert.are.equal("conflict", code)
    assert.truthy(msg:find("s-1", 1, true))
  end)

  it("refuses a text PostgreSQL cannot store, naming the session, and stores nothing", function()
    local s = open()
    local r, msg, code = s:import { session_text("ok-1"), session_text("bad-1", ',"x":"\255"') }
    assert.is_nil(r)
    assert.are.equal("invalid", code)
    assert.truthy(msg:find("bad-1", 1, true), msg)
    assert.are.same({}, s:export())
  end)
end)

describe("PostgreSQL engine round trips", function()
  local hooks = require("pairstore.core").test_hooks()
  it("reads in one round trip and changes in two", function()
    local s = open()
    local x = assert(s:create {})
    local function trips(f)
      local before = hooks.pg_roundtrips()
      assert(f())
      return hooks.pg_roundtrips() - before
    end
    assert.are.equal(1, trips(function() return s:get(x.sid) end))
    assert.are.equal(1, trips(function() return s:list_all() end))
    assert.are.equal(2, trips(function() return s:create {} end))
    assert.are.equal(2, trips(function() return s:update(x.sid, function(t) t.n = 1 end) end))
    assert.are.equal(2, trips(function() return s:verify_code(x.sid, x.secondaryCode) end))
    assert.are.equal(2, trips(function() return s:consume(x.sid) end))
  end)
end)

describe("PostgreSQL engine commit outcome", function()
  local hooks = require("pairstore.core").test_hooks()
  it("reports a commit whose answer was lost as the success it was", function()
    local events = {}
    local s = open { on_event = function(name) events[#events + 1] = name end }
    local x = assert(s:create {})
    assert(s:verify_code(x.sid, x.secondaryCode))
    hooks.pg_cut_commits(1)
    local before = assert(s:consume(x.sid))
    assert.are.equal("device_connected", before.status)
    assert.are.equal("consumed", assert(s:get(x.sid)).status)
    -- (the outcome is looked up on a new connection: the lost one was made again)
    assert.are.same({ "reconnected", "commit_confirmed" }, events)
    local r, _, code = s:consume(x.sid)
    assert.is_nil(r)
    assert.are.equal("already_consumed", code)
  end)
  helpers.cleanup()
end)

describe("PostgreSQL engine and SIGPIPE", function()
  it("a write on a connection the server closed does not kill the process (SIGPIPE left at its default)", function()
    local target = helpers.pg_target()
    local app = "pipe" .. math.random(1e9)
    local t = target .. (target:find("?", 1, true) and "&" or "?") .. "application_name=" .. app
    local dir = helpers.tmpdir()
    local pid = helpers.spawn_lua(string.format([[
      local pairstore = require "pairstore"
      local s = pairstore.open(%q, { store = %q, durable = false })
      local x = assert(s:create {})
      local f = io.open(%q, "w"); f:write("ready"); f:close()
      os.execute("sleep 1.5") -- the server ends this connection meanwhile
      local r1, _, c1 = s:get(x.sid)
      local r2, _, c2 = s:get(x.sid)
      print("alive", r1 ~= nil or c1, r2 ~= nil or c2)
    ]], t, "pipe-" .. app, dir .. "/ready"), dir .. "/out")
    assert(helpers.wait_file(dir .. "/ready", nil, 20))
    assert(helpers.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = "
      .. helpers.sql_literal(app)))
    local out = helpers.wait_file(dir .. "/out", function(c) return c:find("alive", 1, true) ~= nil end, 20)
    assert.truthy(out, "the child died: " .. tostring(helpers.read(dir .. "/out")) .. " alive=" .. tostring(helpers.alive(pid)))
    assert.truthy(out:find("alive\ttrue\ttrue", 1, true), out)
    helpers.cleanup()
  end)
end)

describe("PostgreSQL engine: a row whose text names another sid than its key", function()
  it("is invalid: read as absent with invalid_dropped, never returned, never written through", function()
    local events = {}
    local s = open { on_event = function(name, info) events[#events + 1] = { name, info.message, info.count } end }
    local a, b = assert(s:create {}), assert(s:create {})
    local store = s.path:match("%(store (.*)%)$")
    -- someone copies b's text into a's row (a hand edit, a restore of the wrong backup)
    assert(helpers.psql(("UPDATE pairstore_sessions SET body = (SELECT body FROM pairstore_sessions "
      .. "WHERE store = %s AND sid = %s) WHERE store = %s AND sid = %s"):format(helpers.sql_literal(store),
      helpers.sql_literal(b.sid), helpers.sql_literal(store), helpers.sql_literal(a.sid))))
    local function row(sid)
      local ok, out = helpers.psql(("SELECT body FROM pairstore_sessions WHERE store = %s AND sid = %s")
        :format(helpers.sql_literal(store), helpers.sql_literal(sid)))
      assert(ok, out)
      return out
    end
    local a_row, b_row = row(a.sid), row(b.sid)
    assert.are.equal(a_row, b_row)
    assert.are.same({ nil, "not_found", "not_found" }, { s:get(a.sid) })
    assert.are.equal("invalid_dropped", events[#events][1])
    assert.matches(a.sid, events[#events][2], 1, true)
    assert.are.equal(1, events[#events][3]) -- info.count, as the file store's
    local all = assert(s:list_all())
    assert.are.equal(1, #all)
    assert.are.equal(b.sid, all[1].sid)
    assert.are.equal(1, #assert(s:export()))
    assert.are.same({ nil, "not_found", "not_found" }, { s:verify_code(a.sid, b.secondaryCode) })
    local called = false
    assert.are.same({ nil, "not_found", "not_found" }, { s:update(a.sid, function() called = true end) })
    assert.is_false(called)
    assert.are.same({ nil, "not_found", "not_found" }, { s:consume(a.sid) })
    assert.are.same({ nil, "not_found", "not_found" }, { s:transition(a.sid, "rejected") })
    assert.are.equal(a_row, row(a.sid)) -- left as it is
    assert.are.equal(b_row, row(b.sid))
    assert.are.equal("awaiting_scan", assert(s:get(b.sid)).status)
  end)
end)

describe("PostgreSQL engine: several invalid rows read by one operation", function()
  it("make one invalid_dropped event whose info.count is how many (as the file store's)", function()
    local events = {}
    local s = open { on_event = function(name, info) events[#events + 1] = { name = name, info = info } end }
    local good, bad1, bad2, bad3 = assert(s:create {}), assert(s:create {}), assert(s:create {}), assert(s:create {})
    local store = s.path:match("%(store (.*)%)$")
    assert(helpers.psql(("UPDATE pairstore_sessions SET body = '[]' WHERE store = %s AND sid IN (%s, %s, %s)")
      :format(helpers.sql_literal(store), helpers.sql_literal(bad1.sid), helpers.sql_literal(bad2.sid),
        helpers.sql_literal(bad3.sid))))
    local all = assert(s:list_all())
    assert.are.equal(1, #all)
    assert.are.equal(good.sid, all[1].sid)
    assert.are.equal(1, #events)
    assert.are.equal("invalid_dropped", events[1].name)
    assert.are.equal(3, events[1].info.count)
    assert.matches("^3 sessions in the database are not valid sessions", events[1].info.message)
    -- one of them read alone: a count of 1, its sid named
    events = {}
    assert.are.same({ nil, "not_found", "not_found" }, { s:get(bad2.sid) })
    assert.are.equal(1, #events)
    assert.are.equal(1, events[1].info.count)
    assert.matches(bad2.sid, events[1].info.message, 1, true)
  end)
end)

describe("PostgreSQL engine: a caller's deadline (c:deadline, what store:wait sets)", function()
  it("is the next transaction's only, even when that one fails as reentrant", function()
    local core = require "pairstore.core"
    local s = open()
    local x = assert(s:create {})
    local inner
    assert(s:update(x.sid, function(t)
      s._core:deadline(core.mono_ms() + 1)
      inner = { s:get(x.sid) } -- reentrant: fails before the engine is asked anything
      t.n = 1
    end))
    assert.are.equal("reentrant", inner[3])
    core.sleep(0.05)
    assert.are.equal(1, assert(s:get(x.sid)).n) -- the outer commit, and this read, were not cut short
    s._core:deadline(core.mono_ms() + 1)
    core.sleep(0.05)
    local r, msg, code = s:get(x.sid) -- this one is: its deadline has passed
    assert.is_nil(r)
    assert.are.equal("timeout", code, msg)
    assert.is_table(s:get(x.sid)) -- and the next is not
  end)
end)
