-- The cross-process lock, with real processes: lost updates, crash takeover, reference-style
-- sentinels, the reference peer itself, the commit fence.
local pairstore = require "pairstore"
local helpers = require "helpers"

local q = helpers.sh_quote

local function incr_script(path, sid, n, durable)
  return ([[
    local store = require("pairstore").open(%q, { durable = %s, lock_wait_ms = 60000 })
    local acked = 0
    for _ = 1, %d do
      local s, msg = store:update(%q, function(x) x.counter = (x.counter or 0) + 1 end)
      if not s then io.stderr:write(msg, "\n") os.exit(1) end
      acked = acked + 1
    end
    print("acked " .. acked)
  ]]):format(path, tostring(durable), n, sid)
end

local function run_children(n, code)
  local pids, outs = {}, {}
  for i = 1, n do
    outs[i] = os.tmpname()
    pids[i] = helpers.spawn_lua(code, outs[i])
  end
  for i = 1, n do assert.is_truthy(helpers.wait_exit(pids[i], 120), "child " .. i .. " did not finish") end
  local acked = 0
  for i = 1, n do
    local out = helpers.read(outs[i]) or ""
    acked = acked + (tonumber(out:match("acked (%d+)")) or 0)
    if not out:match("acked") then print("child " .. i .. ": " .. out) end
    os.remove(outs[i])
  end
  return acked
end

local function set_mtime(path, offset_s)
  os.execute(("touch -m -d @%d %s"):format(os.time() + offset_s, q(path)))
end

