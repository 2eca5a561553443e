-- The store's operations against the reference behaviour, with an injected clock.
local pairstore = require "pairstore"
local crypto = require "pairstore.crypto"
local helpers = require "helpers"
local selfcheck = require("pairstore.core").test_hooks().selfcheck

local T0 = 1764300000000

-- A file store in a fresh temp directory: store, clock, path, dir (the file-only specs).
local function setup_file(opts)
  local dir = helpers.tmpdir()
  local clock = helpers.clock(T0)
  local o = { now = clock.now, durable = false }
  for k, v in pairs(opts or {}) do o[k] = v end
  local path = dir .. "/pair-sessions.json"
  return pairstore.open(path, o), clock, path, dir
end

-- A fresh store of backend: store, clock, where (see helpers.open_store).
local function setup_on(backend, opts)
  local clock = helpers.clock(T0)
  local o = { now = clock.now, durable = false }
  for k, v in pairs(opts or {}) do o[k] = v end
  local store, where = helpers.open_store(backend, o)
  return store, clock, where
end

-- nil, message, code with message == code (domain outcomes)
local function assert_outcome(code, ...)
  local v, msg, c = ...
  assert.is_nil(v)
  assert.are.equal(code, msg)
  assert.are.equal(code, c)
  assert.are.equal(3, select("#", ...))
end

