-- Cooperative lock waits sharing one store (nginx: every request of a worker uses the store
-- opened in init_by_lua): each wait keeps its own deadline. Coroutines stand for requests,
-- the sleep option yields to a small scheduler; another process holds the lock.
local helpers = require "helpers"
local pairstore = require "pairstore"
local core = require "pairstore.core"
local q = helpers.sh_quote

describe("cooperative waits on one shared store", function()
  after_each(helpers.cleanup)

  it("each one times out lock_wait_ms after it began, whatever the others do", function()
    local dir = helpers.tmpdir()
    local path = dir .. "/pair-sessions.json"
    local setup = pairstore.open(path, { durable = false })
    local s = assert(setup:create {})
    setup:close()
    os.execute(string.format("cd %s && %s %s %s %s %s 1800 %s >/dev/null 2>&1 &", q(helpers.ROOT), helpers.LUA_ENV,
      helpers.LUA, q(helpers.ROOT .. "/spec/nginx/holder.lua"), q(path), s.sid, q(dir)))
    local deadline = core.mono_ms() + 10000
    while not helpers.exists(dir .. "/held") and core.mono_ms() < deadline do os.execute("sleep 0.01") end
    assert.is_true(helpers.exists(dir .. "/held"), "the holder did not take the lock")

    local store = pairstore.open(path, { lock_wait_ms = 400, sleep = function(sec) coroutine.yield(sec) end })
    local tasks, results = {}, {}
    local function spawn(i)
      tasks[#tasks + 1] = { wake = 0, co = coroutine.create(function()
        local began = core.mono_ms()
        local v, _, code = store:get(s.sid)
        results[i] = { waited = core.mono_ms() - began, code = v and "ok" or code }
      end) }
    end
    local t0 = core.mono_ms()
    spawn(1)
    local n = 1
    while #tasks > 0 do
      -- a new wait every 150 ms: each one began within the others' deadlines
      if n < 5 and core.mono_ms() - t0 >= n * 150 then n = n + 1; spawn(n) end
      for i = #tasks, 1, -1 do
        local t = tasks[i]
        if core.mono_ms() >= t.wake then
          local ok, sec = coroutine.resume(t.co)
          assert(ok, sec)
          if coroutine.status(t.co) == "dead" then table.remove(tasks, i) else t.wake = core.mono_ms() + sec * 1000 end
        end
      end
      os.execute("sleep 0.001")
    end
    store:close()
    while not helpers.exists(dir .. "/released") and core.mono_ms() < deadline do os.execute("sleep 0.02") end
    for i = 1, 5 do
      assert.are.equal("timeout", results[i].code, "wait " .. i)
      assert.is_true(results[i].waited >= 390 and results[i].waited < 700,
        ("wait %d waited %d ms for a lock_wait_ms of 400"):format(i, results[i].waited))
    end
  end)
end)
