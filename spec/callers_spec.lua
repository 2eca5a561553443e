-- Callers that misbehave never crash the process, arguments are checked exactly, and writes are
-- bounded like reads (issue 11, items 2, 5 and 6). make test-sanitize runs this file under
-- ASan+UBSan and valgrind with the rest of the suite.
local pairstore = require "pairstore"
local helpers = require "helpers"

local T0 = 1764300000000
local HERE = debug.getinfo(1, "S").short_src

-- A fresh store of backend: store, where (see helpers.open_store).
local function setup_on(backend, opts)
  opts = opts or {}
  if opts.now == nil then opts.now = function() return T0 end end
  if opts.durable == nil then opts.durable = false end
  return helpers.open_store(backend, opts)
end

for _, backend in ipairs(helpers.backends()) do
  describe("[" .. backend .. "]", function()
    local function setup(opts) return setup_on(backend, opts) end


    describe("a store called from inside its own callbacks", function()
      after_each(helpers.cleanup)

      it("refuses close() from a mutator with a clean error and stays usable", function()
        local st, where = setup()
        local s = assert(st:create {})
        local before = helpers.snapshot(where)
        local r, msg, code = st:update(s.sid, function() st:close() end)
        assert.is_nil(r)
        assert.are.equal("callback", code)
        assert.matches("in use by its own transaction", msg)
        assert.are.equal(before, helpers.snapshot(where))
        assert.are.equal(s.sid, assert(st:get(s.sid)).sid)
        st:close()
        st:close() -- idempotent
        assert.has_error(function() st:get(s.sid) end)
      end)

      it("refuses close() from the clock", function()
        local st
        st = setup { now = function() st:close(); return T0 end }
        local r, msg, code = st:create {}
        assert.is_nil(r)
        assert.are.equal("callback", code)
        assert.matches("in use", msg)
      end)

      if backend == "file" then it("lets an event listener close the store (the lock is already released)", function()
        local dir = helpers.tmpdir()
        local path = dir .. "/pair-sessions.json"
        helpers.write(path, "{not json")
        os.execute("chmod 600 " .. helpers.sh_quote(path))
        local st
        st = pairstore.open(path, { on_event = function() st:close() end })
        assert.is_table(st:create {})
        assert.has_error(function() st:list_all() end)
      end) end

      it("answers every method and a second open with 'reentrant' from a mutator", function()
        local st, where = setup()
        local s = assert(st:create {})
        local other = helpers.reopen(where)
        local calls = {
          function() return st:get(s.sid) end, function() return st:create {} end,
          function() return st:update(s.sid, function() end) end,
          function() return st:transition(s.sid, "rejected") end,
          function() return st:register_failed_code(s.sid) end,
          function() return st:verify_code(s.sid, "000000") end, function() return st:consume(s.sid) end,
          function() return st:reject(s.sid) end, function() return st:list_active() end,
          function() return st:list_all() end, function() return st:prune() end,
          function() return other:get(s.sid) end,
          function() return helpers.reopen(where):list_all() end,
        }
        for i, call in ipairs(calls) do
          local got
          assert(st:update(s.sid, function() got = { call() } end))
          assert.are.equal("reentrant", got[3], "call " .. i)
        end
        other:close()
      end)
    end)

    describe("hostile callers, at random", function()
      after_each(helpers.cleanup)

      local GARBAGE = {
        function() return nil end, function() return 42 end, function() return "x" end,
        function() return true end, function() return false end, function() return {} end,
        function() return function() end end, function() return coroutine.create(print) end,
        function() local t = {}; t.t = t; return t end,
        function() local t = {}; for _ = 1, 700 do t = { t } end; return t end,
        function() return ("\255"):rep(10) end, function() return ("a"):rep(70000) end,
        function() return 0 / 0 end, function() return helpers.compat.maxinteger end, function() return -1.5 end,
        function() return "ffffffffffffffffffffffffffffffff" end,
      }

      for _, seed in ipairs { 1, 2, 3 } do
        it("never crash the process and never break the file (seed " .. seed .. ")", function()
          math.randomseed(seed)
          local function any() return GARBAGE[math.random(#GARBAGE)]() end
          local st, where
          local clock_mode = "ok"
          local function now()
            if clock_mode == "raise" then error("clock boom") end
            if clock_mode == "garbage" then return any() end
            if clock_mode == "close" then st:close() end
            return T0
          end
          -- (max_file_bytes is the file backend's: a PostgreSQL store has no file to bound)
          local bound = backend == "file" and { max_file_bytes = 65536 } or {}
          local function opts(o) for k, v in pairs(bound) do o[k] = v end return o end
          st, where = setup(opts { now = now, on_event = function() if math.random(4) == 1 then error("listener") end end })
          local sids = {}
          local function sid() return sids[math.random(#sids + 1)] or any() end
          local ops
          local function random_call()
            local op = ops[math.random(#ops)]
            return pcall(op)
          end
          local MUTATORS = {
            function(s) s.extra = any() end,
            function() error("boom") end, function() error({}) end, function() error() end,
            function() coroutine.yield(1) end,
            function() return any() end,
            function() st:close() end,
            function() random_call() end,
            function(s) s.sid = "00000000000000000000000000000000" end,
            function(s) s.status = any() end,
            function(s) s.operatorContext = any() end,
            function(s) s.expiresAtMs = any() end,
            function(s) for k in pairs(s) do s[k] = nil end end,
            function() return false end,
            function(s) s.note = "fine" end,
          }
          ops = {
            function() local s = st:create { operator = { channel = "c", senderId = math.random(2) == 1 and "s" or ("x"):rep(300) } }; if s then sids[#sids + 1] = s.sid end end,
            function() return st:create(any()) end,
            function() return st:get(sid()) end,
            function() return st:update(sid(), MUTATORS[math.random(#MUTATORS)]) end,
            function()
              local co = coroutine.wrap(function() return st:update(sid(), MUTATORS[math.random(#MUTATORS)]) end)
              return co()
            end,
            function() return st:update(sid(), any()) end,
            function() return st:transition(sid(), any()) end,
            function() return st:transition(sid(), "rejected") end,
            function() return st:verify_code(sid(), any()) end,
            function() return st:verify_code(sid(), "000000") end,
            function() return st:register_failed_code(sid()) end,
            function() return st:consume(sid()) end,
            function() return st:reject(sid()) end,
            function() return st:list_all() end,
            function() return st:list_active() end,
            function() return st:prune() end,
            function() return st:respond(sid(), any(), any()) end,
            function() return st.get(any(), sid()) end,
            function() return st.update(any(), sid(), function() end) end,
          }
          for _ = 1, 300 do
            local r = math.random(20)
            clock_mode = r == 1 and "raise" or r == 2 and "garbage" or r == 3 and "close" or "ok"
            random_call()
            clock_mode = "ok"
            if not pcall(st.list_all, st) then -- closed by a hostile call: open it again
              st = helpers.reopen(where, opts { now = now, durable = false })
            end
          end
          st:close()
          -- The store loads whole: nothing half-written, nothing moved aside.
          local events = {}
          local check = helpers.reopen(where, { now = function() return T0 end,
            on_event = function(name) events[#events + 1] = name end })
          if backend ~= "file" or helpers.exists(where.path) then assert.is_table(check:list_all()) end
          check:close()
          assert.are.same({}, events)
          if backend == "file" then assert.is_true(#helpers.read(where.path) <= 65536) end
        end)
      end
    end)

    describe("arguments", function()
      after_each(helpers.cleanup)

      it("raise at the caller's level for every kind of misuse", function()
        local st = setup()
        local s = assert(st:create {})
        local bad = {
          function() local x = st:get(s.sid .. "\0junk"); return x end,
          function() local x = st:verify_code(s.sid .. "\0x", s.secondaryCode); return x end,
          function() local x = st:get(s.sid:upper()); return x end,
          function() local x = st:get(5); return x end,
          function() local x = st:create { ttl = 600000 }; return x end,
          function() local x = st:create { operator = { channel = "c", sender = "typo" } }; return x end,
          function() local x = st:transition(s.sid, "paused"); return x end,
          function() local x = st:update(s.sid, 5); return x end,
          function() local x = st.list_all(5); return x end,
          function() local x = pairstore.open("/tmp/a\0b"); return x end,
          function() local x = pairstore.open("/tmp/a", { lock_wait_ms = 1e12 }); return x end,
          function() local x = pairstore.open("/tmp/a", { max_sessions = 0 }); return x end,
          function() local x = pairstore.open("/tmp/a", { ttl = 1 }); return x end,
          function() st:update(s.sid, function() end); local x = st:close(); return x end, -- fine
        }
        for i = 1, #bad - 1 do
          local ok, err = pcall(bad[i])
          assert.is_false(ok, "case " .. i)
          assert.are.equal(HERE, tostring(err):match("^([^:]+):%d+:"), "case " .. i .. ": " .. tostring(err))
        end
        assert.is_true(pcall(bad[#bad]))
      end)

      it("the clock must return an integer ms in range; nothing is stored otherwise", function()
        local value
        local st, where = setup { now = function() return value end }
        value = T0
        local s = assert(st:create {})
        local before = helpers.snapshot(where)
        for _, v in ipairs { "1764300000000", T0 + 0.5, helpers.compat.maxinteger, -1, 2 ^ 53, false } do
          value = v
          local r, msg, code = st:consume(s.sid)
          assert.is_nil(r, tostring(v))
          assert.are.equal("invalid", code, tostring(v))
          assert.matches("clock", msg)
          assert.are.equal(before, helpers.snapshot(where))
        end
      end)

      if backend == "file" then it("consume refuses a status this version does not know, as transition does", function()
        local st, where = setup()
        local path = where.path
        local s = assert(st:create {})
        st:close()
        helpers.write(path, (helpers.read(path):gsub('"awaiting_scan"', '"paused"')))
        st = pairstore.open(path, { now = function() return T0 end })
        local r, msg, code = st:consume(s.sid)
        assert.is_nil(r)
        assert.are.equal("illegal_transition", msg)
        assert.are.equal("illegal_transition", code)
        assert.are.equal("paused", st:get(s.sid).status)
        local r2, _, code2 = st:transition(s.sid, "consumed")
        assert.is_nil(r2)
        assert.are.equal("illegal_transition", code2)
      end) end

      if backend == "file" then it("keep a long path's errno in the message", function()
        local dir = helpers.tmpdir()
        helpers.write(dir .. "/file", "x")
        local long = dir .. "/file/" .. ("d"):rep(200) .. "/" .. ("e"):rep(200) .. "/" .. ("f"):rep(200) .. "/s.json"
        local st = pairstore.open(long)
        local r, msg, code = st:create {}
        assert.is_nil(r)
        assert.are.equal("io", code)
        assert.matches("%(ENOTDIR%)$", msg)
      end) end
    end)

    describe("writes are bounded like reads", function()
      after_each(helpers.cleanup)

      it("a create with a 17 MB senderId fails with 'limit' and stores nothing", function()
        local st, where = setup()
        local s = assert(st:create {})
        local before = helpers.snapshot(where)
        local r, msg, code = st:create { operator = { channel = "c", senderId = ("x"):rep(17 * 1024 * 1024) } }
        assert.is_nil(r)
        assert.are.equal("limit", code)
        assert.matches("senderId", msg)
        assert.are.equal(before, helpers.snapshot(where))
        assert.is_table(st:get(s.sid))
      end)

      if backend == "file" then it("a write above max_file_bytes fails with 'limit' and leaves the old file byte-identical", function()
        local st, where = setup { max_file_bytes = 4096 }
        local path = where.path
        local n = 0
        while true do
          local s, _, code = st:create { operator = { channel = ("c"):rep(200) } }
          if not s then
            assert.are.equal("limit", code)
            break
          end
          n = n + 1
        end
        assert.is_true(n >= 3)
        local before = helpers.read(path)
        assert.is_true(#before <= 4096)
        local list = st:list_all()
        local r, msg, code = st:update(list[1].sid, function(x) x.more = ("m"):rep(3000) end)
        assert.is_nil(r)
        assert.are.equal("limit", code)
        assert.matches("max_file_bytes", msg)
        assert.are.equal(before, helpers.read(path))
        -- the next store reads it whole
        assert.are.equal(n, #pairstore.open(path, { now = function() return T0 end, max_file_bytes = 4096 }):list_all())
      end) end

      it("one session is bounded by max_session_bytes", function()
        local st, where = setup()
        local s = assert(st:create {})
        local before = helpers.snapshot(where)
        local r, msg, code = st:update(s.sid, function(x) x.blob = ("b"):rep(pairstore.MAX_SESSION_BYTES) end)
        assert.is_nil(r)
        assert.are.equal("limit", code)
        assert.matches("max_session_bytes", msg)
        assert.are.equal(before, helpers.snapshot(where))
        assert(st:update(s.sid, function(x) x.blob = ("b"):rep(1000) end))
      end)
    end)
  end)
end
