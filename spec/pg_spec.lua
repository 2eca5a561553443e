-- The PostgreSQL backend with real processes and a real server (the private cluster that
-- `make test` starts through spec/support/with-pg.sh): many hosts as separate processes with
-- their own connections, a client killed inside its mutator, the server stopped, SIGSTOPped
-- and cut off at COMMIT, the schema and its rights, secrets in targets, fork, and the row-lock
-- wait. Every test uses a store name of its own; every wait is bounded. Without
-- PAIRSTORE_TEST_PG every test here fails (none is skipped).
local pairstore = require "pairstore"
local helpers = require "helpers"
local json = helpers.json
local q = helpers.sh_quote

local PGCLUSTER = helpers.PGCLUSTER

local function ctl(args)
  return helpers.run(PGCLUSTER .. " ctl " .. q(helpers.pg_dir()) .. " " .. args)
end

local function server_running()
  return (ctl("status >/dev/null"))
end

-- Start the server again if a test stopped it (always, from a finally).
local function ensure_running()
  if not server_running() then
    local ok, out = ctl("start -w -t 60")
    assert(ok, "could not restart the test server: " .. out)
  end
end

local function postmaster_pid()
  local ok, out = helpers.run(PGCLUSTER .. " pid " .. q(helpers.pg_dir()))
  assert(ok, out)
  return assert(tonumber(out:match("%d+")), out)
end

