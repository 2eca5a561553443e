-- Specs for pairstore.metrics (issue 21): what a store with the metrics option records
-- (operations by result, durations, cooperative lock waits, events, sessions by status),
-- the text exposition (checked by promtool), a lua_shared_dict as storage (a fake one with
-- the same contract: atomic incr, safe_add that never evicts, a bounded size), and that no
-- secret ever reaches an exposition. Both backends, from one source.
local pairstore = require "pairstore"
local metrics = require "pairstore.metrics"
local helpers = require "helpers"
local q = helpers.sh_quote

-- promtool's verdict on an exposition: ok, output.
local function promtool(text)
  local dir = helpers.tmpdir()
  helpers.write(dir .. "/m.prom", text)
  return helpers.run("promtool check metrics < " .. q(dir .. "/m.prom"))
end

-- The samples of an exposition: name{labels} -> value.
local function samples(text)
  local t = {}
  for line in text:gmatch("[^\n]+") do
    if not line:find("^#") then
      local k, v = line:match("^(.*) (%S+)$")
      assert(k, "not a sample line: " .. line)
      t[k] = tonumber(v) or v
    end
  end
  return t
end

local function wrong(code) return code == "000000" and "111111" or "000000" end

-- A stand-in for an nginx lua_shared_dict: numbers only, room for `room` keys; incr without
-- init fails "not found", safe_add fails "no memory" when full and never evicts.
local function fake_dict(room)
  local d = { v = {}, n = 0, room = room }
  function d:incr(k, by)
    local v = self.v[k]
    if v == nil then return nil, "not found" end
    self.v[k] = v + by
    return self.v[k]
  end
  function d:safe_add(k, v)
    if self.v[k] ~= nil then return false, "exists" end
    if self.n >= self.room then return false, "no memory" end
    self.v[k] = v
    self.n = self.n + 1
    return true
  end
  function d:get(k) return self.v[k] end
  function d:get_keys()
    local ks = {}
    for k in pairs(self.v) do ks[#ks + 1] = k end
    return ks
  end
  function d:flush_all() self.v, self.n = {}, 0 end
  function d.flush_expired() return 0 end
  return d
end

describe("pairstore.metrics", function()
  after_each(helpers.cleanup)

  it("raises on bad arguments", function()
    assert.has_error(function() metrics.new(5) end, "pairstore.metrics.new: opts must be a table")
    assert.has_error(function() metrics.new { bogus = 1 } end, 'pairstore.metrics.new: unknown option "bogus"')
    assert.has_error(function() metrics.new { dict = {} } end,
      "pairstore.metrics.new: dict must be a lua_shared_dict (ngx.shared.NAME)")
    assert.has_error(function() metrics.new { log = "x" } end, "pairstore.metrics.new: log must be a function")
    local dir = helpers.tmpdir()
    assert.has_error(function() pairstore.open(dir .. "/s.json", { metrics = {} }) end,
      "pairstore.open: option metrics must be pairstore.metrics.new()'s")
    assert.has_error(function() pairstore.open(dir .. "/s.json", { metrics = 1 }) end,
      "pairstore.open: option metrics must be a table")
    assert.has_error(function() metrics.new():render({}) end,
      "pairstore.metrics: render(store): store must be a pairstore store")
  end)

  it("escapes label values and HELP text as the text format 0.0.4 says", function()
    assert.are.equal('a\\\\b\\"c\\nd', metrics.escape_label('a\\b"c\nd'))
    local t = metrics.text()
    t:family("x_total", "counter", "help with \\ and\nnewline")
    t:sample("x_total", { { "l", 'q"uote\\\n' } }, 3)
    local text = t:done()
    assert.are.equal('# HELP x_total help with \\\\ and\\nnewline\n# TYPE x_total counter\n' ..
      'x_total{l="q\\"uote\\\\\\n"} 3\n', text)
    local ok, out = promtool(text)
    assert.is_true(ok, out)
    assert.are.equal("0.1", metrics.format_number(0.1))
    assert.are.equal("12", metrics.format_number(12.0))
    assert.are.equal("+Inf", metrics.format_number(math.huge))
  end)

  it("counts unknown op and result names as other, never as given", function()
    local m = metrics.new()
    m:observe("get; drop table", "Bad Code", 0.001)
    m:observe("get", "x" .. ("y"):rep(60), 0.001)
    assert.are.equal("r", select(2, m:done("get", metrics.clock(), nil, "r"))) -- (a result without a code)
    local d = metrics.new { dict = fake_dict(100), log = function() end }
    d:done("get", metrics.clock())
    assert.are.equal(1, samples(d:render())['pairstore_operations_total{op="get",result="other"}'])
    local s = samples(m:render())
    assert.are.equal(1, s['pairstore_operations_total{op="other",result="other"}'])
    assert.are.equal(2, s['pairstore_operations_total{op="get",result="other"}'])
  end)

  it("times a lock wait from the first busy answer to the end of the last attempt (pairstore.attempts)", function()
    local attempts = require "pairstore.attempts"
    local m = metrics.new()
    local function busy(secs) local t = metrics.clock() + secs; while metrics.clock() < t do end end
    local answers = { { nil, "held", "lock_busy", 10, 0, 1 }, { nil, "held", "lock_busy", 10, 0, 2 }, { "done", n = 1 } }
    local i, paused = 0, 0
    local r = attempts.run(function() i = i + 1; busy(0.005); return answers[i] end,
      function(b) paused = paused + 1; assert.are.equal("lock_busy", b[3]); busy(0.01) end,
      function(secs) m:lock_waited(secs) end, metrics.clock)
    assert.are.same({ "done", n = 1 }, r)
    assert.are.same({ 3, 2 }, { i, paused })
    local s = samples(m:render())
    assert.are.equal(1, s.pairstore_lock_wait_seconds_count)
    -- two pauses and two attempts after the first busy answer: about 30 ms
    assert.is_true(s.pairstore_lock_wait_seconds_sum >= 0.03 and s.pairstore_lock_wait_seconds_sum < 0.5,
      s.pairstore_lock_wait_seconds_sum)
    -- not busy: no wait; a pause that ends the call: no wait either
    assert.are.same({ "x" }, attempts.run(function() return { "x" } end, error, function() error("no wait") end, metrics.clock))
    local stop = { nil, "closed", "closed" }
    assert.are.equal(stop, attempts.run(function() return { nil, "held", "lock_busy", 1, 0, 1 } end,
      function() return stop end, function() error("no wait") end, metrics.clock))
    assert.are.equal(1, samples(m:render()).pairstore_lock_wait_seconds_count)
  end)

  it("keeps counts in a shared dict with one incr per value, and counts what does not fit", function()
    local logged = {}
    local d = fake_dict(6)
    local m = metrics.new { dict = d, log = function(msg) logged[#logged + 1] = msg end }
    assert.are.equal(0, d:get("dropped"))
    m:observe("get", "ok", 0.00003) -- 3 keys: o|get|ok, its bucket, s|get
    m:observe("get", "ok", 0.00003) -- the same keys: nothing new
    m:observe("create", "ok", 0.002) -- 3 more keys: the first two fit (6 in all), the sum does not
    local s = samples(m:render())
    assert.are.equal(2, s['pairstore_operations_total{op="get",result="ok"}'])
    assert.are.equal(2, s['pairstore_operation_duration_seconds_count{op="get"}'])
    assert.are.equal(2, s['pairstore_operation_duration_seconds_bucket{op="get",le="0.00005"}'])
    assert.are.equal(0, s['pairstore_operation_duration_seconds_bucket{op="get",le="0.00002"}'])
    assert.are.equal(1, s['pairstore_operations_total{op="create",result="ok"}'])
    assert.are.equal(1, s["pairstore_metrics_dropped_total"])
    assert.are.equal(1, #logged)
    assert.matches("lua_shared_dict is full", logged[1], 1, true)
    -- nothing was evicted: every key that was there still holds its count
    assert.are.equal(2, d:get("o|get|ok"))
    -- a second metrics object on the same dict (another worker, or after a reload) adds to it
    local m2 = metrics.new { dict = d, log = function() end }
    m2:observe("get", "ok", 0.00003)
    assert.are.equal(3, samples(m:render())['pairstore_operations_total{op="get",result="ok"}'])
    assert.are.equal(1, samples(m2:render())["pairstore_metrics_dropped_total"])
  end)
end)

for _, backend in ipairs(helpers.backends()) do
  describe("[" .. backend .. "]", function()
    describe("a store with the metrics option", function()
      local m, st, where, dir
      local events

      before_each(function()
        dir = helpers.tmpdir()
        m = metrics.new()
        events = {}
        st, where = helpers.open_store(backend, { durable = false, metrics = m,
          on_event = function(name) events[#events + 1] = name end })
      end)
      after_each(helpers.cleanup)

      it("counts every operation by its result, and times each in the histogram", function()
        local a = assert(st:create { operator = { channel = "web", senderId = "sender-secret-1", accountId = "acct-secret-2" } })
        local b = assert(st:create {})
        assert(st:get(a.sid))
        assert.are.equal("not_found", select(3, st:get(("0"):rep(32))))
        for i = 1, 4 do assert.are.equal("wrong_code", select(3, st:verify_code(b.sid, wrong(b.secondaryCode))), i) end
        assert.are.equal("attempts_exhausted", select(3, st:verify_code(b.sid, wrong(b.secondaryCode))))
        assert.are.equal("rejected", select(3, st:verify_code(b.sid, b.secondaryCode)))
        assert(st:verify_code(a.sid, a.secondaryCode))
        assert(st:consume(a.sid))
        assert(st:transition(a.sid, "completed"))
        assert.are.equal("already_consumed", select(3, st:consume(a.sid)))
        assert.are.equal("bad_request", select(3, st:respond(a.sid, { v = 1 })))
        assert.are.equal("timeout", select(3, st:wait(a.sid, { timeout_ms = 0 })))
        assert(st:list_active())
        local text = m:render()
        local s = samples(text)
        local want = {
          ['op="create",result="ok"'] = 2, ['op="get",result="ok"'] = 1,
          ['op="get",result="not_found"'] = 1, ['op="verify_code",result="wrong_code"'] = 4,
          ['op="verify_code",result="attempts_exhausted"'] = 1, ['op="verify_code",result="rejected"'] = 1,
          ['op="verify_code",result="ok"'] = 1, ['op="consume",result="ok"'] = 1,
          ['op="consume",result="already_consumed"'] = 1, ['op="transition",result="ok"'] = 1,
          ['op="respond",result="bad_request"'] = 1, ['op="wait",result="timeout"'] = 1,
          ['op="list",result="ok"'] = 1,
        }
        local got_ops = {}
        for k, v in pairs(s) do
          local labels = k:match("^pairstore_operations_total{(.*)}$")
          if labels then got_ops[labels] = v end
        end
        -- (the wait is one operation: its own reads are not counted apart)
        assert.are.same(want, got_ops)
        -- each op's histogram: cumulative buckets ending in +Inf = _count = its operations
        for _, op in ipairs { "create", "get", "verify_code", "consume", "wait" } do
          local n = 0
          for k, v in pairs(s) do
            k = k:match("^pairstore_operations_total{(.*)}$") or "" if k:find('^op="' .. op .. '"') then n = n + v end end
          local prev = 0
          for _, le in ipairs(metrics.BUCKET_LABELS) do
            local c = s[('pairstore_operation_duration_seconds_bucket{op="%s",le="%s"}'):format(op, le)]
            assert.is_number(c, op .. " le " .. le)
            assert.is_true(c >= prev)
            prev = c
          end
          assert.are.equal(n, s[('pairstore_operation_duration_seconds_bucket{op="%s",le="+Inf"}'):format(op)], op)
          assert.are.equal(n, s[('pairstore_operation_duration_seconds_count{op="%s"}'):format(op)], op)
          assert.is_true(s[('pairstore_operation_duration_seconds_sum{op="%s"}'):format(op)] > 0, op)
        end
        -- a create that writes takes more than 20 µs; none of these took 30 s
        assert.are.equal(0, s['pairstore_operation_duration_seconds_bucket{op="create",le="0.00001"}'])
        local ok, out = promtool(text)
        assert.is_true(ok, out)
        -- nothing secret: no sid, code, key, sender or account anywhere in it
        for _, x in ipairs { a, b } do
          for _, secret in ipairs { x.sid, x.secondaryCode, x.skGatewayB64, x.pkGatewayB64 } do
            assert.is_nil(text:find(secret, 1, true), "found " .. secret)
          end
        end
        assert.is_nil(text:find("secret", 1, true))
      end)

      it("reads the sessions by status when rendered with the store: one read", function()
        local a = assert(st:create {})
        assert(st:create {})
        assert(st:verify_code(a.sid, a.secondaryCode))
        local c = assert(st:create {})
        assert(st:reject(c.sid))
        local s1 = samples(m:render(st))
        assert.are.equal(1, s1['pairstore_sessions{status="awaiting_scan"}'])
        assert.are.equal(1, s1['pairstore_sessions{status="device_connected"}'])
        assert.are.equal(1, s1['pairstore_sessions{status="rejected"}'])
        assert.are.equal(0, s1['pairstore_sessions{status="completed"}'])
        assert.are.equal(0, s1['pairstore_sessions{status="other"}'])
        assert.are.equal(1, s1["pairstore_store_up"])
        local text = m:render(st)
        local s2 = samples(text)
        -- the first render's read is counted (after its own snapshot): exactly one list
        assert.are.equal(1, s2['pairstore_operations_total{op="list",result="ok"}'])
        local ok, out = promtool(text)
        assert.is_true(ok, out)
      end)

      it("says when the store cannot be read for a scrape", function()
        if backend == "file" then
          helpers.write(where.path, '{"version":99,"sessions":[]}')
        else
          st:close()
          st = pairstore.open("postgresql:///nonexistent?host=/nonexistent&connect_timeout=2", { metrics = m })
        end
        local text = m:render(st)
        local s = samples(text)
        assert.are.equal(0, s["pairstore_store_up"], text)
        assert.is_nil(s['pairstore_sessions{status="awaiting_scan"}'])
        -- (the scrape's read is recorded after its snapshot: it shows in the next one)
        assert.are.equal(1, samples(m:render())[('pairstore_operations_total{op="list",result="%s"}'):format(
          backend == "file" and "unsupported_version" or "unavailable")])
        local ok, out = promtool(text)
        assert.is_true(ok, out)
      end)

      -- Another process holds session s's lock (the file's, or its row) for 0.6 s; returns
      -- once it does (it made dir/<flag>).
      local function hold_for_a_while(s, flag)
        helpers.spawn_lua(string.format([[
          local st = %s
          assert(st:update(%q, function()
            local f = io.open(%q, "w"); f:close()
            os.execute("sleep 0.6")
          end))
        ]], helpers.open_expr(where, "durable = false"), s.sid, dir .. "/" .. flag), dir .. "/" .. flag .. ".out")
        assert(helpers.wait_file(dir .. "/" .. flag, nil, 20), "the holder never took the lock")
      end

      it("times a cooperative lock wait, and still calls the store's own on_event", function()
        local s = assert(st:create {})
        local coop = helpers.reopen(where, { durable = false, metrics = m, lock_wait_ms = 20000,
          sleep = function(secs) helpers.sleep(secs) end })
        hold_for_a_while(s, "held")
        assert(coop:verify_code(s.sid, s.secondaryCode))
        local t = samples(m:render())
        assert.are.equal(1, t["pairstore_lock_wait_seconds_count"])
        assert.is_true(t["pairstore_lock_wait_seconds_sum"] >= 0.2, t["pairstore_lock_wait_seconds_sum"])
        assert.is_true(t["pairstore_lock_wait_seconds_sum"] < 20)
        assert.are.equal(0, t['pairstore_lock_wait_seconds_bucket{le="0.1"}'])
        assert.are.equal(1, t['pairstore_lock_wait_seconds_bucket{le="+Inf"}'])
        -- an uncontended operation records no wait
        assert(coop:get(s.sid))
        assert.are.equal(1, samples(m:render())["pairstore_lock_wait_seconds_count"])
      end)

      it("times a lock wait inside the core (the blocking path), and no wait when uncontended", function()
        local s = assert(st:create {})
        local blocking = helpers.reopen(where, { durable = false, metrics = m, lock_wait_ms = 20000, sleep = false })
        assert(blocking:get(s.sid)) -- (a connection made, the file read: not a wait)
        assert(blocking:update(s.sid, function() end))
        assert.are.equal(0, samples(m:render())["pairstore_lock_wait_seconds_count"])
        hold_for_a_while(s, "held2")
        assert(blocking:verify_code(s.sid, s.secondaryCode))
        local t = samples(m:render())
        assert.are.equal(1, t["pairstore_lock_wait_seconds_count"])
        assert.is_true(t["pairstore_lock_wait_seconds_sum"] >= 0.2, t["pairstore_lock_wait_seconds_sum"])
        assert.is_true(t["pairstore_lock_wait_seconds_sum"] < 20)
        assert.are.equal(0, t['pairstore_lock_wait_seconds_bucket{le="0.1"}'])
        assert(blocking:get(s.sid))
        assert(blocking:update(s.sid, function() end))
        assert.are.equal(1, samples(m:render())["pairstore_lock_wait_seconds_count"])
        blocking:close()
      end)

      it("counts events and sessions pruned", function()
        local clock = helpers.clock(os.time() * 1000)
        local timed = helpers.reopen(where, { durable = false, metrics = m, now = clock.now,
          on_event = function(name) events[#events + 1] = name end })
        local a = assert(timed:create {})
        assert(timed:reject(a.sid))
        clock.advance(pairstore.TERMINAL_RETENTION_MS + 1000)
        assert.are.equal(1, timed:prune())
        if backend == "file" then
          helpers.write(where.path, "{not json")
          assert(timed:create {}) -- a write moves the corrupt file aside
        end
        local s = samples(m:render())
        assert.are.equal(1, s['pairstore_events_total{event="pruned"}'])
        assert.are.equal(backend == "file" and 1 or 0, s['pairstore_events_total{event="corrupt"}'])
        if backend == "file" then assert.are.same({ "corrupt" }, events) end
        local ok, out = promtool(m:render())
        assert.is_true(ok, out)
      end)
    end)
  end)
end
