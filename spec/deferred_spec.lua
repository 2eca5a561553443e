-- pairstore.deferred: a PostgreSQL store's operations with their round trips handed over (in
-- nginx to a worker thread; here run by the test itself, so each hand-over is seen): the
-- transaction stops with io_pending, runs again and replays what it did; its mutator runs
-- once; a caller that goes away leaves no row locked; the pool, the breaker, the janitor.
-- Against the suite's real PostgreSQL server.
local pairstore = require "pairstore"
local core = require "pairstore.core"
local thread = require "pairstore.thread"
local deferred = require "pairstore.deferred"
local helpers = require "helpers"

-- An environment whose round trips run here, counted; `hold` keeps the next one from
-- running (a request that went away while its round trip ran: it ran, nobody came back).
local function env_for(log)
  local timers = {}
  local env = {
    now = core.mono_ms,
    sleep = helpers.sleep,
    exiting = function() return false end,
    semaphore = function()
      return { wait = function(_, s) helpers.sleep(math.min(s, 0.05)); return false end, post = function() end,
        count = function() return 0 end }
    end,
    every = function(s, fn) timers[#timers + 1] = { s = s, fn = fn } end,
    timers = timers,
  }
  env.run = function(fname, ...)
    log[#log + 1] = fname
    return true, thread[fname](...)
  end
  return env
end

local function open(tag, opts)
  local o = { store = helpers.store_name(tag) }
  for k, v in pairs(opts or {}) do o[k] = v end
  return pairstore.open(helpers.pg_target(), o)
end

local function pool(store, env, o)
  o = o or {}
  return deferred.new(store._core, env, { size = o.size or 2, backlog = o.backlog or 2,
    wait_ms = o.wait_ms or 2000, lease_ms = o.lease_ms or 60000 })
end

local function psql(sql)
  local ok, out = helpers.psql(sql)
  assert(ok, out)
  return (out:gsub("%s+$", ""))
end

describe("pairstore.deferred", function()
  local store
  after_each(function()
    if store then store:close() end
    store = nil
    helpers.cleanup() -- (the temp directories, nothing left in /tmp)
  end)

  it("runs every operation with its round trips handed over: a read in one, a write in two", function()
    local log = {}
    store = open("ops")
    local d = pool(store, env_for(log))
    local s = assert(d:run("create", "generate", { channel = "web" }, 900000, nil, nil, nil))
    assert.are.equal(2, #log) -- begin + locks and reads, then the writes with COMMIT
    log = {}
    local d2 = pool(store, env_for(log))
    local got = assert(d2:run("get", s.sid))
    assert.are.same(s, got)
    assert.are.equal(1, #log)
    local r, msg, code = d2:run("verify_code", s.sid, s.secondaryCode == "000000" and "111111" or "000000")
    assert.are.same({ nil, "wrong_code", "wrong_code" }, { r, msg, code })
    local ok = assert(d2:run("verify_code", s.sid, s.secondaryCode))
    assert.are.equal("device_connected", ok.status)
    -- what the blocking path reads is what the deferred one wrote
    local b = assert(store:get(s.sid))
    assert.are.equal("device_connected", b.status)
    assert.are.equal(1, b.codeAttempts or 1)
    assert.are.same({ nil, "not_found", "not_found" }, { d2:run("get", ("a"):rep(32)) })
    assert.are.equal(1, #assert(d2:run("list", true)))
  end)

  it("runs a mutator once, in the caller's state, while the row is locked", function()
    local log = {}
    store = open("mut")
    local d = pool(store, env_for(log))
    local s = assert(store:create {})
    local calls, seen_locked = 0, nil
    local got = assert(d:run("update", s.sid, function(x)
      calls = calls + 1
      -- another connection cannot take the row meanwhile
      local ok, out = helpers.psql("SET lock_timeout = '100ms'; SELECT 1 FROM pairstore_sessions " ..
        "WHERE sid = '" .. s.sid .. "' FOR UPDATE")
      seen_locked = not ok and out:find("lock", 1, true) ~= nil
      x.note = "set"
      return x
    end))
    assert.are.equal(1, calls)
    assert.is_true(seen_locked)
    assert.are.equal("set", got.note)
    assert.are.equal("set", assert(store:get(s.sid)).note)
  end)

  it("leaves no transaction open when a mutator fails or returns what cannot be stored", function()
    store = open("fail")
    local d = pool(store, env_for({}))
    local s = assert(store:create {})
    local r, msg, code = d:run("update", s.sid, function() error("boom") end)
    assert.is_nil(r)
    assert.are.equal("callback", code)
    assert.truthy(msg:find("boom", 1, true))
    r, msg, code = d:run("update", s.sid, function() return 42 end)
    assert.are.same({ nil, "invalid" }, { r, code })
    assert.truthy(msg)
    assert.are.equal("0", psql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() " ..
      "AND state LIKE 'idle in transaction%'"))
    -- and the row is free: a blocking write goes through at once
    assert(store:transition(s.sid, "rejected"))
  end)

  it("waits for a row another process holds without holding a worker thread, then goes on", function()
    store = open("busy")
    local log = {}
    local d = pool(store, env_for(log))
    local s = assert(store:create {})
    local tmp = helpers.tmpdir()
    local pid = helpers.spawn_lua(([[
      local st = require("pairstore").open(%q, { store = %q })
      st:update(%q, function(x) os.execute("touch %s/held; sleep 1") end)
    ]]):format(helpers.pg_target(), store._pg.store, s.sid, tmp))
    assert.is_true(helpers.wait_for(function() return helpers.exists(tmp .. "/held") end, 10))
    local t0 = helpers.mono()
    local got = assert(d:run("transition", s.sid, "device_connected"))
    local waited = helpers.mono() - t0
    assert.are.equal("device_connected", got.status)
    assert.is_true(waited > 0.3, "waited " .. waited .. " s")
    assert.is_true(#log >= 3, "round trips: " .. #log) -- tried, slept, tried again
    helpers.wait_exit(pid, 10)
  end)

  it("gives the row back when the caller goes away after its round trip ran (the janitor)", function()
    store = open("gone")
    local log = {}
    local env = env_for(log)
    local d = pool(store, env)
    local s = assert(store:create {})
    -- a caller that stops after its first round trip (the row locked) and never comes back
    local h = assert(d:acquire(core.mono_ms() + 1000))
    local c = store._core
    c:wait_mode(1)
    c:use_engine(h)
    local r1 = { c:update(s.sid, function(x) return x end) }
    assert.are.equal("io_pending", r1[3])
    assert(thread.perform(h:link())) -- BEGIN ... FOR UPDATE ran: the row is locked now
    assert.are.equal("1", psql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() " ..
      "AND state LIKE 'idle in transaction%'"))
    -- the janitor takes it back once the finished round trip has waited long enough
    assert.are.equal(1, #env.timers)
    helpers.sleep(1.2)
    env.timers[1].fn()
    assert.are.equal("0", psql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() " ..
      "AND state LIKE 'idle in transaction%'"))
    assert(store:transition(s.sid, "rejected")) -- the row is free
    -- and the link serves the next caller
    assert.are.equal("rejected", assert(d:run("get", s.sid)).status)
  end)

  it("answers unavailable at once after a failed connect, then lets one caller try", function()
    store = pairstore.open("postgresql://nobody@127.0.0.1:1/none", { connect_timeout_ms = 500 })
    local d = pool(store, env_for({}))
    local r, msg, code = d:run("get", ("b"):rep(32))
    assert.are.same({ nil, "unavailable" }, { r, code })
    assert.truthy(msg:find("cannot connect", 1, true), msg)
    local t0 = core.mono_ms()
    r, msg, code = d:run("get", ("b"):rep(32))
    assert.are.same({ nil, "unavailable" }, { r, code })
    assert.truthy(msg:find("tries again within 250 ms", 1, true), msg)
    assert.is_true(core.mono_ms() - t0 < 50)
    -- after the back-off (250 ms), one caller tries the server again
    helpers.sleep(0.3)
    r, msg, code = d:run("get", ("b"):rep(32))
    assert.are.same({ nil, "unavailable" }, { r, code })
    assert.falsy(msg:find("tries again", 1, true), msg)
    r, msg, code = d:run("get", ("b"):rep(32))
    assert.are.same({ nil, "unavailable" }, { r, code })
    assert.truthy(msg:find("tries again within 500 ms", 1, true), msg)
  end)

  it("answers timeout when every link is taken and the backlog is full", function()
    store = open("full")
    local d = pool(store, env_for({}), { size = 1, backlog = 0 })
    local h = assert(d:acquire(core.mono_ms() + 100))
    local r, msg, code = d:run("get", ("c"):rep(32))
    assert.are.same({ nil, "timeout" }, { r, code })
    assert.truthy(msg:find("pool_size 1", 1, true))
    d:release(h)
    assert.are.same({ nil, "not_found", "not_found" }, { d:run("get", ("c"):rep(32)) })
  end)
end)

describe("for plugin authors", function()
  after_each(helpers.cleanup)
  it("pairstore.is_sid says what every method takes", function()
    assert.is_true(pairstore.is_sid(("0a"):rep(16)))
    assert.is_false(pairstore.is_sid(("0A"):rep(16)))
    assert.is_false(pairstore.is_sid(("0a"):rep(16) .. "\0"))
    assert.is_false(pairstore.is_sid(42))
    assert.is_false(pairstore.is_sid(nil))
  end)

  it("pairstore.check_options validates without raising", function()
    assert.is_true(pairstore.check_options("/tmp/x.json", { lock_wait_ms = 10 }))
    local ok, msg = pairstore.check_options("/tmp/x.json", { pool_size = 4 })
    assert.is_nil(ok)
    assert.are.equal("pairstore.open: option pool_size is for PostgreSQL stores only", msg)
    ok, msg = pairstore.check_options("postgresql://u@h/db", { pool_size = 0 })
    assert.is_nil(ok)
    assert.are.equal("pairstore.open: option pool_size must be an integer in [1, 10000]", msg)
    assert.is_true(pairstore.check_options("postgresql://u@h/db", { pool_size = 8, thread_pool = false }))
    assert.are.same({ nil, "target must be a non-empty string" }, { pairstore.check_options("", {}) })
  end)

  it("raises when a mutator yields (it runs under the lock), and changes nothing", function()
    local dir = helpers.tmpdir()
    local st = pairstore.open(dir .. "/s.json")
    local s = assert(st:create {})
    local co = coroutine.create(function()
      return st:update(s.sid, function(x) x.note = "no"; coroutine.yield() end)
    end)
    local ok, err = coroutine.resume(co)
    assert.is_false(ok)
    assert.truthy(tostring(err):find("a mutator may not yield", 1, true), err)
    assert.is_nil(assert(st:get(s.sid)).note)
    assert(st:transition(s.sid, "rejected")) -- nothing stays locked
    st:close()
  end)

  it("a call waiting on a lock when its store is closed ends with code closed", function()
    local dir = helpers.tmpdir()
    local path = dir .. "/s.json"
    local st
    st = pairstore.open(path, { sleep = function() st:close() end })
    local s = assert(st:create {})
    local holder = pairstore.open(path)
    local got
    assert(holder:update(s.sid, function(x)
      got = { st:get(s.sid) }
      return x
    end))
    -- (from inside the holder's mutator the same process gets "reentrant": use another process)
    assert.are.equal("reentrant", got[3])
    local tmp = helpers.tmpdir()
    local pid = helpers.spawn_lua(([[
      local h = require("pairstore").open(%q)
      h:update(%q, function(x) os.execute("touch %s/held; sleep 1") end)
    ]]):format(path, s.sid, tmp))
    assert.is_true(helpers.wait_for(function() return helpers.exists(tmp .. "/held") end, 10))
    assert.are.same({ nil, "the store was closed while this call waited", "closed" }, { st:get(s.sid) })
    helpers.wait_exit(pid, 10)
    holder:close()
  end)
end)

describe("in nginx's master (init_by_lua, about to fork the workers)", function()
  after_each(function()
    rawset(_G, "ngx", nil)
    helpers.cleanup() -- (the temp directories, nothing left in /tmp)
  end)

  it("keeps no parked lock sentinel after an operation (the workers would inherit it)", function()
    local dir = helpers.tmpdir()
    local st = pairstore.open(dir .. "/s.json")
    rawset(_G, "ngx", { get_phase = function() return "init" end, sleep = function() end })
    assert(st:create {})
    assert.are.same({}, helpers.ls_parked(dir))
    rawset(_G, "ngx", nil)
    assert(st:create {}) -- outside nginx a process keeps it, for speed
    assert.are.equal(1, #helpers.ls_parked(dir))
    st:close()
  end)

  it("makes the store's missing directories its parent's owner's when run as root", function()
    assert.is_true(helpers.is_root(), "this test runs as root (make test as root, as CI does)")
    local dir = helpers.tmpdir()
    assert(helpers.run("chown nobody:nogroup " .. helpers.sh_quote(dir)))
    local st = pairstore.open(dir .. "/a/b/s.json")
    assert.are.same({}, assert(st:list_all())) -- (a read makes them too)
    local ok, out = helpers.run("stat -c '%U:%G %a' " .. helpers.sh_quote(dir .. "/a") .. " " .. helpers.sh_quote(dir .. "/a/b"))
    assert(ok, out)
    assert.are.equal("nobody:nogroup 700\nnobody:nogroup 700", (out:gsub("%s+$", "")))
    st:close()
    -- and nobody can use the store there
    local _, env = helpers.readable_tree() -- (nobody may not read a tree under a 0700 directory)
    ok, out = helpers.run("runuser -u nobody -- env " .. env .. " " .. helpers.LUA .. " -e " ..
      helpers.sh_quote(("assert(require('pairstore').open(%q):create{})"):format(dir .. "/a/b/s.json")))
    assert(ok, out)
  end)
end)
