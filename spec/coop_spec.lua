-- Specs for the cooperative lock wait (the `sleep` option, ngx.sleep by default inside
-- nginx): a lock another process holds is waited for by the caller's sleep, outside the
-- core, so that an event loop keeps running; bounded by lock_wait_ms as the blocking wait
-- is; mutators still run synchronously under the lock. Both backends, from one source.
local pairstore = require "pairstore"
local core = require "pairstore.core"
local helpers = require "helpers"

for _, backend in ipairs(helpers.backends()) do
  describe("[" .. backend .. "]", function()
    describe("cooperative lock wait", function()
      local dir, where, st, s

      before_each(function()
        dir = helpers.tmpdir() -- the holder's flags and output
        st, where = helpers.open_store(backend, { durable = false })
        s = assert(st:create {})
      end)
      after_each(function()
        rawset(_G, "ngx", nil)
        helpers.cleanup()
      end)

      -- Another process takes the session's lock (inside a mutator) and keeps it for hold_s;
      -- returns once it holds it.
      local function hold(hold_s)
        local pid = helpers.spawn_lua(string.format([[
          local st = %s
          assert(st:update(%q, function()
            local f = io.open(%q, "w"); f:close()
            os.execute("sleep %s")
          end))
          local f = io.open(%q, "w"); f:close()
        ]], helpers.open_expr(where, "durable = false"), s.sid, dir .. "/held", hold_s, dir .. "/released"),
          dir .. "/holder.out")
        assert(helpers.wait_file(dir .. "/held", nil, 20), "the holder never took the lock: " ..
          tostring(helpers.read(dir .. "/holder.out")))
        return pid
      end

      it("sleeps by the caller's function while another process holds the lock, then goes on", function()
        local slept = {}
        local coop = helpers.reopen(where, { durable = false, lock_wait_ms = 20000,
          sleep = function(secs) slept[#slept + 1] = secs; helpers.sleep(secs) end })
        hold(1.2) -- (long enough for 10 sleeps and their attempts on a loaded machine)
        local t0 = core.mono_ms()
        local got, msg, code = coop:verify_code(s.sid, s.secondaryCode)
        assert.is_table(got, tostring(msg) .. " " .. tostring(code))
        assert.are.equal("device_connected", got.status)
        assert.is_true(helpers.exists(dir .. "/released") or helpers.wait_file(dir .. "/released", nil, 10) ~= nil)
        assert.is_true(core.mono_ms() - t0 >= 300, "it waited for the holder")
        -- 1, 2, 4 ms, then at most PS_COOP_SLICE_MS (8) at a time: the lock is seen soon after
        -- it is let go, and no sleep is long enough to matter to an event loop
        assert.is_true(#slept >= 10, #slept .. " sleeps")
        assert.are.same({ 0.001, 0.002, 0.004 }, { slept[1], slept[2], slept[3] })
        for _, v in ipairs(slept) do assert.is_true(v > 0 and v <= 0.008, "slept " .. v) end
        -- exactly one attempt was counted: the code check ran once
        assert.are.equal(0, assert(st:get(s.sid)).secondaryCodeAttempts or 0)
      end)

      it("lets the caller run other work meanwhile (a sleep that yields to a scheduler)", function()
        -- The sleep yields the coroutine, as ngx.sleep yields to nginx's event loop.
        local coop = helpers.reopen(where, { durable = false, lock_wait_ms = 20000, sleep = coroutine.yield })
        -- (a store of its own: on the file backend a read takes the store's lock too)
        local other = helpers.open_store(backend, { durable = false })
        local o = assert(other:create {})
        hold(1.0) -- (long enough for 10 rounds on a loaded machine)
        local waiter = coroutine.create(function() return coop:transition(s.sid, "device_connected") end)
        local served, result = 0, nil
        local deadline = core.mono_ms() + 20000
        while not result and core.mono_ms() < deadline do
          local ok, a, b, c = coroutine.resume(waiter)
          assert(ok, a)
          if coroutine.status(waiter) == "dead" then
            result = { a, b, c }
          else
            -- the "event loop" serves reads while the write waits for the lock
            assert.are.equal(o.sid, assert(other:get(o.sid)).sid)
            served = served + 1
            helpers.sleep(a)
          end
        end
        assert.is_table(result and result[1], result and tostring(result[2]))
        assert.are.equal("device_connected", result[1].status)
        -- (a few are proof enough; how many fit in the hold depends on the machine, and under
        -- ASan a read takes ten times as long)
        assert.is_true(served >= 3, "served " .. served .. " requests while waiting")
      end)

      it("gives the blocking wait's timeout after lock_wait_ms", function()
        local coop = helpers.reopen(where, { durable = false, lock_wait_ms = 300, sleep = helpers.sleep })
        local blocking = helpers.reopen(where, { durable = false, lock_wait_ms = 300, sleep = false })
        hold(3)
        local t0 = core.mono_ms()
        local got, msg, code = coop:consume(s.sid)
        local took = core.mono_ms() - t0
        assert.is_nil(got)
        assert.are.equal("timeout", code)
        assert.is_true(took >= 290 and took < 2500, "took " .. took .. " ms")
        local _, bmsg, bcode = blocking:consume(s.sid)
        assert.are.equal("timeout", bcode)
        assert.are.equal(bmsg, msg)
        helpers.wait_file(dir .. "/released", nil, 20)
        assert.are.equal("awaiting_scan", assert(st:get(s.sid)).status)
      end)

      it("starts a new wait after one a caller gave up (its sleep raised)", function()
        local give_up = true
        local coop = helpers.reopen(where, { durable = false, lock_wait_ms = 20000,
          sleep = function(secs) if give_up then error("request aborted") end helpers.sleep(secs) end })
        hold(0.4)
        assert.has_error(function() coop:reject(s.sid) end, "request aborted")
        -- the next call gets its own lock_wait_ms, not what was left of the first one's
        give_up = false
        local got, msg = coop:reject(s.sid)
        assert.is_table(got, tostring(msg))
        assert.are.equal("rejected", got.status)
      end)

      it("runs mutators synchronously: one that yields raises and changes nothing", function()
        local coop = helpers.reopen(where, { durable = false, sleep = coroutine.yield })
        local co = coroutine.create(function()
          return coop:update(s.sid, function(x) coroutine.yield(0.001); x.status = "rejected" end)
        end)
        local ok, err = coroutine.resume(co)
        assert.is_false(ok)
        assert.are.equal("dead", coroutine.status(co))
        assert.matches("a mutator may not yield", tostring(err))
        assert.are.equal("awaiting_scan", assert(st:get(s.sid)).status)
        assert.is_table(coop:transition(s.sid, "device_connected")) -- and the lock was let go
      end)

      it("uses ngx.sleep by default where the nginx phase lets it yield, else waits in the core", function()
        local slept, phase = 0, "content"
        rawset(_G, "ngx", {
          get_phase = function() return phase end,
          sleep = function(secs) slept = slept + 1; helpers.sleep(secs) end,
        })
        local plain = helpers.reopen(where, { durable = false, lock_wait_ms = 20000 })
        hold(0.8) -- (long enough for 5 sleeps and their attempts on a loaded machine)
        assert.is_table(plain:transition(s.sid, "device_connected"))
        assert.is_true(slept >= 5, "ngx.sleep called " .. slept .. " times")
        helpers.wait_file(dir .. "/released", nil, 20)

        -- init_by_lua and the other phases that cannot yield: the blocking wait
        os.remove(dir .. "/held")
        os.remove(dir .. "/released")
        phase, slept = "init", 0
        hold(0.4)
        assert.is_table(plain:consume(s.sid))
        assert.are.equal(0, slept)

        -- sleep = false: never ngx.sleep
        helpers.wait_file(dir .. "/released", nil, 20)
        local s2 = assert(st:create {})
        phase = "content"
        local never = helpers.reopen(where, { durable = false, sleep = false })
        assert.is_table(never:reject(s2.sid))
        assert.are.equal(0, slept)
      end)

      it("takes only a function or false", function()
        assert.has_error(function() pairstore.open(where.target, { store = where.store, sleep = 5 }) end,
          "pairstore.open: option sleep must be a function")
        assert.has_error(function() pairstore.open(where.target, { store = where.store, sleep = true }) end,
          "pairstore.open: option sleep must be a function")
      end)
    end)
  end)
end