describe("the lock", function()
  local dir, path, store, events
  before_each(function()
    dir = helpers.tmpdir()
    path = dir .. "/pair-sessions.json"
    events = {}
    store = pairstore.open(path, { durable = false, lock_wait_ms = 5000,
      on_event = function(name, info) events[#events + 1] = { name = name, info = info } end })
  end)
  after_each(helpers.cleanup)

  it("loses no update: 8 processes x 200 increments", function()
    local s = assert(store:create {})
    local acked = run_children(8, incr_script(path, s.sid, 200, false))
    assert.are.equal(1600, acked)
    assert.are.equal(1600, store:get(s.sid).counter)
    store:close()
    assert.are.same({ "pair-sessions.json" }, helpers.ls(dir))
  end)

  it("keeps one parked sentinel per store between transactions, removed by close", function()
    local s = assert(store:create {})
    local first = helpers.ls_parked(dir)
    assert.are.equal(1, #first)
    assert.matches("^pair%-sessions%.json%.lock%.idle%-%x+$", first[1])
    assert.is_false(helpers.exists(path .. ".lock"))
    local _, ino = helpers.run("stat -c %i " .. helpers.sh_quote(dir .. "/" .. first[1]))
    local seen
    assert(store:update(s.sid, function()
      -- the same inode is the sentinel while held, and it is parked nowhere else meanwhile
      seen = { helpers.run("stat -c %i:%a " .. helpers.sh_quote(path .. ".lock")) }
      seen.parked = #helpers.ls_parked(dir)
    end))
    assert.are.equal(ino:match("%d+") .. ":500", seen[2]:match("[%d:]+"))
    assert.are.equal(0, seen.parked)
    assert.are.same(first, helpers.ls_parked(dir))
    store:close()
    assert.are.same({ "pair-sessions.json" }, helpers.ls(dir))
  end)

  it("gives a forked child a sentinel of its own, never its parent's", function()
    local fu = require "test.forkutil"
    local s = assert(store:create {})
    assert(store:update(s.sid, function(x) x.counter = 0 end))
    local before = helpers.ls(dir)
    local pid = fu.fork()
    if pid == 0 then
      -- the child: 200 increments; each time the sentinel must name this process
      local ok, me = pcall(function()
        local me = fu.getpid()
        for _ = 1, 200 do
          assert(store:update(s.sid, function(x)
            assert(helpers.read(path .. ".lock") == me .. "\n", "sentinel not ours")
            x.counter = x.counter + 1
          end))
        end
        store:close()
        return me
      end)
      if not ok then io.stderr:write("child: ", tostring(me), "\n") end
      fu._exit(ok and 0 or 1)
    end
    for _ = 1, 200 do
      assert(store:update(s.sid, function(x)
        assert.are.equal(fu.getpid() .. "\n", helpers.read(path .. ".lock"))
        x.counter = x.counter + 1
      end))
    end
    assert.are.equal(0, fu.wait(pid))
    assert.are.equal(400, store:get(s.sid).counter)
    assert.are.same(before, helpers.ls(dir)) -- the child took nothing of ours, and left nothing
    store:close()
    assert.are.same({ "pair-sessions.json" }, helpers.ls(dir))
  end)

  it("loses no update with durable writes: 4 processes x 40 increments", function()
    local s = assert(store:create {})
    assert.are.equal(160, run_children(4, incr_script(path, s.sid, 40, true)))
    assert.are.equal(160, store:get(s.sid).counter)
  end)

  it("is taken over at once when its holder is SIGKILLed inside the mutator", function()
    local s = assert(store:create {})
    local marker = dir .. "/holding"
    local pid = helpers.spawn_lua(([[
      local store = require("pairstore").open(%q)
      store:update(%q, function(x)
        x.counter = 999
        io.open(%q, "w"):close()
        while true do end
      end)
    ]]):format(path, s.sid, marker))
    assert.is_truthy(helpers.wait_for(function() return helpers.exists(marker) end, 20))
    -- the sentinel looks like the reference's: "<pid>\n"
    assert.are.equal(pid .. "\n", helpers.read(path .. ".lock"))
    helpers.kill(pid, "KILL")
    local t0 = helpers.mono()
    local got = assert(store:update(s.sid, function(x) x.counter = 1 end))
    local took = helpers.mono() - t0
    assert.is_true(took < 0.5, "takeover took " .. took .. " s")
    assert.are.equal(1, got.counter) -- the killed holder's write never happened
    assert.are.equal("lock_broken", events[1].name)
    assert.are.equal(pid, events[1].info.pid)
    assert.matches("crashed", events[1].info.message)
    store:close()
    assert.are.same({ "holding", "pair-sessions.json" }, helpers.ls(dir))
  end)

  it("is never broken while a pairstore holder lives, however old its sentinel", function()
    local s = assert(store:create {})
    local marker = dir .. "/holding"
    local pid = helpers.spawn_lua(([[
      local store = require("pairstore").open(%q)
      store:update(%q, function(x)
        io.open(%q, "w"):close()
        local t = os.time()
        while os.time() - t < 3 do end
        x.counter = 7
      end)
    ]]):format(path, s.sid, marker))
    assert.is_truthy(helpers.wait_for(function() return helpers.exists(marker) end, 20))
    set_mtime(path .. ".lock", -3600) -- looks stale by the clock
    local short = pairstore.open(path, { lock_wait_ms = 300, lock_stale_ms = 1 })
    local v, msg, code = short:get(s.sid)
    assert.is_nil(v)
    assert.are.equal("timeout", code)
    assert.matches("could not acquire lock at .-pair%-sessions%.json%.lock within 300ms", msg)
    helpers.wait_exit(pid, 20)
    assert.are.equal(7, store:get(s.sid).counter)
  end)

  describe("with a sentinel written like the reference's", function()
    local function plant(content, age_s, mode)
      helpers.write(path .. ".lock", content)
      os.execute("chmod " .. (mode or "644") .. " " .. q(path .. ".lock"))
      set_mtime(path .. ".lock", -age_s)
    end

    it("waits for a live one and times out with 'timeout', leaving it alone", function()
      assert(store:create {})
      plant("12345\n", 0)
      local waiting = pairstore.open(path, { lock_wait_ms = 400 })
      local t0 = helpers.mono()
      local v, msg, code = waiting:create {}
      local took = helpers.mono() - t0
      assert.is_nil(v)
      assert.are.equal("timeout", code)
      assert.matches("within 400ms", msg)
      assert.is_true(took >= 0.39 and took < 2, "waited " .. took)
      assert.are.equal("12345\n", helpers.read(path .. ".lock"))
    end)

    it("breaks one whose mtime is 31 s old, and says so", function()
      plant("12345\n", 31)
      assert(store:create {})
      assert.is_false(helpers.exists(path .. ".lock"))
      assert.are.equal("lock_broken", events[1].name)
      assert.are.equal(12345, events[1].info.pid)
      assert.is_true(events[1].info.age_ms >= 30000)
      assert.matches("stale", events[1].info.message)
      store:close()
      assert.are.same({ "pair-sessions.json" }, helpers.ls(dir))
    end)

    it("breaks one whose mtime is an hour in the future", function()
      plant("12345\n", -3600)
      assert(store:create {})
      assert.are.equal("lock_broken", events[1].name)
    end)

    it("breaks an empty or garbage one only when stale", function()
      plant("", 0)
      local waiting = pairstore.open(path, { lock_wait_ms = 200 })
      assert.are.equal("timeout", select(3, waiting:create {}))
      plant("\0\255garbage", 40)
      assert(store:create {})
      assert.are.equal(0, events[#events].info.pid)
    end)
  end)

  it("gives way to the reference peer and back (mixed processes)", function()
    if not helpers.have("node") then return pending("node not installed") end
    local s = assert(store:create {})
    -- the peer counts secondaryCodeAttempts; our children count the same field
    local lua_code = ([[
      local store = require("pairstore").open(%q, { durable = false, lock_wait_ms = 60000 })
      local acked = 0
      for _ = 1, 60 do
        assert(store:update(%q, function(x) x.secondaryCodeAttempts = x.secondaryCodeAttempts + 1 end))
        acked = acked + 1
      end
      print("acked " .. acked)
    ]]):format(path, s.sid)
    local peer_out = os.tmpname()
    os.execute(("timeout 120 node %s incr %s %s 60 > %s 2>&1 &"):format(q(helpers.REFERENCE_PEER), q(path), s.sid, q(peer_out)))
    local acked = run_children(2, lua_code)
    assert.is_truthy(helpers.wait_for(function() return (helpers.read(peer_out) or ""):match("acked") end, 120))
    local peer_acked = tonumber(helpers.read(peer_out):match("acked (%d+)"))
    os.remove(peer_out)
    assert.are.equal(120, acked)
    assert.are.equal(60, peer_acked)
    assert.are.equal(180, store:get(s.sid).secondaryCodeAttempts)
  end)

  it("waits for a live reference holder, then proceeds", function()
    if not helpers.have("node") then return pending("node not installed") end
    assert(store:create {})
    os.execute(("node %s hold %s 1500 >/dev/null 2>&1 &"):format(q(helpers.REFERENCE_PEER), q(path)))
    assert.is_truthy(helpers.wait_for(function() return helpers.exists(path .. ".lock") end, 10))
    local t0 = helpers.mono()
    assert(store:create {})
    local took = helpers.mono() - t0
    assert.is_true(took > 0.5 and took < 5, "took " .. took)
    assert.are.equal(0, #events) -- honoured, not broken
  end)

  it("is honoured by the reference peer while pairstore holds it", function()
    if not helpers.have("node") then return pending("node not installed") end
    local s = assert(store:create {})
    local marker = dir .. "/holding"
    local pid = helpers.spawn_lua(([[
      local store = require("pairstore").open(%q)
      store:update(%q, function(x)
        io.open(%q, "w"):close()
        local t = os.time()
        while os.time() - t < 2 do end
        x.secondaryCodeAttempts = x.secondaryCodeAttempts + 10
      end)
    ]]):format(path, s.sid, marker))
    assert.is_truthy(helpers.wait_for(function() return helpers.exists(marker) end, 20))
    local ok, out = helpers.peer(("incr %s %s 1"):format(q(path), s.sid))
    assert.is_true(ok, out)
    helpers.wait_exit(pid, 20)
    assert.are.equal(11, store:get(s.sid).secondaryCodeAttempts)
  end)

  it("writes nothing and fails with 'compromised' when the lock was taken away", function()
    local s = assert(store:create {})
    local before = helpers.read(path)
    local v, msg, code = store:update(s.sid, function(x)
      x.counter = 1
      os.remove(path .. ".lock") -- as a reference process breaking a 'stale' lock would
    end)
    assert.is_nil(v)
    assert.are.equal("compromised", code)
    assert.matches("taken away", msg)
    assert.are.equal(before, helpers.read(path))
    assert.are.same({ "pair-sessions.json" }, helpers.ls(dir))
    -- replaced by someone else's sentinel: also refused, and theirs is left in place
    local _, _, code2 = store:update(s.sid, function(x)
      x.counter = 2
      os.remove(path .. ".lock")
      helpers.write(path .. ".lock", "999\n")
    end)
    assert.are.equal("compromised", code2)
    assert.are.equal("999\n", helpers.read(path .. ".lock"))
    assert.are.equal(before, helpers.read(path))
  end)

  it("releases on every path, including a mutator error", function()
    local s = assert(store:create {})
    assert.are.equal("callback", select(3, store:update(s.sid, function() error({}) end)))
    assert.is_false(helpers.exists(path .. ".lock"))
    assert.are.equal("invalid", select(3, store:update(s.sid, function() return 1 end)))
    assert.is_false(helpers.exists(path .. ".lock"))
  end)

  it("does not leak its descriptors into processes started from a mutator", function()
    local s = assert(store:create {})
    local out = dir .. "/fds"
    assert(store:update(s.sid, function()
      os.execute("ls -l /proc/self/fd/ > " .. q(out) .. " 2>&1")
    end))
    local listing = helpers.read(out)
    assert.is_nil(listing:find("pair-sessions", 1, true), listing)
    assert.is_nil(listing:find("inotify", 1, true), listing)
  end)
end)

describe("paths, as the kernel resolves them", function()
  after_each(helpers.cleanup)

  -- dir/real/deep, and dir/ln -> real/deep: so dir/ln/.. is dir/real, not dir.
  local function layout()
    local dir = helpers.tmpdir()
    assert.is_true(helpers.compat.execute("mkdir -p " .. q(dir .. "/real/deep") .. " && ln -s real/deep " .. q(dir .. "/ln")))
    return dir
  end

  it("dir/ln/../f names dir/real/f (file and sentinel), as the kernel and Node say", function()
    local dir = layout()
    local p = dir .. "/ln/../pair-sessions.json"
    local store = pairstore.open(p, { durable = false, lock_wait_ms = 5000 })
    assert.are.equal(p, store.path)
    local s = assert(store:create {})
    assert.is_true(helpers.exists(dir .. "/real/pair-sessions.json"))
    assert.is_false(helpers.exists(dir .. "/pair-sessions.json"))
    local inside
    assert(store:update(s.sid, function()
      inside = { real = helpers.exists(dir .. "/real/pair-sessions.json.lock"),
        lexical = helpers.exists(dir .. "/pair-sessions.json.lock") }
      if helpers.have("node") then
        -- Node, opening the path it is given as the reference does: the same file, and the
        -- same lock (its exclusive create of the sentinel finds ours)
        local ok, out = helpers.run("node -e " .. q([[
          const fs = require("fs"), path = require("path");
          const p = process.argv[1];
          console.log("dir " + fs.realpathSync.native(path.dirname(p)));
          console.log("sessions " + JSON.parse(fs.readFileSync(p, "utf8")).sessions.length);
          try { fs.openSync(p + ".lock", "wx"); console.log("lock free"); } catch (e) { console.log("lock " + e.code); }
        ]]) .. " " .. q(p))
        inside.node_ok, inside.node = ok, out
      end
    end))
    assert.are.same({ real = true, lexical = false, node_ok = inside.node_ok, node = inside.node }, inside)
    if inside.node then
      assert.is_true(inside.node_ok, inside.node)
      local _, real = helpers.run("cd " .. q(dir .. "/real") .. " && pwd -P")
      assert.are.equal("dir " .. real:gsub("\n$", "") .. "\nsessions 1\nlock EEXIST\n", inside.node)
    end
    -- a store opened at the kernel's spelling is the same store
    local other = pairstore.open(dir .. "/real/pair-sessions.json", { durable = false })
    assert.are.equal(s.sid, assert(other:get(s.sid)).sid)
    store:close()
    other:close()
    assert.are.same({ "deep", "pair-sessions.json" }, helpers.ls(dir .. "/real"))
  end)

  it("a call from a mutator through a symlinked or '..' spelling fails at once with 'reentrant'", function()
    local dir = layout()
    local spellings = { dir .. "/real/deep/pair-sessions.json", dir .. "/ln/pair-sessions.json",
      dir .. "/ln/../deep/pair-sessions.json", dir .. "/./ln//pair-sessions.json" }
    local stores = {}
    for i, p in ipairs(spellings) do stores[i] = pairstore.open(p, { durable = false, lock_wait_ms = 5000 }) end
    local s = assert(stores[1]:create {})
    for i, outer in ipairs(stores) do
      for j, inner in ipairs(stores) do
        local got
        local t0 = helpers.mono()
        assert(outer:update(s.sid, function() got = { inner:get(s.sid) } end))
        assert.is_true(helpers.mono() - t0 < 1, spellings[i] .. " -> " .. spellings[j])
        assert.are.equal("reentrant", got[3], spellings[i] .. " -> " .. spellings[j])
      end
    end
    -- two files in one directory are two stores
    local sibling = pairstore.open(dir .. "/ln/other.json", { durable = false })
    local got
    assert(stores[1]:update(s.sid, function() got = { sibling:list_all() } end))
    assert.are.same({}, got[1])
  end)

  it("re-resolves the path each transaction: a directory moved or replaced since is left behind", function()
    local dir = helpers.tmpdir()
    local p = dir .. "/d/pair-sessions.json"
    local store = pairstore.open(p, { durable = false })
    local s = assert(store:create {})
    assert.is_true(helpers.compat.execute("cd " .. q(dir) .. " && mv d old && mkdir d"))
    assert.are.same({}, store:list_all()) -- the directory the path names now: empty
    local s2 = assert(store:create {})
    assert.are.same({ s2.sid }, { helpers.read_json(p).sessions[1].sid })
    assert.are.equal(s.sid, helpers.read_json(dir .. "/old/pair-sessions.json").sessions[1].sid)
    -- nothing of ours is left in the directory the store moved away from
    assert.are.same({ "pair-sessions.json" }, helpers.ls(dir .. "/old"))
    -- a symlinked directory is followed to its new target
    assert.is_true(helpers.compat.execute("cd " .. q(dir) .. " && mkdir a b && ln -s a link"))
    local linked = pairstore.open(dir .. "/link/pair-sessions.json", { durable = false })
    local la = assert(linked:create {})
    assert.is_true(helpers.compat.execute("cd " .. q(dir) .. " && ln -sfn b link"))
    assert.are.same({}, linked:list_all())
    assert(linked:create {})
    assert.are.equal(la.sid, helpers.read_json(dir .. "/a/pair-sessions.json").sessions[1].sid)
    assert.are.equal(1, #helpers.read_json(dir .. "/b/pair-sessions.json").sessions)
    -- a directory removed since is made again (mkdir -p, 0700)
    assert.is_true(helpers.compat.execute("rm -rf " .. q(dir .. "/d")))
    assert(store:create {})
    assert.are.equal("700", helpers.mode(dir .. "/d"))
    store:close()
    linked:close()
  end)

  it("writes nothing and fails with 'compromised' when the directory is replaced during a transaction", function()
    local dir = helpers.tmpdir()
    local p = dir .. "/d/pair-sessions.json"
    local store = pairstore.open(p, { durable = false })
    local s = assert(store:create {})
    local before = helpers.read(p)
    local v, msg, code = store:update(s.sid, function(x)
      x.note = "lost"
      os.execute("cd " .. q(dir) .. " && mv d old && mkdir d")
    end)
    assert.is_nil(v)
    assert.are.equal("compromised", code)
    assert.matches("directory .- was replaced or moved during the transaction; nothing written", msg)
    assert.are.equal(before, helpers.read(dir .. "/old/pair-sessions.json"))
    assert.are.same({}, helpers.ls(dir .. "/d"))
    -- the next transaction works in the directory the path names now
    assert.are.same({}, store:list_all())
    store:close()
    assert.are.same({ "pair-sessions.json" }, helpers.ls(dir .. "/old"))
  end)
end)
