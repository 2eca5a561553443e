-- The PostgreSQL backend through a connection pooler (issue 18): Debian's pgbouncer (1.18) in
-- front of the suite's private cluster (spec/support/pgbouncer.sh: a unix socket in a temp
-- dir of its own, auth trust, a pool of 3 server connections), in transaction and in session
-- pooling mode. 4 client processes x 40 pairings each (create, verify_code, consume,
-- transition to completed: what a gateway does), on the blocking path and on the deferred
-- path (pairstore.deferred, its round trips run by pairstore.thread, here driven
-- synchronously as nginx's worker threads would run them); store:wait through pgbouncer.
-- With named prepared statements, one client failed every operation with `prepared statement
-- "ps_clock" already exists` (42P05) in transaction mode: a server connection's state belongs
-- to whoever the pooler gives it to next. pgbouncer is stopped and removed after each mode,
-- also on failure. Without PAIRSTORE_TEST_PG every test here fails (none is skipped).
local pairstore = require "pairstore"
local helpers = require "helpers"
local q = helpers.sh_quote

local PGBOUNCER = "env -u LD_PRELOAD bash " .. q(helpers.ROOT .. "/spec/support/pgbouncer.sh")
local POOL = 3
local CLIENTS, PAIRINGS = 4, 40

-- Lua source prepended to every child: line-buffered output, a file-exists test, and
-- `deferred(store)`: the store's operations through pairstore.deferred with an environment
-- that runs pairstore.thread's functions right here (what an nginx worker thread does).
local PRELUDE = [[
io.stdout:setvbuf("line")
local function exists(p) local f = io.open(p) if f then f:close() return true end return false end
local function await(p) while not exists(p) do os.execute("sleep 0.005") end end
local function deferred(store)
  local thread = require "pairstore.thread"
  local env = {
    run = function(f, ...) return true, thread[f](...) end,
    sleep = function(s) os.execute("sleep " .. string.format("%.3f", s)) end,
    now = require("pairstore.core").mono_ms,
    exiting = function() return false end,
  }
  local d = require("pairstore.deferred").new(store._core, env,
    { size = 2, backlog = 8, wait_ms = 10000, lease_ms = 120000 })
  return {
    create = function(mode, op)
      return d:run("create", mode, op, require("pairstore.core").clamp_ttl(nil), nil, nil, nil)
    end,
    verify_code = function(sid, code) return d:run("verify_code", sid, code) end,
    consume = function(sid) return d:run("consume", sid) end,
    transition = function(sid, status) return d:run("transition", sid, status) end,
    get = function(sid) return d:run("get", sid) end,
    update = function(sid, fn) return d:run("update", sid, fn) end,
  }
end
]]

-- One pairing client: n pairings, each step checked; prints "done n failures" and the first
-- failures. path: "blocking" (the store's methods) or "deferred".
local CLIENT = [[
local store = require("pairstore").open(%q, { store = %q, durable = true, lock_wait_ms = 10000,
  connect_timeout_ms = 5000, statement_timeout_ms = 10000 })
local ops = %q == "deferred" and deferred(store) or {
  create = function(mode, op) return store:create { mode = mode, operator = op } end,
  verify_code = function(sid, code) return store:verify_code(sid, code) end,
  consume = function(sid) return store:consume(sid) end,
  transition = function(sid, status) return store:transition(sid, status) end,
  get = function(sid) return store:get(sid) end,
}
await(%q)
local failures, done = 0, 0
local function fail(step, msg, code)
  failures = failures + 1
  if failures <= 3 then print("FAIL " .. step .. " " .. tostring(code) .. " " .. tostring(msg)) end
end
for i = 1, %d do
  local s, msg, code = ops.create("generate", { channel = "web", accountId = "c%d-" .. i })
  if not s then fail("create", msg, code) else
    local v, vmsg, vcode = ops.verify_code(s.sid, s.secondaryCode)
    if not v or v.status ~= "device_connected" then fail("verify_code", vmsg, vcode) else
      local c, cmsg, ccode = ops.consume(s.sid)
      if not c or c.status ~= "device_connected" then fail("consume", cmsg, ccode) else
        local t, tmsg, tcode = ops.transition(s.sid, "completed")
        if not t or t.status ~= "completed" then fail("transition", tmsg, tcode) else
          local g, gmsg, gcode = ops.get(s.sid)
          if not g or g.status ~= "completed" then fail("get", gmsg, gcode) else done = done + 1 end
        end
      end
    end
  end
end
store:close()
print("done " .. done .. " " .. failures)
]]

local kids = {}

local function spawn(dir, name, code)
  local out = dir .. "/" .. name .. ".out"
  local pid, script = helpers.spawn_lua(PRELUDE .. code, out)
  local kid = { pid = pid, out = out, script = script, name = name }
  kids[#kids + 1] = kid
  return kid
end

local function reap()
  for i = #kids, 1, -1 do
    local k = kids[i]
    if helpers.alive(k.pid) then helpers.kill(k.pid, "KILL") end
    os.remove(k.script)
    kids[i] = nil
  end
end

-- The number of the store's sessions with status, read directly from the cluster.
local function count_status(store_name, status)
  local ok, out = helpers.psql("SELECT count(*) FROM pairstore_sessions WHERE store = "
    .. helpers.sql_literal(store_name) .. " AND status = " .. helpers.sql_literal(status))
  assert(ok, out)
  return tonumber(out:match("%d+"))
end

-- Whether this pairstore has the option listen_target (a direct target for LISTEN only).
-- (open connects to nothing: any PostgreSQL target will do)
local function has_listen_target()
  local t = "postgresql:///pairstore?host=/nonexistent"
  return (pcall(pairstore.open, t, { listen_target = t }))
end

for _, mode in ipairs { "transaction", "session" } do
  describe("PostgreSQL through pgbouncer (" .. mode .. " mode, pool of " .. POOL .. ")", function()
    local bdir, target

    setup(function()
      local p = io.popen("mktemp -d /tmp/pairstore-pgbouncer.XXXXXX")
      bdir = p:read("*l")
      p:close()
      local ok, out = helpers.run(PGBOUNCER .. " start " .. q(bdir) .. " " .. q(helpers.pg_dir()) .. " " .. mode
        .. " " .. POOL)
      assert(ok, "pgbouncer did not start: " .. out)
      target = out:match("(postgresql://%S+)")
      assert(target, out)
      -- The schema made once, before the clients start: several processes making it at
      -- once on a fresh database is another matter (one could fail with 42710, `type "pairstore_schema"
      -- already exists`, which the bootstrap did not take for "created meanwhile").
      local s = pairstore.open(target, { store = helpers.store_name("pgb-setup") })
      assert(s:list_all())
      s:close()
    end)

    teardown(function()
      reap()
      if bdir then helpers.run(PGBOUNCER .. " stop " .. q(bdir)) end
      helpers.cleanup()
    end)

    after_each(function()
      reap()
      helpers.cleanup()
    end)

    -- 4 processes, each 40 pairings on path, started together; every step succeeds.
    local function pairings(path)
      local name = helpers.store_name("pgb-" .. path)
      local dir = helpers.tmpdir()
      local ks = {}
      for i = 1, CLIENTS do
        ks[i] = spawn(dir, path .. i, CLIENT:format(target, name, path, dir .. "/go", PAIRINGS, i))
      end
      helpers.write(dir .. "/go", "")
      for _, k in ipairs(ks) do
        assert.is_truthy(helpers.wait_exit(k.pid, 120), k.name .. " still running: " .. tostring(helpers.read(k.out)))
      end
      for _, k in ipairs(ks) do
        local out = helpers.read(k.out) or ""
        assert.are.equal("done " .. PAIRINGS .. " 0", out:match("done %d+ %d+"), k.name .. ": " .. out)
      end
      -- what the clients were told is what the database holds
      assert.are.equal(CLIENTS * PAIRINGS, count_status(name, "completed"))
    end

    it("4 processes x 40 pairings each all succeed (the blocking path)", function()
      pairings("blocking")
    end)

    it("4 processes x 40 pairings each all succeed (the deferred path, driven synchronously)", function()
      pairings("deferred")
    end)

    it("the deferred path and the blocking path on one store, one session, no update lost", function()
      local name = helpers.store_name("pgb-mixed")
      local store = pairstore.open(target, { store = name, durable = true })
      local s = assert(store:create {})
      local dir = helpers.tmpdir()
      local ks = {}
      for i = 1, 4 do
        ks[i] = spawn(dir, "incr" .. i, ([[
          local store = require("pairstore").open(%q, { store = %q, lock_wait_ms = 20000 })
          local d = %s and deferred(store)
          await(%q)
          local acked = 0
          for _ = 1, 25 do
            local fn = function(x) x.counter = (x.counter or 0) + 1 end
            local r, msg, code
            if d then r, msg, code = d.update(%q, fn) else r, msg, code = store:update(%q, fn) end
            if not r then print("ERR " .. tostring(code) .. " " .. tostring(msg)) break end
            acked = acked + 1
          end
          print("acked " .. acked)
        ]]):format(target, name, i % 2 == 0 and "true" or "false", dir .. "/go",
          s.sid, s.sid))
      end
      helpers.write(dir .. "/go", "")
      local acked = 0
      for _, k in ipairs(ks) do
        assert.is_truthy(helpers.wait_exit(k.pid, 120), k.name .. " still running: " .. tostring(helpers.read(k.out)))
        local out = helpers.read(k.out) or ""
        acked = acked + assert(tonumber(out:match("acked (%d+)")), k.name .. ": " .. out)
        assert.is_nil(out:match("ERR"), k.name .. ": " .. out)
      end
      assert.are.equal(100, acked)
      assert.are.equal(100, assert(store:get(s.sid)).counter)
      store:close()
    end)

    if mode == "session" then
      it("store:wait wakes on a change (a session keeps its server connection and its LISTEN)", function()
        local where = { backend = "postgresql", target = target, store = helpers.store_name("pgb-wait") }
        local store = helpers.reopen(where)
        local s = assert(store:create {})
        local dir = helpers.tmpdir()
        local k = spawn(dir, "waiter", ([[
          local store = require("pairstore").open(%q, { store = %q })
          assert(store:get(%q))
          print("ready")
          local t0 = require("pairstore.core").mono_ms()
          local now, msg, code = store:wait(%q, { timeout_ms = 8000 })
          print(now and ("woke " .. now.status) or ("nil " .. tostring(code) .. " " .. tostring(msg)),
            require("pairstore.core").mono_ms() - t0)
        ]]):format(target, where.store, s.sid, s.sid))
        assert.is_truthy(helpers.wait_file(k.out, function(c) return c:find("ready") end, 20), "the waiter")
        helpers.sleep(0.5) -- (its watch is set up after its read)
        -- the change, directly on the cluster
        local direct = helpers.reopen({ backend = "postgresql", target = helpers.pg_target(), store = where.store })
        assert(direct:verify_code(s.sid, s.secondaryCode))
        assert.is_truthy(helpers.wait_exit(k.pid, 20))
        local out = helpers.read(k.out) or ""
        local ms = tonumber(out:match("woke device_connected%s+(%d+)"))
        assert.is_truthy(ms, out)
        assert.is_true(ms < 4000, out)
      end)
    else
      -- Transaction mode: LISTEN lives on a server connection that the pooler hands to the
      -- next transaction, and a NOTIFY reaches whoever holds it then.
      if has_listen_target() then
        it("store:wait wakes on a change with listen_target pointing at the cluster directly", function()
          local name = helpers.store_name("pgb-wait")
          local store = pairstore.open(target, { store = name })
          local s = assert(store:create {})
          local dir = helpers.tmpdir()
          local k = spawn(dir, "waiter", ([[
            local store = require("pairstore").open(%q, { store = %q, listen_target = %q })
            assert(store:get(%q))
            print("ready")
            local t0 = require("pairstore.core").mono_ms()
            local now, msg, code = store:wait(%q, { timeout_ms = 8000 })
            print(now and ("woke " .. now.status) or ("nil " .. tostring(code) .. " " .. tostring(msg)),
              require("pairstore.core").mono_ms() - t0)
          ]]):format(target, name, helpers.pg_target(), s.sid, s.sid))
          assert.is_truthy(helpers.wait_file(k.out, function(c) return c:find("ready") end, 20), "the waiter")
          helpers.sleep(0.5)
          assert(store:verify_code(s.sid, s.secondaryCode)) -- through pgbouncer
          assert.is_truthy(helpers.wait_exit(k.pid, 20))
          local out = helpers.read(k.out) or ""
          local ms = tonumber(out:match("woke device_connected%s+(%d+)"))
          assert.is_truthy(ms, out)
          assert.is_true(ms < 4000, out)
          store:close()
        end)
      end
      do
        -- Without a listen target, what a wait does through a pooler in transaction mode
        -- (docs/postgresql.md, "Through a connection pooler"): it ends by its deadline (a missed wake-up, not a hang or
        -- an error), and a read after it sees the change.
        it("store:wait without listen_target ends by its deadline; the change is read after", function()
          local name = helpers.store_name("pgb-wait")
          local store = pairstore.open(target, { store = name })
          local s = assert(store:create {})
          local dir = helpers.tmpdir()
          local k = spawn(dir, "waiter", ([[
            local store = require("pairstore").open(%q, { store = %q })
            assert(store:get(%q))
            print("ready")
            local t0 = require("pairstore.core").mono_ms()
            local now, msg, code = store:wait(%q, { timeout_ms = 3000 })
            print(now and ("woke " .. now.status) or ("nil " .. tostring(code) .. " " .. tostring(msg)),
              require("pairstore.core").mono_ms() - t0)
            local g = assert(store:get(%q))
            print("after " .. g.status)
          ]]):format(target, name, s.sid, s.sid, s.sid))
          assert.is_truthy(helpers.wait_file(k.out, function(c) return c:find("ready") end, 20), "the waiter")
          helpers.sleep(0.5)
          assert(store:verify_code(s.sid, s.secondaryCode))
          assert.is_truthy(helpers.wait_exit(k.pid, 20))
          local out = helpers.read(k.out) or ""
          local woke = tonumber(out:match("woke device_connected%s+(%d+)"))
          local timed = tonumber(out:match("nil timeout timeout%s+(%d+)"))
          assert.is_truthy(woke or timed, out)
          local ms = woke or timed
          -- (measured with 1.18: no notification reaches the waiter; at its deadline it reads
          -- once more and returns the changed session, 3 s after a change made at 0.5 s)
          io.stderr:write(("\n[pgbouncer transaction mode, no listen_target] store:wait(3000 ms), the change "
            .. "at about 500 ms: %s after %d ms (%s)\n"):format(woke and "returned the change" or "timed out", ms,
            ms >= 2500 and "the notification did not reach it: it ended at its deadline" or "woken"))
          assert.is_true(ms < 5000, out)
          assert.is_truthy(out:find("after device_connected", 1, true), out)
          store:close()
        end)
      end
    end
  end)
end