for _, backend in ipairs(helpers.backends()) do
  describe("[" .. backend .. "]", function()
    local function setup(opts) return setup_on(backend, opts) end

    describe("store:create()", function()
      after_each(helpers.cleanup)

      it("creates an awaiting_scan session with the reference's fields", function()
        local store, _, where = setup()
        local s = assert(store:create { mode = "import", operator = { channel = "telegram", senderId = "u1", accountId = "a1" } })
        assert.matches("^%x+$", s.sid)
        assert.are.equal(32, #s.sid)
        assert.are.equal(s.sid:lower(), s.sid)
        assert.are.equal(43, #s.skGatewayB64)
        assert.are.equal(43, #s.pkGatewayB64)
        assert.matches("^[%w_-]+$", s.skGatewayB64)
        assert.are.equal(crypto.public_key(s.skGatewayB64), s.pkGatewayB64)
        assert.are.equal(T0, s.createdAtMs)
        assert.are.equal(T0 + 900000, s.expiresAtMs)
        assert.matches("^%d%d%d%d%d%d$", s.secondaryCode)
        assert.are.equal(0, s.secondaryCodeAttempts)
        assert.are.same({ channel = "telegram", senderId = "u1", accountId = "a1" }, s.operatorContext)
        assert.are.equal("import", s.mode)
        assert.are.equal("awaiting_scan", s.status)
        assert.are.equal(T0, s.lastStatusChangeAtMs)
        for _, k in ipairs { "createdAtMs", "expiresAtMs", "secondaryCodeAttempts", "lastStatusChangeAtMs" } do
          assert.is_true(helpers.is_integer(s[k]))
        end
        -- as stored: compact, reference key order, no trailing newline (the file's text; the
        -- row's body for PostgreSQL, the same session text without the envelope)
        local file = backend == "file"
        local text = file and helpers.read(where.path) or helpers.stored_body(where, s.sid)
        assert.are.equal(((file and '{"version":1,"sessions":[' or '') ..
          '{"sid":"%s","skGatewayB64":"%s","pkGatewayB64":"%s",' ..
          '"createdAtMs":%d,"expiresAtMs":%d,"secondaryCode":"%s","secondaryCodeAttempts":0,' ..
          '"operatorContext":{%s},"mode":"import","status":"awaiting_scan","lastStatusChangeAtMs":%d}' ..
          (file and ']}' or '')):format(
          s.sid, s.skGatewayB64, s.pkGatewayB64, T0, T0 + 900000, s.secondaryCode,
          text:match('"operatorContext":{(.-)}'), T0), text)
        assert.are.same(s.operatorContext, helpers.stored(where, s.sid).operatorContext)
      end)

      if backend == "file" then it("writes the file 0600 in a 0700 directory and leaves no temp or lock behind", function()
        local dir = helpers.tmpdir()
        local path = dir .. "/a/b/c/pair-sessions.json"
        local store = pairstore.open(path, { durable = true })
        assert(store:create { operator = { channel = "cli" } })
        assert.are.equal("600", helpers.mode(path))
        assert.are.equal("700", helpers.mode(dir .. "/a"))
        assert.are.equal("700", helpers.mode(dir .. "/a/b"))
        assert.are.equal("700", helpers.mode(dir .. "/a/b/c"))
        store:close() -- removes the lock sentinel it keeps parked between transactions
        assert.are.same({ "pair-sessions.json" }, helpers.ls(dir .. "/a/b/c"))
      end) end

      it("clamps the TTL", function()
        local store = setup()
        assert.are.equal(300000, store:create { ttl_ms = 1000 }.expiresAtMs - T0)
        assert.are.equal(3600000, store:create { ttl_ms = 1e12 }.expiresAtMs - T0)
        assert.are.equal(900000, store:create { ttl_ms = -1 }.expiresAtMs - T0)
        assert.are.equal(600000, store:create { ttl_ms = 600000 }.expiresAtMs - T0)
      end)

      it("appends sessions in creation order", function()
        local store, clock, where = setup()
        local a = store:create {}
        clock.advance(5)
        local b = store:create {}
        local stored = helpers.stored_sessions(where)
        assert.are.equal(a.sid, stored[1].sid)
        assert.are.equal(b.sid, stored[2].sid)
      end)

      it("draws distinct sids and keys, and codes over the whole range (leading zeros too)", function()
        local store = setup({ max_sessions = 5000 })
        local sids, keys, leading_zero, high = {}, {}, 0, 0
        for _ = 1, 200 do
          local s = store:create {}
          assert.is_nil(sids[s.sid])
          assert.is_nil(keys[s.skGatewayB64])
          sids[s.sid], keys[s.skGatewayB64] = true, true
          if s.secondaryCode:sub(1, 1) == "0" then leading_zero = leading_zero + 1 end
          if s.secondaryCode:sub(1, 1) == "9" then high = high + 1 end
        end
        -- each has probability 1/10 per draw: missing both in 200 draws is ~1e-9
        assert.is_true(leading_zero > 0 and high > 0)
      end)

      it("uses the rng hooks when given", function()
        local fixture = helpers.json.decode(helpers.read(helpers.FIXTURES .. "/pairing-vectors.json"))
        local kp = fixture.keypairs[1]
        local sk_raw = helpers.b64u_decode(kp.sk_b64u)
        local store = setup({ rng = {
          sid = function() return ("\0\17\34\51\68\85\102\119\136\153\170\187\204\221\238\255") end,
          secret_key = function() return sk_raw end,
          code = function() return "042917" end,
        } })
        local s = assert(store:create {})
        assert.are.equal("00112233445566778899aabbccddeeff", s.sid)
        assert.are.equal(kp.sk_b64u, s.skGatewayB64)
        assert.are.equal(kp.pk_b64u, s.pkGatewayB64)
        assert.are.equal("042917", s.secondaryCode)
        -- the same sid again is refused
        local v, msg, code = store:create {}
        assert.is_nil(v)
        assert.are.equal("invalid", code)
        assert.matches("already in use", msg)
      end)

      it("raises on bad arguments and bad hook output", function()
        local store = setup()
        assert.has_error(function() store:create "generate" end)
        assert.has_error(function() store:create { mode = "export" } end)
        assert.has_error(function() store:create { operator = "cli" } end)
        assert.has_error(function() store:create { operator = { channel = 5 } } end)
        assert.has_error(function() store:create { operator = { channel = "cli", senderId = 5 } } end)
        assert.has_error(function() store:create { ttl_ms = "900000" } end)
        local bad = setup({ rng = { code = function() return "12345" end } })
        assert.has_error(function() bad:create {} end)
        local bad2 = setup({ rng = { sid = function() return "short" end } })
        assert.has_error(function() bad2:create {} end)
      end)

      it("refuses more than max_sessions live sessions with code limit", function()
        local store = setup({ max_sessions = 3 })
        local a = store:create {}
        store:create {}
        store:create {}
        local v, msg, code = store:create {}
        assert.is_nil(v)
        assert.are.equal("limit", code)
        assert.matches("max_sessions", msg)
        -- terminal sessions do not count
        assert(store:reject(a.sid))
        assert(store:create {})
      end)
    end)

    describe("store:get()", function()
      after_each(helpers.cleanup)

      it("returns a copy of the session, terminal ones too", function()
        local store = setup()
        local s = store:create {}
        local g = assert(store:get(s.sid))
        assert.are.same(s, g)
        g.status = "completed"
        g.operatorContext.channel = "x"
        assert.are.same(s, store:get(s.sid))
        assert(store:reject(s.sid))
        assert.are.equal("rejected", store:get(s.sid).status)
      end)

      it("returns nil, 'not_found' for an absent sid, also with no file", function()
        local store, _, where = setup()
        assert_outcome("not_found", store:get("00112233445566778899aabbccddeeff"))
        if backend == "file" then assert.is_false(helpers.exists(where.path)) end
      end)

      it("raises on a non-string sid", function()
        local store = setup()
        assert.has_error(function() store:get(42) end)
        assert.has_error(function() store:get() end)
      end)
    end)

    describe("pruning", function()
      after_each(helpers.cleanup)

      it("expires a session only after expiresAtMs, stamping the moment it expired", function()
        local store, clock = setup()
        local s = store:create {}
        clock.set(s.expiresAtMs)
        assert.are.equal("awaiting_scan", store:get(s.sid).status)
        clock.set(s.expiresAtMs + 1)
        local g = store:get(s.sid)
        assert.are.equal("expired", g.status)
        assert.are.equal(s.expiresAtMs, g.lastStatusChangeAtMs)
      end)

      it("deletes terminal sessions strictly after the retention", function()
        local store, clock = setup()
        local s = store:create {}
        clock.advance(1000)
        store:reject(s.sid)
        local changed = T0 + 1000
        clock.set(changed + 3600000)
        assert.are.equal("rejected", store:get(s.sid).status)
        clock.set(changed + 3600001)
        assert_outcome("not_found", store:get(s.sid))
      end)

      it("retains an expired session for an hour from its expiry", function()
        local store, clock = setup()
        local s = store:create {}
        clock.set(s.expiresAtMs + 3600000)
        assert.are.equal("expired", store:get(s.sid).status)
        clock.set(s.expiresAtMs + 3600001)
        assert_outcome("not_found", store:get(s.sid))
      end)

      if backend == "file" then it("reads write back only when pruning deleted something", function()
        local store, clock, where = setup()
        local path = where.path
        local s = store:create {}
        local before = helpers.read(path)
        clock.set(s.expiresAtMs + 1)
        store:get(s.sid) -- expired in memory only
        assert.are.equal(before, helpers.read(path))
        store:list_all()
        assert.are.equal(before, helpers.read(path))
        clock.set(s.expiresAtMs + 3600001)
        store:get(s.sid)
        assert.are.equal('{"version":1,"sessions":[]}', helpers.read(path))
      end) end

      it("store:prune() returns the number removed and writes expirations", function()
        local store, clock, where = setup()
        local a = store:create {}
        clock.advance(10)
        local b = store:create {}
        store:reject(b.sid)
        assert.are.equal(0, store:prune())
        clock.set(a.expiresAtMs + 1)
        assert.are.equal(0, store:prune())
        assert.are.equal("expired", helpers.stored(where, a.sid).status)
        clock.set(T0 + 10 + 3600001)
        assert.are.equal(1, store:prune())
        clock.set(a.expiresAtMs + 3600001)
        assert.are.equal(1, store:prune())
        assert.are.equal(0, #store:list_all())
        assert.are.same({}, helpers.stored_sessions(where))
        if backend == "file" then assert.are.equal('{"version":1,"sessions":[]}', helpers.read(where.path)) end
      end)
    end)

    describe("store:update()", function()
      after_each(helpers.cleanup)

      it("stores the copy the mutator edited in place", function()
        local store, _, where = setup()
        local s = store:create {}
        local r = assert(store:update(s.sid, function(x) x.note = "hi"; x.secondaryCodeAttempts = 2 end))
        assert.are.equal("hi", r.note)
        assert.are.equal(2, store:get(s.sid).secondaryCodeAttempts)
        assert.are.equal("hi", helpers.stored(where, s.sid).note)
      end)

      it("stores a returned replacement, and copies it", function()
        local store = setup()
        local s = store:create {}
        local keep
        local r = assert(store:update(s.sid, function(x)
          keep = { }
          for k, v in pairs(x) do keep[k] = v end
          keep.mode = "import"
          return keep
        end))
        assert.are.equal("import", r.mode)
        keep.mode = "generate"
        assert.are.equal("import", store:get(s.sid).mode)
      end)

      it("removes the session when the mutator returns false", function()
        local store = setup()
        local s = store:create {}
        assert.is_false(store:update(s.sid, function() return false end))
        assert_outcome("not_found", store:get(s.sid))
      end)

      it("gives the mutator a private copy", function()
        local store = setup()
        local s = store:create {}
        local seen
        assert(store:update(s.sid, function(x) seen = x end))
        seen.status = "completed"
        assert.are.equal("awaiting_scan", store:get(s.sid).status)
      end)

      it("keeps unknown fields and nested values", function()
        local store, _, where = setup()
        local s = store:create {}
        store:update(s.sid, function(x) x.meta = { tags = { "a", "b" }, n = 3, ok = true } end)
        local d = helpers.stored(where, s.sid)
        assert.are.same({ "a", "b" }, d.meta.tags)
        assert.are.equal(true, d.meta.ok)
        assert.are.equal("a", store:get(s.sid).meta.tags[1])
      end)

      it("fails with 'callback' and a traceback when the mutator raises, storing nothing", function()
        local store, _, where = setup()
        local s = store:create {}
        local before = helpers.snapshot(where)
        local v, msg, code = store:update(s.sid, function(x) x.status = "completed"; error("boom") end)
        assert.is_nil(v)
        assert.are.equal("callback", code)
        assert.matches("boom", msg)
        assert.matches("stack traceback", msg)
        assert.are.equal(before, helpers.snapshot(where))
        if backend == "file" then assert.are.same({ "pair-sessions.json" }, helpers.ls_live(where.dir)) end
        assert(store:get(s.sid)) -- lock released
      end)

      it("raises when the mutator yields (a programming error), changing nothing", function()
        local store, _, where = setup()
        local s = store:create {}
        local before = helpers.snapshot(where)
        local co = coroutine.create(function()
          return store:update(s.sid, function(x) x.note = 1; coroutine.yield("y") end)
        end)
        local ok, err = coroutine.resume(co)
        assert.is_false(ok)
        assert.matches("a mutator may not yield", tostring(err))
        assert.are.equal(before, helpers.snapshot(where))
      end)

      it("makes store calls from inside the mutator fail at once with 'reentrant'", function()
        local store, clock, where = setup({ lock_wait_ms = 5000 })
        local s = store:create {}
        local other = helpers.reopen(where, { now = clock.now })
        local inner = {}
        local t0 = helpers.mono()
        assert(store:update(s.sid, function(x)
          inner[1] = { store:get(s.sid) }
          inner[2] = { other:create {} }
          inner[3] = { store:update(s.sid, function() end) }
          x.note = "outer"
        end))
        assert.is_true(helpers.mono() - t0 < 4, "at once, not after lock_wait_ms") -- (valgrind)
        for i = 1, 3 do
          assert.is_nil(inner[i][1])
          assert.are.equal("reentrant", inner[i][3])
        end
        assert.are.equal("outer", store:get(s.sid).note)
      end)

      if backend == "file" then it("knows the same file under another spelling of its path", function()
        local store, clock, where = setup({ lock_wait_ms = 5000 })
        local dir = where.dir
        local s = store:create {}
        os.execute("mkdir " .. helpers.sh_quote(dir .. "/sub"))
        local other = pairstore.open(dir .. "/.//sub/../pair-sessions.json", { now = clock.now })
        assert.are.equal(dir .. "/sub/../pair-sessions.json", other.path) -- "." and "//" tidied, ".." kept
        local inner
        local t0 = os.clock()
        assert(store:update(s.sid, function() inner = { other:get(s.sid) } end))
        assert.is_true(os.clock() - t0 < 1)
        assert.are.equal("reentrant", inner[3])
      end) end

      it("refuses an invalid result with 'invalid' and stores nothing", function()
        local store, _, where = setup()
        local s = store:create {}
        local before = helpers.snapshot(where)
        local bad = {
          function(x) x.sid = "00000000000000000000000000000000" end,
          function(x) x.secondaryCode = "12345" end,
          function(x) x.mode = "other" end,
          function(x) x.status = 5 end,
          function(x) x.createdAtMs = "now" end,
          function(x) x.expiresAtMs = -1 / 0 end,
          function(x) x.operatorContext = "cli" end,
          function(x) x.f = function() end end,
          function(x) x.n = 0 / 0 end,
          function(x) x.n = 1 / 0 end,
          function(x) x[1] = "array part" end,
          function(x)
            local t = {}
            for _ = 1, 600 do t = { t } end
            x.deep = t
          end,
          function() return 42 end,
          function() return "x" end,
          function() return true end,
        }
        for i, fn in ipairs(bad) do
          local v, msg, code = store:update(s.sid, fn)
          assert.is_nil(v, "case " .. i)
          assert.are.equal("invalid", code, "case " .. i .. ": " .. tostring(msg))
          assert.are.equal(before, helpers.snapshot(where), "case " .. i)
        end
      end)

      it("turns integral floats into integers", function()
        local store = setup()
        local s = store:create {}
        local r = store:update(s.sid, function(x) x.expiresAtMs = x.expiresAtMs + 0.0 end)
        assert.is_true(helpers.is_integer(r.expiresAtMs))
      end)

      it("returns nil, 'not_found' for an absent sid and raises without a function", function()
        local store = setup()
        assert_outcome("not_found", store:update("ffffffffffffffffffffffffffffffff", function() end))
        assert.has_error(function() store:update("ffffffffffffffffffffffffffffffff") end)
      end)
    end)

    describe("store:transition()", function()
      after_each(helpers.cleanup)

      local allowed = {
        awaiting_scan = { device_connected = true, consumed = true, expired = true, rejected = true },
        device_connected = { consumed = true, expired = true, rejected = true },
        consumed = { completed = true, rejected = true },
        completed = {}, expired = {}, rejected = {},
      }

      local function session_in(store, clock, status)
        local s = store:create {}
        if status == "awaiting_scan" then return s end
        if status == "expired" then
          assert(store:transition(s.sid, "expired"))
          return s
        end
        if status == "device_connected" or status == "consumed" or status == "completed" then
          assert(store:transition(s.sid, "device_connected"))
          if status ~= "device_connected" then assert(store:consume(s.sid)) end
          if status == "completed" then assert(store:transition(s.sid, "completed")) end
        elseif status == "rejected" then
          assert(store:reject(s.sid))
        end
        clock.advance(1)
        return s
      end

      for from, targets in pairs(allowed) do
        for _, to in ipairs(pairstore.STATUSES) do
          if to ~= from then
            it(("%s %s -> %s"):format(targets[to] and "allows" or "refuses", from, to), function()
              local store, clock = setup()
              local s = session_in(store, clock, from)
              assert.are.equal(from, store:get(s.sid).status)
              clock.advance(7)
              local v, msg, code = store:transition(s.sid, to)
              if targets[to] then
                assert.are.equal(to, v.status)
                assert.are.equal(clock.t, v.lastStatusChangeAtMs)
              else
                assert.is_nil(v)
                assert.are.equal("illegal_transition", msg)
                assert.are.equal("illegal_transition", code)
                assert.are.equal(from, store:get(s.sid).status)
              end
            end)
          end
        end
      end

      it("is a no-op for the same status, timestamp unchanged", function()
        local store, clock = setup()
        local s = store:create {}
        clock.advance(50)
        local v = store:transition(s.sid, "awaiting_scan")
        assert.are.equal(T0, v.lastStatusChangeAtMs)
        store:reject(s.sid)
        clock.advance(50)
        assert.are.equal(T0 + 50, store:transition(s.sid, "rejected").lastStatusChangeAtMs)
      end)

      it("raises on an unknown status", function()
        local store = setup()
        local s = store:create {}
        assert.has_error(function() store:transition(s.sid, "done") end)
        assert.has_error(function() store:transition(s.sid) end)
      end)
    end)

    describe("store:register_failed_code()", function()
      after_each(helpers.cleanup)

      it("counts, and rejects on the fifth", function()
        local store, clock = setup()
        local s = store:create {}
        for i = 1, 4 do
          local r = store:register_failed_code(s.sid)
          assert.are.equal(i, r.secondaryCodeAttempts)
          assert.are.equal("awaiting_scan", r.status)
        end
        clock.advance(99)
        local r = store:register_failed_code(s.sid)
        assert.are.equal(5, r.secondaryCodeAttempts)
        assert.are.equal("rejected", r.status)
        assert.are.equal(T0 + 99, r.lastStatusChangeAtMs)
      end)

      it("stops counting once the session is terminal, and leaves its clock alone", function()
        local store, clock = setup()
        local s = store:create {}
        for _ = 1, 5 do store:register_failed_code(s.sid) end
        clock.advance(1000)
        local r = store:register_failed_code(s.sid)
        assert.are.equal(5, r.secondaryCodeAttempts)
        assert.are.equal(T0, r.lastStatusChangeAtMs)
      end)
    end)

    describe("store:verify_code()", function()
      after_each(helpers.cleanup)

      local function fixed(store_opts)
        local o = store_opts or {}
        o.rng = { code = function() return "042917" end }
        return setup(o)
      end

      it("moves awaiting_scan to device_connected on the right code", function()
        local store, clock = fixed()
        local s = store:create {}
        clock.advance(3)
        local r = assert(store:verify_code(s.sid, "042917"))
        assert.are.equal("device_connected", r.status)
        assert.are.equal(T0 + 3, r.lastStatusChangeAtMs)
        clock.advance(3)
        r = assert(store:verify_code(s.sid, "042917"))
        assert.are.equal("device_connected", r.status)
        assert.are.equal(T0 + 3, r.lastStatusChangeAtMs)
      end)

      it("returns bad_code without counting for anything but 6 digits", function()
        local store = fixed()
        local s = store:create {}
        for _, c in ipairs { "", "04291", "0429170", "04291a", " 42917", "04291\0", "٠٤٢٩١٧", 42917 } do
          assert_outcome("bad_code", store:verify_code(s.sid, c))
        end
        assert_outcome("bad_code", store:verify_code("ffffffffffffffffffffffffffffffff", "1"))
        assert.are.equal(0, store:get(s.sid).secondaryCodeAttempts)
        assert.has_error(function() store:verify_code(s.sid, {}) end)
      end)

      it("counts wrong codes, and exhausts on the fifth", function()
        local store = fixed()
        local s = store:create {}
        for i = 1, 4 do
          assert_outcome("wrong_code", store:verify_code(s.sid, "000000"))
          assert.are.equal(i, store:get(s.sid).secondaryCodeAttempts)
        end
        assert_outcome("attempts_exhausted", store:verify_code(s.sid, "000000"))
        assert.are.equal("rejected", store:get(s.sid).status)
        assert_outcome("rejected", store:verify_code(s.sid, "042917"))
        assert_outcome("rejected", store:verify_code(s.sid, "000000"))
        assert.are.equal(5, store:get(s.sid).secondaryCodeAttempts)
      end)

      it("reports not_found, expired and already_consumed", function()
        local store, clock = fixed()
        local s = store:create {}
        assert_outcome("not_found", store:verify_code("00000000000000000000000000000000", "042917"))
        local c = store:create {}
        store:transition(c.sid, "device_connected")
        store:consume(c.sid)
        assert_outcome("already_consumed", store:verify_code(c.sid, "042917"))
        store:transition(c.sid, "completed")
        assert_outcome("already_consumed", store:verify_code(c.sid, "000000"))
        assert.are.equal(0, store:get(c.sid).secondaryCodeAttempts)
        clock.set(s.expiresAtMs + 1)
        assert_outcome("expired", store:verify_code(s.sid, "042917"))
      end)
    end)

    describe("store:consume()", function()
      after_each(helpers.cleanup)

      it("returns the record as it was before and stores it consumed", function()
        local store, clock = setup()
        local s = store:create {}
        store:transition(s.sid, "device_connected")
        clock.advance(10)
        local before = assert(store:consume(s.sid))
        assert.are.equal("device_connected", before.status)
        local after = store:get(s.sid)
        assert.are.equal("consumed", after.status)
        assert.are.equal(T0 + 10, after.lastStatusChangeAtMs)
      end)

      it("is single-use", function()
        local store = setup()
        local s = store:create {}
        assert(store:consume(s.sid))
        assert_outcome("already_consumed", store:consume(s.sid))
        store:transition(s.sid, "completed")
        assert_outcome("already_consumed", store:consume(s.sid))
      end)

      it("checks expiry first, then consumed, then rejected/expired", function()
        local store, clock = setup()
        local a = store:create {}
        local b = store:create {}
        store:reject(b.sid)
        assert_outcome("rejected", store:consume(b.sid))
        local c = store:create {}
        store:transition(c.sid, "expired")
        assert_outcome("expired", store:consume(c.sid))
        local d = store:create {}
        assert(store:consume(d.sid))
        assert(store:transition(d.sid, "completed"))
        clock.set(a.expiresAtMs + 1)
        assert_outcome("expired", store:consume(a.sid))
        -- a completed session past its expiry reports expired, and keeps its status
        assert_outcome("expired", store:consume(d.sid))
        assert.are.equal("completed", store:get(d.sid).status)
        assert.are.equal("rejected", store:get(b.sid).status)
        assert_outcome("not_found", store:consume("ffffffffffffffffffffffffffffffff"))
      end)
    end)

    describe("store:reject()", function()
      after_each(helpers.cleanup)

      it("rejects live sessions and refuses completed ones", function()
        local store = setup()
        local s = store:create {}
        assert.are.equal("rejected", store:reject(s.sid).status)
        local c = store:create {}
        store:consume(c.sid)
        store:transition(c.sid, "completed")
        local v, msg, code = store:reject(c.sid)
        assert.is_nil(v)
        assert.are.equal("illegal_transition", msg)
        assert.are.equal("illegal_transition", code)
        assert_outcome("not_found", store:reject("ffffffffffffffffffffffffffffffff"))
      end)
    end)

    describe("store:list_active() and store:list_all()", function()
      after_each(helpers.cleanup)

      it("lists copies ordered by createdAtMs then sid", function()
        local sids = { "\255", "\1", "\128" }
        local i = 0
        local store, clock = setup({ rng = { sid = function() i = i + 1; return ("\0"):rep(15) .. sids[(i - 1) % 3 + 1] end } })
        local a = store:create {}       -- ...ff at T0
        local b = store:create {}       -- ...01 at T0
        clock.advance(1)
        local c = store:create {}       -- ...80 at T0+1
        store:reject(a.sid)
        local all = store:list_all()
        assert.are.same({ b.sid, a.sid, c.sid }, { all[1].sid, all[2].sid, all[3].sid })
        local active = store:list_active()
        assert.are.same({ b.sid, c.sid }, { active[1].sid, active[2].sid })
        active[1].status = "rejected"
        assert.are.equal("awaiting_scan", store:get(b.sid).status)
        assert.are.equal(0, #setup():list_all())
      end)

      if backend == "file" then it("orders a file whose sessions are not in creation order (hand-edited, or the reference's)", function()
        local store, clock, where = setup()
        local path = where.path
        local made = {}
        for k = 1, 5 do
          made[k] = store:create {}.sid
          clock.advance(10)
        end
        local doc = helpers.read_json(path)
        local reversed = {}
        for k = #doc.sessions, 1, -1 do reversed[#reversed + 1] = doc.sessions[k] end
        doc.sessions = reversed
        helpers.write(path, helpers.json.encode(doc))
        for _, list in ipairs { store:list_all(), store:list_active() } do
          local got = {}
          for k, x in ipairs(list) do got[k] = x.sid end
          assert.are.same(made, got)
        end
      end) end

      it("counts device_connected as active and expired sessions as not", function()
        local store, clock = setup()
        local a = store:create {}
        clock.advance(100000)
        local b = store:create {}
        store:transition(b.sid, "device_connected")
        clock.set(a.expiresAtMs + 1)
        local active = store:list_active()
        assert.are.equal(1, #active)
        assert.are.equal(b.sid, active[1].sid)
        assert.are.equal(2, #store:list_all())
      end)
    end)

    describe("store:export() and store:import()", function()
      after_each(helpers.cleanup)

      it("export gives every session's text as stored, in list_all order", function()
        local store, clock = setup()
        local a = assert(store:create {})
        clock.advance(5)
        local b = assert(store:create {})
        assert(store:update(a.sid, function(x) x.extra = { n = 3, big = helpers.compat.maxinteger, s = "\195\169" } end))
        local texts = assert(store:export())
        assert.are.equal(2, #texts)
        local all = store:list_all()
        for k, t in ipairs(texts) do
          assert.are.equal("string", type(t))
          local d = helpers.json.decode(t) -- (cjson: every number a float)
          assert.are.equal(all[k].sid, d.sid)
          assert.are.equal(all[k].secondaryCode, d.secondaryCode)
          assert.are.equal(all[k].createdAtMs, d.createdAtMs)
        end
        assert.are.equal(a.sid, helpers.json.decode(texts[1]).sid)
        assert.are.equal(b.sid, helpers.json.decode(texts[2]).sid)
        -- (5.1 and LuaJIT: maxinteger is the largest double below 2^63)
        local big = helpers.compat.has_integers and "9223372036854775807" or "9223372036854774784"
        assert.matches('"big":' .. big, texts[1], 1, true)
      end)

      it("import adds what is missing in one transaction, counts identical texts, refuses a conflict", function()
        local src, clock = setup()
        for _ = 1, 3 do assert(src:create {}) clock.advance(1) end
        local texts = assert(src:export())
        local dst = setup()
        local added, same = dst:import(texts)
        assert.are.same({ 3, 0 }, { added, same })
        assert.are.same(texts, assert(dst:export()))
        assert.are.same({ 0, 3 }, { dst:import(texts) }) -- safe to run twice
        -- one text differs for a sid the store has: nothing of the call is imported
        local fresh = assert(src:create {})
        local changed = assert(src:update(helpers.json.decode(texts[1]).sid, function(x) x.note = "changed" end))
        assert.is_table(changed)
        local again = assert(src:export())
        local before = assert(dst:export())
        local r, msg, code = dst:import(again)
        assert.is_nil(r)
        assert.are.equal("conflict", code, tostring(msg))
        assert.are.same(before, assert(dst:export()))
        assert.are.equal("not_found", select(3, dst:get(fresh.sid)))
      end)

      it("import validates each text as a session", function()
        local store = setup()
        for _, bad in ipairs { "{", "[]", '{"sid":"x"}', "null" } do
          local r, _, code = store:import { bad }
          assert.is_nil(r, bad)
          assert.is_string(code)
        end
        assert.are.same({}, assert(store:export()))
      end)
    end)

    describe("the sid index and the live count", function()
      after_each(helpers.cleanup)

      -- Random operations (fixed seeds: reproducible) on one store, with another store of the same
      -- file changing it now and then (so the array is parsed again) and time moving on (so
      -- sessions expire and are removed). After every call the index and the live count must
      -- agree with a recount (the file engine's selfcheck), and max_sessions must refuse exactly
      -- when the live count is full (both backends).
      for _, seed in ipairs { 1, 2, 3 } do
        it("stay exact through every kind of change (seed " .. seed .. ")", function()
          math.randomseed(seed)
          local MAX = 12
          local store, clock, where = setup({ max_sessions = MAX })
          local other = helpers.reopen(where, { now = clock.now, durable = false, max_sessions = 1000 })
          local sids, codes, checked = {}, {}, 0
          local function pick() return sids[math.random(#sids)] end
          local function live_now()
            local n = 0
            for _, x in ipairs(assert(other:list_all())) do
              if not pairstore.is_terminal(x.status) then n = n + 1 end
            end
            return n
          end
          local ops = {
            function()
              local live = live_now()
              local s, _, code = store:create { ttl_ms = math.random(1, 4) * 60000 }
              if live < MAX then
                assert.is_table(s)
                sids[#sids + 1], codes[s.sid] = s.sid, s.secondaryCode
              else
                assert.are.equal("limit", code)
              end
            end,
            function() store:update(pick(), function() return false end) end,
            function() store:update(pick(), function(x) x.status = "rejected" end) end,
            function() store:update(pick(), function(x) x.status = "awaiting_scan"; x.n = math.random(9) end) end,
            function() store:update(pick(), function(x) x.n = (x.n or 0) + 1 end) end,
            function() store:transition(pick(), "device_connected") end,
            function() store:reject(pick()) end,
            function() store:register_failed_code(pick()) end,
            function() local sid = pick(); store:verify_code(sid, codes[sid] or "000000") end,
            function() store:verify_code(pick(), "999999") end,
            function() store:consume(pick()) end,
            function() store:prune() end,
            function() clock.advance(math.random(0, 3) * 60000) end,
            function() clock.advance(math.floor(pairstore.TERMINAL_RETENTION_MS / 2)) end,
            function() local sid = pick(); other:update(sid, function(x) x.m = 1 end) end,
            function() other:create {} end,
          }
          for _ = 1, 400 do
            if #sids == 0 then ops[1]() else ops[math.random(#ops)]() end
            if backend == "file" then
              local ok, why = selfcheck(store._core)
              assert(ok, why)
              if why == "indexed" then checked = checked + 1 end
            end
          end
          if backend == "file" then assert.is_true(checked > 100, "index checked " .. checked .. " times") end
        end)
      end
    end)
  end)
end

-- File-only: what the sessions file and its cache hold, byte for byte.

describe("events", function()
  after_each(helpers.cleanup)

  it("never carry secrets, and a failing listener changes nothing", function()
    local events = {}
    local store, _, path = setup_file({ on_event = function(name, info)
      events[#events + 1] = { name, info }
      error("listener bug")
    end })
    local s = store:create {}
    helpers.write(path, "{not json " .. s.skGatewayB64 .. " " .. s.secondaryCode)
    local v, msg = store:get(s.sid) -- a read: refused, nothing moved, no event
    assert.is_nil(v)
    assert.is_nil(msg:find(s.skGatewayB64, 1, true))
    assert.is_nil(msg:find(s.secondaryCode, 1, true))
    assert.are.equal(0, #events)
    assert_outcome("not_found", store:consume(s.sid)) -- a write moves it aside
    assert.are.equal(1, #events)
    assert.are.equal("corrupt", events[1][1])
    local flat = helpers.json.encode(events[1][2])
    assert.is_nil(flat:find(s.skGatewayB64, 1, true))
    assert.is_nil(flat:find(s.secondaryCode, 1, true))
  end)
end)

describe("the parsed-file cache", function()
  after_each(helpers.cleanup)

  it("sees every change made through another store object", function()
    local a, clock, path = setup_file()
    local b = pairstore.open(path, { now = clock.now, durable = false })
    local s = a:create {}
    assert.are.equal(s.sid, b:get(s.sid).sid)
    for i = 1, 20 do
      local w, r = (i % 2 == 0) and a or b, (i % 2 == 0) and b or a
      assert(w:update(s.sid, function(x) x.n = i end))
      assert.are.equal(i, r:get(s.sid).n)
    end
  end)

  it("sees an edit from outside that keeps the size and the mtime", function()
    local store, _, path = setup_file()
    local s = store:create {}
    assert.are.equal(0, store:get(s.sid).secondaryCodeAttempts)
    local text = helpers.read(path)
    local edited = text:gsub('"secondaryCodeAttempts":0', '"secondaryCodeAttempts":3')
    assert.are.equal(#text, #edited)
    os.execute("touch -r " .. helpers.sh_quote(path) .. " " .. helpers.sh_quote(path .. ".ref"))
    helpers.write(path, edited)
    os.execute("touch -r " .. helpers.sh_quote(path .. ".ref") .. " " .. helpers.sh_quote(path))
    os.remove(path .. ".ref")
    assert.are.equal(3, store:get(s.sid).secondaryCodeAttempts)
  end)

  -- The descriptors this process holds on `path`: { fd = flags (octal text of fdinfo) }.
  local function handles_on(path)
    local pid = io.open("/proc/self/stat"):read("*l"):match("^(%d+)")
    local found = {}
    local ls = io.popen("ls -l /proc/" .. pid .. "/fd 2>/dev/null")
    for line in ls:lines() do
      local fd, target = line:match("(%d+) %-> (.*)$")
      if fd and (target == path or target == path .. " (deleted)") then
        local info = io.open("/proc/" .. pid .. "/fdinfo/" .. fd)
        found[tonumber(fd)] = info and info:read("*a"):match("flags:%s*(%d+)") or "?"
        if info then info:close() end
      end
    end
    ls:close()
    return found
  end

  it("pins the file it wrote with a handle that can neither read nor write, and lets go", function()
    local store, clock, path = setup_file()
    local s = store:create {}
    local function count() local k = 0 for _ in pairs(handles_on(path)) do k = k + 1 end return k end
    for _, flags in pairs(handles_on(path)) do
      assert.are_not.equal(0, helpers.compat.band(tonumber(flags, 8), 8 ^ 7), "not O_PATH: flags " .. flags)
    end
    assert.are.equal(1, count())
    -- a store that only reads pins nothing (it would pay for freeing the file once replaced)
    local other = pairstore.open(path, { durable = false, now = clock.now })
    assert(other:list_all())
    assert.are.equal(1, count())
    -- one that writes pins its own file; the first store's pin, now of a replaced file (the
    -- path shows "(deleted)"), is let go on its next call
    assert(other:update(s.sid, function(x) x.n = 1 end))
    assert.are.equal(2, count())
    assert.are.equal(1, store:get(s.sid).n)
    assert.are.equal(1, count())
    other:close()
    assert.are.equal(0, count())
    assert(store:update(s.sid, function(x) x.n = 2 end))
    assert.are.equal(1, count())
    store:close()
    assert.are.same({}, handles_on(path))
  end)

  it("sees a replacement that keeps the size and the mtime, made right after its own write", function()
    local store, _, path, dir = setup_file()
    local s = store:create {}
    for i = 1, 20 do
      assert(store:update(s.sid, function(x) x.n = i % 10 end)) -- same size each time
      local text = helpers.read(path)
      local edited = text:gsub('"n":%d', '"n":' .. (i + 5) % 10)
      assert.are.equal(#text, #edited)
      -- in place (same inode) or by rename (a new inode), with the old mtime put back
      os.execute("touch -r " .. helpers.sh_quote(path) .. " " .. helpers.sh_quote(dir .. "/ref"))
      if i % 2 == 0 then
        helpers.write(path, edited)
      else
        helpers.write(dir .. "/new", edited)
        assert(os.rename(dir .. "/new", path))
      end
      os.execute("touch -r " .. helpers.sh_quote(dir .. "/ref") .. " " .. helpers.sh_quote(path))
      assert.are.equal((i + 5) % 10, store:get(s.sid).n, "round " .. i)
    end
  end)

  it("is dropped when a transaction fails, so memory never drifts from the file", function()
    local store, _, path = setup_file()
    local s = store:create {}
    assert.are.equal("callback", select(3, store:update(s.sid, function(x) x.n = 1; error("no") end)))
    assert.is_nil(store:get(s.sid).n)
    -- a failed commit (the lock taken away) leaves the memory as the file
    assert.are.equal("compromised", select(3, store:update(s.sid, function(x)
      x.n = 2
      os.remove(path .. ".lock")
    end)))
    assert.is_nil(store:get(s.sid).n)
    assert.is_nil(helpers.read_json(path).sessions[1].n)
  end)

  it("keeps integers nested in unknown fields integers, fresh or cached", function()
    local store, clock, path = setup_file()
    local s = store:create {}
    store:update(s.sid, function(x) x.meta = { n = 3, f = 2.5, list = { 1, 2 } } end)
    local cached = store:get(s.sid).meta
    local fresh = pairstore.open(path, { now = clock.now }):get(s.sid).meta
    for _, m in ipairs { cached, fresh } do
      assert.is_true(helpers.is_integer(m.n))
      assert.is_true(helpers.is_integer(m.list[2]))
      assert.are.equal(2.5, m.f)
    end
  end)
end)

describe("the sid index (file)", function()
  after_each(helpers.cleanup)


  it("finds the first of two sessions with the same sid, before and after removals", function()
    local store, clock, path = setup_file()
    local a = store:create {}
    local b = store:create {}
    local doc = helpers.read_json(path)
    local dup = helpers.json.decode(helpers.json.encode(doc.sessions[1]))
    dup.secondaryCodeAttempts = 3 -- the second copy of a's sid differs
    doc.sessions[#doc.sessions + 1] = dup
    helpers.write(path, helpers.json.encode(doc))
    store = pairstore.open(path, { now = clock.now, durable = false })
    assert.are.equal(0, store:get(a.sid).secondaryCodeAttempts)
    assert(selfcheck(store._core))
    assert.is_false(store:update(b.sid, function() return false end))
    assert(selfcheck(store._core))
    assert.are.equal(0, store:get(a.sid).secondaryCodeAttempts)
    assert.is_false(store:update(a.sid, function() return false end))
    assert.are.equal(3, store:get(a.sid).secondaryCodeAttempts) -- the other copy shows now
    assert(selfcheck(store._core))
  end)
end)

describe("errors that are not about the file", function()
  after_each(helpers.cleanup)

  it("propagate out of a read without quarantining a healthy file (e.g. a SIGINT hook)", function()
    local store, clock, path, dir = setup_file()
    local s = store:create {}
    local before = helpers.read(path)
    local other = pairstore.open(path, { now = clock.now })
    -- raise from a call hook at each of the first calls made during the read, in turn
    for n = 1, 12 do
      local k = 0
      local ok, err = pcall(function()
        debug.sethook(function()
          k = k + 1
          if k == n then debug.sethook(); error("interrupted!") end
        end, "c")
        local r = other:get(s.sid)
        debug.sethook()
        return r
      end)
      debug.sethook()
      if not ok then assert.matches("interrupted!", err) end
      assert.are.equal(before, helpers.read(path), "call " .. n)
      assert.are.same({ "pair-sessions.json" }, helpers.ls_live(dir), "call " .. n)
    end
    assert.are.equal(s.sid, other:get(s.sid).sid)
  end)
end)

describe("a mutator that changes nothing", function()
  after_each(helpers.cleanup)

  it("costs no write", function()
    local store, _, path = setup_file()
    local s = store:create {}
    local function inode()
      local _, out = helpers.run("stat -c %i " .. helpers.sh_quote(path))
      return out
    end
    local ino = inode()
    assert.are.same(s, store:update(s.sid, function() end))
    assert.are.same(s, store:update(s.sid, function(x) x.mode = x.mode end))
    assert.are.equal(ino, inode())
    store:update(s.sid, function(x) x.mode = "import" end)
    assert.are_not.equal(ino, inode())
  end)
end)

describe("a store whose file has settled (identity trusted without reading)", function()
  after_each(helpers.cleanup)

  it("still sees every outside change", function()
    if not helpers.have("faketime") then return pending("faketime not installed") end
    local dir = helpers.tmpdir()
    local path = dir .. "/pair-sessions.json"
    -- the child's clock runs an hour ahead, so every file looks settled to it
    local ok, out = helpers.run(("faketime -f +1h env %s %s -e %s"):format(helpers.LUA_ENV, helpers.LUA, helpers.sh_quote(([[
      local store = require("pairstore").open(%q, { durable = false })
      local s = assert(store:create {})
      local seen = 0
      for i = 1, 20 do
        os.execute("sleep 0.02") -- past one tick of the file system's coarse clock
        local text = io.open(%q):read("*a")
        local f = io.open(%q, "w")
        f:write((text:gsub('"secondaryCodeAttempts":%%d', '"secondaryCodeAttempts":' .. (i %% 10))))
        f:close()
        if store:get(s.sid).secondaryCodeAttempts == i %% 10 then seen = seen + 1 end
        if store:get(s.sid).secondaryCodeAttempts == i %% 10 then seen = seen + 1 end
      end
      print("seen " .. seen)
    ]]):format(path, path, path))))
    assert.is_true(ok, out)
    assert.matches("seen 40", out)
  end)
end)
