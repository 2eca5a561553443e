-- Specs for store:wait: woken by another process's change of the session (inotify on the file
-- backend, LISTEN/NOTIFY on PostgreSQL; never a timer), bounded by its timeout, ended by a
-- signal, and exact about what it returns. Both backends, from one source.
local pairstore = require "pairstore"
local core = require "pairstore.core"
local helpers = require "helpers"
local q = helpers.sh_quote

-- Signals SIGHUP (1), SIGINT (2) and SIGTERM (15) all blocked in pid, as during a wait.
local function waiting_with_signals(pid)
  local f = io.open("/proc/" .. pid .. "/status")
  if not f then return false end
  local blk = f:read("*a"):match("SigBlk:%s*(%x+)")
  f:close()
  return blk ~= nil and helpers.compat.band(tonumber(blk, 16), 0x4003) == 0x4003
end

for _, backend in ipairs(helpers.backends()) do
  describe("[" .. backend .. "]", function()
    describe("store:wait", function()
      local dir, where, st

      before_each(function()
        st = nil
        dir = helpers.tmpdir() -- the children's outputs
        st, where = helpers.open_store(backend, { durable = false })
      end)
      after_each(helpers.cleanup) -- closes st

      -- A child Lua process that runs `code` (with `st` open on the same store) after delay_s and
      -- then writes the monotonic time (ms) of the change to dir/changed.
      local function change_later(delay_s, code)
        return helpers.spawn_lua(string.format([[
          local core = require "pairstore.core"
          local st = %s
          os.execute("sleep %s")
          %s
          local f = io.open(%q, "w"); f:write(core.mono_ms()); f:close()
        ]], helpers.open_expr(where, "durable = false"), delay_s, code, dir .. "/changed"), dir .. "/child.out")
      end

      it("returns the session once another process changes it, woken by the change", function()
        local s = assert(st:create {})
        change_later(0.3, string.format("assert(st:verify_code(%q, %q))", s.sid, s.secondaryCode))
        local t0 = core.mono_ms()
        local got, msg, code = st:wait(s.sid, { timeout_ms = 20000 })
        local woke = core.mono_ms()
        assert.is_table(got, tostring(msg) .. " " .. tostring(code) .. " " .. tostring(helpers.read(dir .. "/child.out")))
        assert.are.equal("device_connected", got.status)
        assert.are.equal(s.sid, got.sid)
        local changed = tonumber(helpers.wait_file(dir .. "/changed", nil, 10))
        assert.is_true(woke - t0 >= 250, "it waited for the change")
        -- inotify wakes it within milliseconds; the bound leaves room for a loaded machine
        assert.is_true(woke - changed < 2000, "woken " .. (woke - changed) .. " ms after the change")
      end)

      it("with since, returns at once a change made before the call (a loop of waits misses none)", function()
        local s = assert(st:create {})
        assert(st:verify_code(s.sid, s.secondaryCode)) -- changed after s was seen
        local t0 = core.mono_ms()
        local got = assert(st:wait(s.sid, { since = s, timeout_ms = 5000 }))
        assert.are.equal("device_connected", got.status)
        assert.is_true(core.mono_ms() - t0 < 2500, "it did not wait")
        local none, msg = st:wait(s.sid, { since = got, timeout_ms = 200 })
        assert.is_nil(none)
        assert.are.equal("timeout", msg)
        assert.has_error(function() st:wait(s.sid, { since = "x" }) end)
      end)

      it("ignores changes to other sessions and ends with timeout", function()
        local s = assert(st:create {})
        local other = assert(st:create {})
        change_later(0.1, string.format("assert(st:reject(%q))", other.sid))
        local t0 = core.mono_ms()
        local got, msg, code, extra = st:wait(s.sid, { timeout_ms = 700 })
        local took = core.mono_ms() - t0
        assert.are.same({ nil, "timeout", "timeout", nil }, { got, msg, code, extra })
        assert.is_true(took >= 700 and took < 2700, "took " .. took .. " ms")
        assert(helpers.wait_file(dir .. "/changed", nil, 10))
        assert.are.equal("rejected", st:get(other.sid).status)
        assert.are.equal("awaiting_scan", st:get(s.sid).status)
      end)

      it("gives not_found for an unknown sid, and when the session is removed meanwhile", function()
        local s = assert(st:create {})
        assert.are.same({ nil, "not_found", "not_found" }, { st:wait(("0"):rep(32), { timeout_ms = 0 }) })
        change_later(0.2, string.format("assert(st:update(%q, function() return false end) == false)", s.sid))
        assert.are.same({ nil, "not_found", "not_found" }, { st:wait(s.sid, { timeout_ms = 20000 }) })
      end)

      it("wakes when the session expires, with no write to the store", function()
        local wall = core.now_ms()
        local old = helpers.reopen(where, { durable = false, now = function() return wall - pairstore.MIN_TTL_MS + 400 end })
        local s = assert(old:create { ttl_ms = pairstore.MIN_TTL_MS })
        old:close()
        local t0 = core.mono_ms()
        local got = assert(st:wait(s.sid, { timeout_ms = 20000 }))
        assert.are.equal("expired", got.status)
        assert.is_true(core.mono_ms() - t0 < 5000)
      end)

      it("timeout_ms = 0 looks once; no timeout waits as long as it takes", function()
        local s = assert(st:create {})
        assert.are.same({ nil, "timeout", "timeout" }, { st:wait(s.sid, { timeout_ms = 0 }) })
        change_later(0.2, string.format("assert(st:reject(%q))", s.sid))
        assert.are.equal("rejected", assert(st:wait(s.sid)).status)
      end)

      it("ends on SIGINT, SIGTERM and SIGHUP with signals = true and returns the signal's name", function()
        local s = assert(st:create {})
        for _, sig in ipairs { "INT", "TERM", "HUP" } do
          local out = dir .. "/" .. sig .. ".out"
          local pid = helpers.spawn_lua(string.format([[
            local st = %s
            print(st:wait(%q, { timeout_ms = 20000, signals = true }))
            print(st:get(%q).status)
          ]], helpers.open_expr(where), s.sid, s.sid), out)
          -- signal it only once it is inside the wait (the three signals blocked)
          assert.is_true(helpers.wait_for(function() return waiting_with_signals(pid) end, 20), sig)
          helpers.kill(pid, sig)
          assert.is_true(helpers.wait_exit(pid, 20))
          assert.are.equal("nil\tsignal\tsignal\tSIG" .. sig .. "\nawaiting_scan\n", helpers.read(out))
        end
      end)

      it("without signals, lets the interpreter's Ctrl+C handler interrupt it at once", function()
        local s = assert(st:create {})
        local out = dir .. "/int.out"
        local pid = helpers.spawn_lua(string.format([[
          local core = require "pairstore.core"
          local st = %s
          local t0 = core.mono_ms()
          local ok, err = pcall(st.wait, st, %q, { timeout_ms = 20000 })
          print(ok, err:match("interrupted!"), core.mono_ms() - t0 < 15000)
        ]], helpers.open_expr(where), s.sid), out)
        assert.is_true(helpers.wait_for(function()
          local f = io.open("/proc/" .. pid .. "/wchan")
          local w = f and f:read("*a") or ""
          if f then f:close() end
          return w:find("poll") ~= nil
        end, 20))
        helpers.kill(pid, "INT")
        assert.is_true(helpers.wait_exit(pid, 20))
        assert.are.equal("false\tinterrupted!\ttrue\n", helpers.read(out))
      end)

      it("leaves the signal mask as it was", function()
        local s = assert(st:create {})
        local out = dir .. "/mask.out"
        local ok = helpers.run_lua(string.format([[
          local st = %s
          local function blk()
            local f = io.open("/proc/self/status"); local t = f:read("*a"); f:close()
            return t:match("SigBlk:%%s*(%%x+)")
          end
          local before = blk()
          assert(select(2, st:wait(%q, { timeout_ms = 10, signals = true })) == "timeout")
          local f = io.open(%q, "w"); f:write(before, " ", blk()); f:close()
        ]], helpers.open_expr(where), s.sid, out))
        assert.is_true(ok)
        local before, after = helpers.read(out):match("^(%x+) (%x+)$")
        assert.are.equal(before, after)
      end)

      it("raises on bad arguments", function()
        local s = assert(st:create {})
        for _, bad in ipairs {
          { 42 }, { s.sid, "fast" }, { s.sid, { timeout = 10 } }, { s.sid, { timeout_ms = -1 } },
          { s.sid, { timeout_ms = 1.5 } }, { s.sid, { timeout_ms = "10" } }, { s.sid, { signals = 1 } },
        } do
          assert.has_error(function() st:wait(bad[1], bad[2]) end)
        end
        local ok, err = pcall(st.wait, st, s.sid, { ttl = 1 })
        assert.is_false(ok)
        assert.matches('pairstore.wait: unknown option "ttl"', err, 1, true)
      end)

      if backend == "file" then it("returns by its deadline while another process holds the lock", function()
        local s = assert(st:create {})
        local pid, script = helpers.spawn_lua(string.format([[
          local st = %s
          assert(st:update(%q, function()
            io.open(%q, "w"):close()
            while not io.open(%q) do os.execute("sleep 0.01") end
          end))
        ]], helpers.open_expr(where), s.sid, dir .. "/holding", dir .. "/release"), dir .. "/holder.out")
        finally(function()
          helpers.write(dir .. "/release", "")
          helpers.wait_exit(pid, 20)
          os.remove(script)
        end)
        assert(helpers.wait_file(dir .. "/holding", nil, 20))
        for _, timeout in ipairs { 500, 0 } do -- (lock_wait_ms is 10000)
          local t0 = core.mono_ms()
          local got, msg, code = st:wait(s.sid, { timeout_ms = timeout })
          local took = core.mono_ms() - t0
          assert.are.same({ nil, "timeout", "timeout" }, { got, msg, code })
          assert.is_true(took < timeout + 100, ("timeout_ms %d: returned after %d ms"):format(timeout, took))
        end
        helpers.write(dir .. "/release", "")
        assert.is_true(helpers.wait_exit(pid, 20))
        assert.are.same({ nil, "timeout", "timeout" }, { st:wait(s.sid, { timeout_ms = 50 }) })
      end) end

      if backend == "file" then it("watches the directory of the store's path, a relative one too", function()
        local s = assert(st:create {})
        local ok, out = helpers.run(string.format("cd %s && %s %s -e %s", q(where.dir), helpers.LUA_ENV, helpers.LUA, q([[
          local st = require("pairstore").open("pair-sessions.json")
          local got, msg = st:wait("]] .. s.sid .. [[", { timeout_ms = 50 })
          io.write(tostring(got), " ", tostring(msg))
        ]])))
        assert.is_true(ok, out)
        assert.are.equal("nil timeout", out)
      end) end
    end)
  end)
end