-- The postmaster and every process it started (backends, checkpointer, wal writer, ...).
local function server_pids()
  local pm = postmaster_pid()
  local _, out = helpers.run("env -u LD_PRELOAD pgrep -P " .. pm) -- (pgrep deadlocks under the ASan runtime)
  local pids = { pm }
  for p in out:gmatch("%d+") do pids[#pids + 1] = tonumber(p) end
  return pids
end

local function signal_all(pids, sig)
  os.execute("kill -" .. sig .. " " .. table.concat(pids, " ") .. " 2>/dev/null")
end

-- One SQL value from the test database (as the superuser).
local function sql1(sql)
  local ok, out = helpers.psql(sql)
  assert(ok, out)
  return (out:gsub("\n$", ""))
end

local function open(opts)
  local o = { durable = false }
  for k, v in pairs(opts or {}) do o[k] = v end
  return helpers.open_store("postgresql", o)
end

-- The target of the test database with another database and user (and password).
local function target_for(db, user, password)
  local host = assert(helpers.pg_target():match("host=([^&]+)"), "no host= in PAIRSTORE_TEST_PG")
  return ("postgresql://%s%s@/%s?host=%s"):format(user, password and (":" .. password) or "", db, host)
end

local function rand_hex(n)
  local f = assert(io.open("/dev/urandom", "rb"))
  local r = f:read(n)
  f:close()
  return (r:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

-- Children ------------------------------------------------------------------------------------

-- Lua source, prepended to every child: line-buffered output and a file-exists test.
local PRELUDE = [[
io.stdout:setvbuf("line")
local function exists(p) local f = io.open(p) if f then f:close() return true end return false end
local function await(p) while not exists(p) do os.execute("sleep 0.005") end end
]]

local kids_of_test = {}

local function spawn(dir, name, code)
  local out = dir .. "/" .. name .. ".out"
  local pid, script = helpers.spawn_lua(PRELUDE .. code, out)
  local kid = { pid = pid, out = out, script = script, name = name }
  kids_of_test[#kids_of_test + 1] = kid
  return kid
end

local function lines_of(kid)
  local t = {}
  for l in (helpers.read(kid.out) or ""):gmatch("[^\n]+") do t[#t + 1] = l end
  return t
end

local function wait_kids(kids, timeout_s)
  for _, k in ipairs(kids) do
    assert.is_truthy(helpers.wait_exit(k.pid, timeout_s or 60),
      k.name .. " still running; its output: " .. tostring(helpers.read(k.out)))
  end
end

local function reap_kids()
  for i = #kids_of_test, 1, -1 do
    local k = kids_of_test[i]
    if helpers.alive(k.pid) then helpers.kill(k.pid, "KILL") end
    os.remove(k.script)
    kids_of_test[i] = nil
  end
end

local function cleanup()
  reap_kids()
  helpers.cleanup()
end

-- Wait until pred(lines) holds for every kid's output; bounded.
local function await_output(kids, pred, timeout_s, what)
  local ok = helpers.wait_for(function()
    for _, k in ipairs(kids) do
      if not pred(lines_of(k)) then return false end
    end
    return true
  end, timeout_s or 30)
  if not ok then
    local outs = {}
    for _, k in ipairs(kids) do outs[#outs + 1] = k.name .. ": " .. tostring(helpers.read(k.out)) end
    error("timed out waiting for " .. (what or "the children") .. "\n" .. table.concat(outs, "\n"), 2)
  end
end

-- Tests ---------------------------------------------------------------------------------------

describe("PostgreSQL: many hosts (separate processes, own connections)", function()
  after_each(cleanup)

  it("a consume race has exactly one winner, every round (8 processes x 10 rounds)", function()
    local store, where = open()
    local N, ROUNDS = 8, 10
    local sids = {}
    for r = 1, ROUNDS do
      local s = assert(store:create {})
      assert(store:verify_code(s.sid, s.secondaryCode))
      sids[r] = ("%q"):format(s.sid)
    end
    local dir = helpers.tmpdir()
    local kids = {}
    for i = 1, N do
      kids[i] = spawn(dir, "consumer" .. i, ([[
        local store = %s
        assert(store:list_active()) -- connected before the race starts
        print("ready")
        for r, sid in ipairs { %s } do
          await(%q .. r)
          local s, _, code = store:consume(sid)
          print(r .. " " .. (s and ("WON " .. s.status) or tostring(code)))
        end
      ]]):format(helpers.open_expr(where, "lock_wait_ms = 30000"), table.concat(sids, ", "), dir .. "/go."))
    end
    await_output(kids, function(l) return l[1] == "ready" end, 60, "the consumers to connect")
    for r = 1, ROUNDS do
      helpers.write(dir .. "/go." .. r, "")
      await_output(kids, function(l) return #l >= r + 1 end, 60, "round " .. r)
    end
    wait_kids(kids)
    for r = 1, ROUNDS do
      local won, lost = 0, 0
      for i = 1, N do
        local line = lines_of(kids[i])[r + 1]
        if line == r .. " WON device_connected" then won = won + 1
        elseif line == r .. " already_consumed" then lost = lost + 1
        else error("round " .. r .. ", consumer " .. i .. ": " .. tostring(line)) end
      end
      assert.are.equal(1, won, "round " .. r .. ": winners")
      assert.are.equal(N - 1, lost, "round " .. r)
      assert.are.equal("consumed", helpers.stored(where, sids[r]:sub(2, -2)).status)
    end
  end)

  it("loses no update: 6 processes x 40 increments of one session", function()
    local store, where = open()
    local s = assert(store:create {})
    local dir = helpers.tmpdir()
    local kids = {}
    for i = 1, 6 do
      kids[i] = spawn(dir, "incr" .. i, ([[
        local store = %s
        assert(store:get(%q))
        await(%q)
        local acked = 0
        for _ = 1, 40 do
          local r, msg, code = store:update(%q, function(x) x.counter = (x.counter or 0) + 1 end)
          if not r then print("ERR " .. tostring(code) .. " " .. tostring(msg)) os.exit(1) end
          acked = acked + 1
        end
        print("acked " .. acked)
      ]]):format(helpers.open_expr(where, "lock_wait_ms = 60000"), s.sid, dir .. "/go", s.sid))
    end
    helpers.write(dir .. "/go", "")
    wait_kids(kids, 120)
    local acked = 0
    for _, k in ipairs(kids) do
      local out = helpers.read(k.out) or ""
      assert.matches("acked 40", out, nil, true, k.name .. ": " .. out)
      acked = acked + 40
    end
    assert.are.equal(240, acked)
    assert.are.equal(240, store:get(s.sid).counter)
    assert.are.equal(240, helpers.stored(where, s.sid).counter)
  end)

  it("creates racing at max_sessions never exceed it (8 processes x 4 creates, max 10; 3 rounds)", function()
    for round = 1, 3 do
      local store, where = open({ max_sessions = 10 })
      local dir = helpers.tmpdir()
      local kids = {}
      for i = 1, 8 do
        kids[i] = spawn(dir, "creator" .. round .. "." .. i, ([[
          local store = %s
          assert(store:list_all())
          print("ready")
          await(%q)
          for _ = 1, 4 do
            local s, _, code = store:create {}
            print(s and "OK" or tostring(code))
          end
        ]]):format(helpers.open_expr(where, "max_sessions = 10, lock_wait_ms = 30000"), dir .. "/go"))
      end
      await_output(kids, function(l) return l[1] == "ready" end, 60, "the creators to connect")
      helpers.write(dir .. "/go", "")
      wait_kids(kids)
      local ok, limit = 0, 0
      for _, k in ipairs(kids) do
        for n, l in ipairs(lines_of(k)) do
          if n > 1 then
            if l == "OK" then ok = ok + 1
            elseif l == "limit" then limit = limit + 1
            else error(k.name .. ": " .. l) end
          end
        end
      end
      assert.are.equal(10, ok, "round " .. round .. ": sessions created")
      assert.are.equal(22, limit, "round " .. round)
      assert.are.equal(10, #store:list_active())
      assert.are.equal("10", sql1("SELECT count(*) FROM pairstore_sessions WHERE store = " ..
        helpers.sql_literal(where.store) .. " AND live"))
    end
  end)

  it("mixed create/verify/consume/reject/prune traffic keeps every rule (6 processes)", function()
    local T0 = 1764300000000
    local store, where = open({ now = function() return T0 end, max_sessions = 50 })
    local sids, codes = {}, {}
    for i = 1, 24 do
      local s = assert(store:create {})
      if i % 2 == 0 then assert(store:verify_code(s.sid, s.secondaryCode)) end
      sids[#sids + 1], codes[#codes + 1] = ("%q"):format(s.sid), ("%q"):format(s.secondaryCode)
    end
    local dir = helpers.tmpdir()
    local kids = {}
    for i = 1, 6 do
      -- each host's clock runs on (sessions expire, then pass their retention and are pruned)
      kids[i] = spawn(dir, "mixed" .. i, ([[
        math.randomseed(%d)
        local t = %d
        local store = %s
        local sids, codes, mine = { %s }, { %s }, {}
        await(%q)
        local OK = { already_consumed = true, expired = true, not_found = true, rejected = true,
          wrong_code = true, attempts_exhausted = true, illegal_transition = true, limit = true,
          not_device_connected = true }
        local function check(what, r, msg, code)
          if r == nil and not OK[code] then print("BAD " .. what .. " " .. tostring(code) .. " " .. tostring(msg)) end
          return r
        end
        for op = 1, 60 do
          t = t + 90000
          local k = math.random(#sids)
          local c = math.random(7)
          if c == 1 then
            local s = check("create", store:create {})
            if s then mine[#mine + 1] = s.sid end
          elseif c == 2 then
            check("verify", store:verify_code(sids[k], codes[k]))
          elseif c == 3 or c == 4 then
            local s = check("consume", store:consume(sids[k]))
            if s then print("WON " .. sids[k] .. " " .. s.status) end
          elseif c == 5 then
            local n = store:prune()
            if not require("pairstore.compat").is_integer(n) then print("BAD prune " .. tostring(n)) end
          elseif c == 6 and #mine > 0 then
            check("reject", store:reject(mine[math.random(#mine)]))
          else
            local l = store:list_active()
            if type(l) ~= "table" then print("BAD list " .. tostring(l)) end
          end
        end
        print("done")
      ]]):format(i, T0, helpers.open_expr(where, "max_sessions = 50, lock_wait_ms = 30000, now = function() return t end"),
        table.concat(sids, ", "), table.concat(codes, ", "), dir .. "/go"))
    end
    helpers.write(dir .. "/go", "")
    wait_kids(kids, 120)
    local won = {}
    for _, k in ipairs(kids) do
      local out = lines_of(k)
      assert.are.equal("done", out[#out], k.name .. ": " .. tostring(helpers.read(k.out)))
      for _, l in ipairs(out) do
        assert.is_nil(l:match("^BAD"), k.name .. ": " .. l)
        local sid, status = l:match("^WON (%x+) (%S+)$")
        if sid then
          assert.is_nil(won[sid], "consumed twice: " .. sid)
          won[sid] = true
          assert.is_truthy(status == "awaiting_scan" or status == "device_connected", l)
        end
      end
    end
    -- what is stored is consistent: every body valid JSON, live = not terminal
    local ok, out = helpers.psql("SELECT status || ' ' || live || ' ' || body FROM pairstore_sessions " ..
      "WHERE store = " .. helpers.sql_literal(where.store))
    assert(ok, out)
    for line in out:gmatch("[^\n]+") do
      local status, live, body = line:match("^(%S+) (%S+) (.*)$")
      local s = json.decode(body)
      -- (pruning marks a row expired without rewriting its body)
      assert.is_truthy(s.status == status or (status == "expired" and not pairstore.is_terminal(s.status)), line)
      assert.are.equal(pairstore.is_terminal(status) and "false" or "true", live, line)
      if won[s.sid] then assert.is_truthy(status == "consumed" or status == "completed", line) end
    end
  end)
end)

describe("PostgreSQL: a client SIGKILLed inside its mutator", function()
  after_each(cleanup)

  it("lets the others proceed at once, and nothing of its change is stored", function()
    local store, where = open({ lock_wait_ms = 20000 })
    local s = assert(store:create {})
    assert(store:update(s.sid, function(x) x.counter = 0 end))
    local dir = helpers.tmpdir()
    local holder = spawn(dir, "holder", ([[
      local store = %s
      store:update(%q, function(x)
        x.counter = 999
        x.note = "from the killed client"
        io.open(%q, "w"):close()
        while true do end
      end)
    ]]):format(helpers.open_expr(where), s.sid, dir .. "/holding"))
    assert.is_truthy(helpers.wait_for(function() return helpers.exists(dir .. "/holding") end, 30))
    -- a second client queues behind it on the row lock
    local waiter = spawn(dir, "waiter", ([[
      local store = %s
      local t0 = require("pairstore.core").mono_ms()
      local r, msg, code = store:update(%q, function(x) x.counter = x.counter + 10 end)
      print(r and ("OK " .. r.counter) or ("ERR " .. tostring(code) .. " " .. tostring(msg)))
    ]]):format(helpers.open_expr(where, "lock_wait_ms = 20000"), s.sid))
    helpers.sleep(0.3)
    assert.is_truthy(helpers.alive(waiter.pid))
    assert.are.equal("", helpers.read(waiter.out) or "", "the waiter did not wait for the row lock")
    helpers.kill(holder.pid, "KILL")
    local t0 = helpers.mono()
    local got = assert(store:update(s.sid, function(x) x.counter = x.counter + 1 end))
    local took = helpers.mono() - t0
    assert.is_true(took < 3, "the row lock was released " .. took .. " s after the kill (lock_wait_ms 20 s)")
    wait_kids({ waiter }, 20)
    local w = helpers.read(waiter.out)
    assert.matches("^OK %d+\n$", w)
    -- the killed client's 999 never happened: 0 + 1 + 10, in either order
    assert.is_truthy(got.counter == 1 or got.counter == 11, "counter " .. got.counter)
    local final = helpers.stored(where, s.sid)
    assert.are.equal(11, final.counter)
    assert.is_nil(final.note)
  end)
end)

describe("PostgreSQL: the server stopped and started mid-run", function()
  after_each(cleanup)

  it("gives unavailable while it is down, then recovers without reopening the store", function()
    finally(ensure_running)
    local store, where = open({ connect_timeout_ms = 3000, statement_timeout_ms = 5000 })
    local s = assert(store:create {})
    assert(store:update(s.sid, function(x) x.n = 0 end))
    local dir = helpers.tmpdir()
    -- a host that keeps incrementing through the outage, saying what each call returned
    local client = spawn(dir, "client", ([[
      local store = %s
      while not exists(%q) do
        local r, msg, code = store:update(%q, function(x) x.n = x.n + 1 end)
        print(r and ("ok " .. r.n) or ("err " .. tostring(code) .. " " .. tostring(msg)))
        os.execute("sleep 0.02")
      end
    ]]):format(helpers.open_expr(where, "connect_timeout_ms = 3000, statement_timeout_ms = 5000"), dir .. "/done", s.sid))
    await_output({ client }, function(l) return #l >= 5 end, 30, "the client's first updates")

    local ok, out = ctl("stop -m immediate -w -t 60")
    assert(ok, out)
    local down_t0 = helpers.mono()
    local r, msg, code = store:get(s.sid)
    assert.is_nil(r)
    assert.are.equal("unavailable", code, tostring(msg))
    assert.is_string(msg)
    assert.is_true(#msg > 10, msg)
    local c, _, ccode = store:create {}
    assert.is_nil(c)
    assert.are.equal("unavailable", ccode)
    assert.is_true(helpers.mono() - down_t0 < 10, "the errors took " .. (helpers.mono() - down_t0) .. " s")
    helpers.sleep(0.5)

    ok, out = ctl("start -w -t 60")
    assert(ok, out)
    -- the next operation reconnects by itself
    local back, bmsg, bcode = store:get(s.sid)
    assert.is_table(back, tostring(bmsg) .. " (" .. tostring(bcode) .. ")")
    local n_after = #lines_of(client)
    await_output({ client }, function(l) return #l >= n_after + 5 and l[#l]:match("^ok") end, 30,
      "the client to recover")
    helpers.write(dir .. "/done", "")
    wait_kids({ client }, 30)

    -- every answer matches what is stored: successes are consecutive increments (+2 only after
    -- an outcome_unknown that did commit), an unavailable one left nothing behind
    local acked, errors, last = 0, 0, 0
    local unknown = 0 -- outcome_unknown answers since the last success: each may have committed
    for _, l in ipairs(lines_of(client)) do
      local n = l:match("^ok (%d+)$")
      if n then
        n = tonumber(n)
        assert.is_truthy(n >= last + 1 and n <= last + 1 + unknown,
          ("after %d the client saw %d (%d unknown between): %s"):format(last, n, unknown, helpers.read(client.out)))
        acked, last, unknown = acked + 1, n, 0
      else
        local ecode = l:match("^err (%S+)")
        assert.is_truthy(ecode == "unavailable" or ecode == "outcome_unknown" or ecode == "timeout", l)
        errors = errors + 1
        if ecode == "outcome_unknown" then unknown = unknown + 1 end
      end
    end
    assert.is_true(errors >= 1, "the client never noticed the outage")
    local stored_n = helpers.stored(where, s.sid).n
    assert.is_true(stored_n >= last and stored_n <= last + unknown,
      ("stored %d, last acknowledged %d"):format(stored_n, last))
    assert.is_true(acked >= 10)
  end)
end)

describe("PostgreSQL: a server that stops answering (SIGSTOP)", function()
  after_each(cleanup)

  it("gives timeout within statement_timeout_ms, then recovers after SIGCONT", function()
    local store = open({ statement_timeout_ms = 1000, connect_timeout_ms = 2000 })
    local s = assert(store:create {})
    local pids = server_pids()
    finally(function() signal_all(pids, "CONT") end)
    signal_all(pids, "STOP")
    local t0 = helpers.mono()
    local r, msg, code = store:get(s.sid)
    local took = helpers.mono() - t0
    assert.is_nil(r)
    assert.are.equal("timeout", code, tostring(msg))
    assert.is_true(took >= 0.9 and took < 6, "timeout after " .. took .. " s (statement_timeout_ms 1000)")
    -- a new connection is bounded by connect_timeout_ms (libpq counts whole seconds, at least 2)
    local fresh = open({ statement_timeout_ms = 1000, connect_timeout_ms = 2000 })
    t0 = helpers.mono()
    local f, fmsg, fcode = fresh:list_all()
    took = helpers.mono() - t0
    assert.is_nil(f)
    assert.are.equal("timeout", fcode, tostring(fmsg))
    assert.is_true(took < 8, "connecting gave up after " .. took .. " s (connect_timeout_ms 2000)")

    signal_all(pids, "CONT")
    local back, bmsg, bcode = store:get(s.sid)
    assert.is_table(back, tostring(bmsg) .. " (" .. tostring(bcode) .. ")")
    assert(store:update(s.sid, function(x) x.after = true end))
    assert.is_table(fresh:list_all())
  end)
end)

describe("PostgreSQL: store:wait with the server not answering (SIGSTOP)", function()
  after_each(cleanup)

  it("returns by its deadline: connecting and every answer are bounded by what is left of it", function()
    local store, where = open() -- connect_timeout_ms 10000, statement_timeout_ms 30000: the defaults
    local s = assert(store:create {})
    local fresh = helpers.reopen(where, { durable = false }) -- not connected yet
    local pids = server_pids()
    finally(function() signal_all(pids, "CONT") end)
    signal_all(pids, "STOP")
    for _, case in ipairs { { store, 500 }, { store, 0 }, { fresh, 500 }, { fresh, 0 } } do
      local st, timeout = case[1], case[2]
      local mono = require("pairstore.core").mono_ms
      local t0 = mono()
      local r, msg, code = st:wait(s.sid, { timeout_ms = timeout })
      local took = mono() - t0
      assert.are.same({ nil, "timeout", "timeout" }, { r, msg, code })
      assert.is_true(took < timeout + 100, ("timeout_ms %d: returned after %d ms"):format(timeout, took))
    end
    signal_all(pids, "CONT")
    assert.are.equal("awaiting_scan", assert(fresh:get(s.sid)).status)
    assert.are.same({ nil, "timeout", "timeout" }, { store:wait(s.sid, { timeout_ms = 50 }) })
  end)
end)

describe("PostgreSQL: a connection cut during the transaction or its COMMIT", function()
  after_each(cleanup)

  -- The backend serving this process's store: the one idle in a transaction while our mutator
  -- runs (no other client of the test database is inside a transaction meanwhile).
  local function own_backend()
    return sql1("SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND " ..
      "state = 'idle in transaction' AND pid <> pg_backend_pid()")
  end

  it("cut before the commit: unavailable, and nothing stored; the next call reconnects", function()
    local store, where = open()
    local s = assert(store:create {})
    for round = 1, 3 do
      local before = helpers.snapshot(where)
      local r, msg, code = store:update(s.sid, function(x)
        x.n = round
        local pid = own_backend()
        assert(pid:match("^%d+$"), "own backend: " .. pid)
        assert.are.equal("t", sql1("SELECT pg_terminate_backend(" .. pid .. ", 5000)"))
      end)
      assert.is_nil(r, "reported success for a change whose connection was cut before its commit")
      assert.are.equal("unavailable", code, tostring(msg))
      assert.are.equal(before, helpers.snapshot(where))
      assert.is_nil(assert(store:get(s.sid)).n)
    end
  end)

  it("cut around the COMMIT (a sweep of moments): the outcome reported is the one stored", function()
    local store, where = open()
    local s = assert(store:create {})
    assert(store:update(s.sid, function(x) x.n = 0 end))
    local tally = { success = 0, unavailable = 0, outcome_unknown = 0 }
    local dir = helpers.tmpdir()
    for round = 1, 24 do
      local prev = helpers.stored(where, s.sid).n
      -- a killer that connects first, then terminates our backend after a delay that lands,
      -- round by round, before, at and after the COMMIT that follows the mutator's return
      local delay = (round % 12) * 0.005
      local r, msg, code = store:update(s.sid, function(x)
        x.n = round
        local pid = own_backend()
        os.execute(("%s psql %s -c %s >%s 2>&1 &"):format(PGCLUSTER, q(helpers.pg_dir()),
          q(("SELECT pg_sleep(%.3f), pg_terminate_backend(%s)"):format(delay, pid)), q(dir .. "/killer." .. round)))
        helpers.sleep(0.05)
      end)
      helpers.wait_for(function()
        local o = helpers.read(dir .. "/killer." .. round)
        return o and o ~= ""
      end, 10)
      local now_n = helpers.stored(where, s.sid).n
      if r then
        tally.success = tally.success + 1
        assert.are.equal(round, now_n, "round " .. round .. ": success reported, not stored")
      elseif code == "unavailable" then
        tally.unavailable = tally.unavailable + 1
        assert.are.equal(prev, now_n, "round " .. round .. ": unavailable reported, but it committed")
      else
        assert.are.equal("outcome_unknown", code, "round " .. round .. ": " .. tostring(msg))
        tally.outcome_unknown = tally.outcome_unknown + 1
      end
      -- the next operation reconnects by itself
      local g, gmsg, gcode = store:get(s.sid)
      assert.is_table(g, tostring(gmsg) .. " (" .. tostring(gcode) .. ")")
      assert.are.equal(now_n, g.n)
    end
    print(("\n  [COMMIT sweep] success %d, unavailable %d, outcome_unknown %d"):format(
      tally.success, tally.unavailable, tally.outcome_unknown))
    -- the server stayed up, so the lookup after reconnecting can always tell
    assert.are.equal(0, tally.outcome_unknown)
  end)
end)

describe("PostgreSQL: the schema", function()
  local dbs, roles = {}, {}
  after_each(function()
    cleanup()
    for i = #dbs, 1, -1 do
      helpers.psql("DROP DATABASE IF EXISTS " .. dbs[i] .. " WITH (FORCE)")
      dbs[i] = nil
    end
    for i = #roles, 1, -1 do
      helpers.psql("DROP ROLE IF EXISTS " .. roles[i])
      roles[i] = nil
    end
  end)

  local function new_db()
    local db = "ps_schema_" .. rand_hex(4)
    sql1("CREATE DATABASE " .. db)
    dbs[#dbs + 1] = db
    return db
  end

  local function in_db(db, sql)
    local ok, out = helpers.run(PGCLUSTER .. " psql " .. q(helpers.pg_dir()) .. " -d " .. db ..
      " -c " .. q(sql))
    assert(ok, out)
    return (out:gsub("\n$", ""))
  end

  it("is created on first use, versioned", function()
    local db = new_db()
    assert.are.equal("", in_db(db, "SELECT string_agg(tablename, ',') FROM pg_tables WHERE tablename LIKE 'pairstore%'"))
    local store = helpers.reopen({ backend = "postgresql", target = target_for(db, "pairstore"), store = "s1" },
      { durable = false })
    assert.are.equal("", in_db(db, "SELECT string_agg(tablename, ',') FROM pg_tables WHERE tablename LIKE 'pairstore%'"),
      "tables made before the first operation")
    local s = assert(store:create {})
    assert.are.equal("pairstore_schema,pairstore_sessions,pairstore_stores",
      in_db(db, "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE tablename LIKE 'pairstore%'"))
    assert.are.equal("1", in_db(db, "SELECT max(version) FROM pairstore_schema"))
    assert.are.equal(s.sid, in_db(db, "SELECT sid FROM pairstore_sessions"))
  end)

  it("created by a store's own connection leaves that connection's lock_wait_ms in force", function()
    local db = new_db()
    local where = { backend = "postgresql", target = target_for(db, "pairstore"), store = "s" }
    local store = helpers.reopen(where, { durable = false, lock_wait_ms = 300 })
    local s = assert(store:create {}) -- this connection made the tables
    local dir = helpers.tmpdir()
    local holder = spawn(dir, "holder", ([[
      local store = %s
      assert(store:update(%q, function()
        io.open(%q, "w"):close()
        while not exists(%q) do os.execute("sleep 0.01") end
      end))
    ]]):format(helpers.open_expr(where), s.sid, dir .. "/holding", dir .. "/release"))
    finally(function() helpers.write(dir .. "/release", "") end)
    assert.is_truthy(helpers.wait_for(function() return helpers.exists(dir .. "/holding") end, 30))
    local t0 = helpers.mono()
    local r, msg, code = store:update(s.sid, function(x) x.mine = true end)
    local took = helpers.mono() - t0
    assert.is_nil(r, "the update waited for the row lock past lock_wait_ms")
    assert.are.equal("timeout", code, tostring(msg))
    assert.is_true(took < 5, "gave up after " .. took .. " s (lock_wait_ms 300)")
    helpers.write(dir .. "/release", "")
    wait_kids({ holder }, 30)
  end)

  it("missing, for a role without DDL rights: code schema naming sql/pairstore.sql; works once the owner applied it", function()
    local db = new_db()
    local role = "ps_app_" .. rand_hex(4)
    sql1("CREATE ROLE " .. role .. " LOGIN")
    roles[#roles + 1] = role
    in_db(db, "REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    local where = { backend = "postgresql", target = target_for(db, role), store = "app" }
    local store = helpers.reopen(where, { durable = false })
    local r, msg, code = store:create {}
    assert.is_nil(r)
    assert.are.equal("schema", code, tostring(msg))
    assert.matches("sql/pairstore.sql", msg, 1, true)
    assert.are.equal("", in_db(db, "SELECT string_agg(tablename, ',') FROM pg_tables WHERE tablename LIKE 'pairstore%'"))
    -- the owner applies the shipped DDL and grants the application role its rows
    local ok, out = helpers.run(PGCLUSTER .. " psql " .. q(helpers.pg_dir()) .. " -d " .. db ..
      " < " .. q(helpers.ROOT .. "/sql/pairstore.sql")) -- (read by us: psql runs as postgres)
    assert(ok, out)
    in_db(db, "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO " .. role)
    local s, smsg, scode = store:create {}
    assert.is_table(s, tostring(smsg) .. " (" .. tostring(scode) .. ")")
    assert(store:verify_code(s.sid, s.secondaryCode))
    assert(store:consume(s.sid))
    assert.are.equal("consumed", store:get(s.sid).status)
    assert.are.equal(0, store:prune())
  end)

  it("of a newer version is refused (code unsupported_version or schema), nothing written", function()
    local db = new_db()
    local store = helpers.reopen({ backend = "postgresql", target = target_for(db, "pairstore"), store = "s" },
      { durable = false })
    assert(store:create {})
    store:close()
    in_db(db, "UPDATE pairstore_schema SET version = 999")
    local before = in_db(db, "SELECT count(*) FROM pairstore_sessions")
    local again = helpers.reopen({ backend = "postgresql", target = target_for(db, "pairstore"), store = "s" },
      { durable = false })
    local r, msg, code = again:create {}
    assert.is_nil(r)
    assert.is_truthy(code == "unsupported_version" or code == "schema", tostring(code) .. ": " .. tostring(msg))
    assert.matches("version", msg, 1, true)
    assert.are.equal(before, in_db(db, "SELECT count(*) FROM pairstore_sessions"))
  end)
end)

describe("PostgreSQL: a password in the target", function()
  local roles = {}
  after_each(function()
    cleanup()
    for i = #roles, 1, -1 do
      helpers.psql("DROP OWNED BY " .. roles[i])
      helpers.psql("DROP ROLE IF EXISTS " .. roles[i])
      roles[i] = nil
    end
  end)

  it("never appears in the path, tostring, error messages or events", function()
    local role = "ps_pw_" .. rand_hex(4)
    local PW = "Pw" .. rand_hex(8) .. "Secret"
    sql1("CREATE ROLE " .. role .. " LOGIN SUPERUSER PASSWORD " .. helpers.sql_literal(PW))
    roles[#roles + 1] = role
    local seen = {}
    local function check(what, text)
      text = tostring(text)
      seen[#seen + 1] = text
      assert.is_nil(text:find(PW, 1, true), what .. " shows the password: " .. text)
    end
    local function events_to(list) return function(name, info) list[#list + 1] = { name, info } end end
    local events = {}
    local host = helpers.pg_target():match("host=([^&]+)")
    local good = target_for("pairstore", role, PW)
    local store = pairstore.open(good, { store = helpers.store_name(), durable = false, on_event = events_to(events) })
    check("path", store.path)
    check("tostring", tostring(store))
    assert.matches(role, store.path, 1, true)
    assert(store:create {})
    store:close()
    local bad_targets = { -- (and the code each failure has: see pg_messages_spec.lua)
      { ("postgresql://%s:%s@/pairstore?host=/nonexistent-%s"):format(role, PW, rand_hex(3)), "unavailable" },
      { ("postgresql://%s:%s@/no_such_db_%s?host=%s"):format(role, PW, rand_hex(3), host), "schema" },
      { ("postgres://nobody_%s:%s@/pairstore?host=%s"):format(rand_hex(3), PW, host), "denied" },
      { ("postgresql:///pairstore?host=/nonexistent&user=%s&password=%s"):format(role, PW), "unavailable" },
      { ("pg:host=/nonexistent-dir dbname=pairstore user=%s password=%s"):format(role, PW), "unavailable" },
      { ("pg:host=%s dbname=pairstore user=%s password='%s' connect_timeout=2"):format(host, "nobody_x", PW), "denied" },
    }
    for _, bad in ipairs(bad_targets) do
      local t = bad[1]
      local st = pairstore.open(t, { store = "pw", durable = false, connect_timeout_ms = 3000,
        on_event = events_to(events) })
      check("path", st.path)
      check("tostring", tostring(st))
      local r, msg, code = st:list_all()
      assert.is_nil(r, t)
      check("error", msg)
      assert.are.equal(bad[2], code, tostring(msg))
      local r2, msg2 = st:create {}
      assert.is_nil(r2)
      check("error", msg2)
      st:close()
      -- a programming error raised for such a target names no password either
      local ok, err = pcall(pairstore.open, t, { max_file_bytes = 10 })
      assert.is_false(ok)
      check("raised error", err)
    end
    check("events", json.encode(events))
  end)
end)

describe("PostgreSQL: a forked child", function()
  after_each(cleanup)

  for _, ending in ipairs { "close", "_exit" } do
    it("opens its own connection and leaves its parent's alone (child ends with " .. ending .. ")", function()
      local fu = require "test.forkutil"
      local store, where = open({ lock_wait_ms = 30000 })
      local s = assert(store:create {})
      assert(store:update(s.sid, function(x) x.counter = 0 end)) -- the parent's connection is open
      -- the server processes serving clients of the test database (but psql's own)
      local function backend_pids()
        return sql1("SELECT coalesce(string_agg(pid::text, ',' ORDER BY pid), '') FROM pg_stat_activity " ..
          "WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()")
      end
      -- the parent's store is the only client now (those of earlier tests are closed)
      assert.is_truthy(helpers.wait_for(function() return backend_pids():match("^%d+$") end, 10), backend_pids())
      local before = backend_pids()
      local pid = fu.fork()
      if pid == 0 then
        local ok, err = pcall(function()
          for _ = 1, 100 do
            assert(store:update(s.sid, function(x) x.counter = x.counter + 1 end))
          end
          if ending == "close" then store:close() end
        end)
        if not ok then io.stderr:write("child: ", tostring(err), "\n") end
        fu._exit(ok and 0 or 1)
      end
      for _ = 1, 100 do
        assert(store:update(s.sid, function(x) x.counter = x.counter + 1 end))
      end
      assert.are.equal(0, fu.wait(pid))
      -- the parent's connection still works, and the child's is gone
      for _ = 1, 5 do
        local r, msg, code = store:update(s.sid, function(x) x.counter = x.counter + 1 end)
        assert.is_table(r, tostring(msg) .. " (" .. tostring(code) .. ")")
      end
      assert.are.equal(205, store:get(s.sid).counter)
      assert.are.equal(205, helpers.stored(where, s.sid).counter)
      -- the very same server process serves the parent (its session was never ended or
      -- replaced), and the child's connection is gone
      assert.is_truthy(helpers.wait_for(function() return backend_pids() == before end, 10),
        "parent's backend " .. before .. ", now " .. backend_pids())
    end)
  end
end)

describe("PostgreSQL: lock_wait_ms", function()
  after_each(cleanup)

  it("gives timeout while another process holds the row; reads and other sessions never wait", function()
    local store, where = open({ lock_wait_ms = 300 })
    local s = assert(store:create {})
    local other = assert(store:create {})
    local dir = helpers.tmpdir()
    local holder = spawn(dir, "holder", ([[
      local store = %s
      assert(store:update(%q, function(x)
        x.held = true
        io.open(%q, "w"):close()
        while not exists(%q) do os.execute("sleep 0.01") end
      end))
      print("released")
    ]]):format(helpers.open_expr(where), s.sid, dir .. "/holding", dir .. "/release"))
    assert.is_truthy(helpers.wait_for(function() return helpers.exists(dir .. "/holding") end, 30))
    local t0 = helpers.mono()
    local r, msg, code = store:update(s.sid, function(x) x.mine = true end)
    local took = helpers.mono() - t0
    assert.is_nil(r)
    assert.are.equal("timeout", code, tostring(msg))
    assert.is_true(took >= 0.25 and took < 5, "gave up after " .. took .. " s (lock_wait_ms 300)")
    for _, op in ipairs {
      function() return store:consume(s.sid) end,
      function() return store:verify_code(s.sid, "000000") end,
    } do
      local _, _, c = op()
      assert.are.equal("timeout", c)
    end
    -- a read sees the last committed state at once; another session is not blocked
    t0 = helpers.mono()
    local g = assert(store:get(s.sid))
    assert.is_nil(g.held)
    assert(store:update(other.sid, function(x) x.fine = true end))
    assert.is_table(store:list_all())
    assert.is_true(helpers.mono() - t0 < 2, "reads or another session waited for the row lock")
    helpers.write(dir .. "/release", "")
    wait_kids({ holder }, 30)
    assert.are.equal("released\n", helpers.read(holder.out))
    local after = assert(store:get(s.sid))
    assert.is_true(after.held)
    assert.is_nil(after.mine)
    assert.are.equal(0, after.secondaryCodeAttempts)
  end)
end)

describe("PostgreSQL: stores and connections", function()
  after_each(cleanup)

  local function client_backends()
    return tonumber(sql1("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() " ..
      "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"))
  end

  it("connect on the first operation, one connection per store object, none after close", function()
    -- (the stores of earlier tests are closed: their server processes end in a moment)
    assert.is_truthy(helpers.wait_for(function() return client_backends() == 0 end, 10))
    local base = 0
    local stores = {}
    for i = 1, 4 do stores[i] = open() end
    assert.are.equal(base, client_backends(), "open connected")
    for i = 1, 4 do assert(stores[i]:list_all()) end
    assert.are.equal(base + 4, client_backends())
    for i = 1, 4 do stores[i]:close() end
    assert.is_truthy(helpers.wait_for(function() return client_backends() == base end, 10))
  end)

  it("several stores in one database are independent, also with the same sid", function()
    local sid = ("\1"):rep(16)
    local a, wa = open({ rng = { sid = function() return sid end } })
    local b, wb = open({ rng = { sid = function() return sid end } })
    local sa = assert(a:create {})
    local sb = assert(b:create {})
    assert.are.equal(sa.sid, sb.sid)
    assert(a:consume(sa.sid))
    assert.are.equal("awaiting_scan", b:get(sb.sid).status)
    assert.are.equal("consumed", helpers.stored(wa, sa.sid).status)
    assert.are.equal("awaiting_scan", helpers.stored(wb, sb.sid).status)
    assert.is_false(b:update(sb.sid, function() return false end))
    assert.is_table(a:get(sa.sid))
  end)

  it("names: 1..200 bytes of printable UTF-8, else open raises", function()
    local t = helpers.pg_target()
    local accepted = {}
    for _, bad in ipairs { "", ("n"):rep(201), "a\0b", "tab\there", "line\nbreak", "\27[31mred",
      "\255\254", 42 } do
      if pcall(pairstore.open, t, { store = bad }) then accepted[#accepted + 1] = ("%q"):format(bad) end
    end
    assert.are.equal("", table.concat(accepted, ", "), "store names that open accepted")
    local odd = "ünïcödé store 'with' \"quotes\"; DROP TABLE x; --" .. rand_hex(4)
    local st = helpers.reopen({ backend = "postgresql", target = t, store = odd }, { durable = false })
    local s = assert(st:create {})
    assert.are.equal(s.sid, assert(st:get(s.sid)).sid)
    assert.are.equal("1", sql1("SELECT count(*) FROM pairstore_sessions WHERE store = " .. helpers.sql_literal(odd)))
    local long = helpers.reopen({ backend = "postgresql", target = t, store = ("l"):rep(200) }, { durable = false })
    assert(long:create {})
  end)

  it("the path names the store; backend() says postgresql", function()
    local store, where = open()
    assert.are.equal("postgresql", store:backend())
    assert.matches(where.store, store.path, 1, true)
    assert.matches(store.path, tostring(store), 1, true)
  end)

  it("accept the pg: key=value form of the target", function()
    local host = helpers.pg_target():match("host=([^&]+)")
    local st = helpers.reopen({ backend = "postgresql", target = ("pg:host=%s dbname=pairstore user=pairstore"):format(host),
      store = helpers.store_name() }, { durable = false })
    local s = assert(st:create {})
    assert.are.equal("postgresql", st:backend())
    assert.are.equal(s.sid, st:get(s.sid).sid)
  end)

  it("durable = false and true both store what they acknowledge", function()
    for _, durable in ipairs { false, true } do
      local store, where = open({ durable = durable })
      local s = assert(store:create {})
      assert(store:update(s.sid, function(x) x.d = durable end))
      assert.are.equal(durable, helpers.stored(where, s.sid).d)
    end
  end)
end)

describe("PostgreSQL: sessions moved between backends (export/import, as migrate does)", function()
  after_each(cleanup)

  it("keep every byte of their text, file -> PostgreSQL -> file", function()
    local T0 = 1764300000000
    local file = helpers.open_store("file", { durable = false, now = function() return T0 end })
    for i = 1, 4 do
      local s = assert(file:create { operator = { channel = "c" .. i, senderId = "u\195\169" .. i } })
      assert(file:update(s.sid, function(x) x.unknown = { i, 2.5, "t\226\152\131", { deep = { true, false } } } end))
    end
    assert(file:consume(file:list_all()[2].sid))
    local texts = assert(file:export())
    local pg = open({ now = function() return T0 end })
    assert.are.same({ 4, 0 }, { pg:import(texts) })
    assert.are.same(texts, assert(pg:export()))
    assert.are.same(file:list_all(), pg:list_all())
    assert.are.same({ 0, 4 }, { pg:import(texts) })
    local back = helpers.open_store("file", { durable = false, now = function() return T0 end })
    assert.are.same({ 4, 0 }, { back:import(assert(pg:export())) })
    assert.are.same(texts, assert(back:export()))
    assert.are.equal("consumed", pg:get(texts[2]:match('"sid":"(%x+)"')).status)
  end)
end)
