-- Reads without write access (issue 19, item 13): where the lock sentinel cannot be made (a
-- read-only file system, a directory the reading user may not write), get and list read the
-- file without the lock. Writers replace it by rename, so every read sees one whole version,
-- while a writer keeps replacing it; writes there still fail.
local pairstore = require "pairstore"
local helpers = require "helpers"
local q = helpers.sh_quote

-- A writer child (the runtime under test, as root) updating the session sid of the store at
-- path until the file stop exists: its counter n goes 1, 2, 3, ...
local function start_writer(path, sid, stop, out)
  return helpers.spawn_lua(([[
    local store = require("pairstore").open(%q, { durable = false })
    local n = 0
    while true do
      local f = io.open(%q)
      if f then f:close() break end
      n = n + 1
      assert(store:update(%q, function(x) x.n = n end))
    end
    print("writes " .. n)
  ]]):format(path, stop, sid), out)
end

-- The reader's loop (a chunk): READS list and get calls on the store at PATH; prints
-- "reads <n> last <counter>" or the first failure.
local READER = [[
  local store = require("pairstore").open(%q, { durable = false })
  local last = -1
  for i = 1, %d do
    local all, msg, code = store:list_all()
    if not all then print("list failed: " .. tostring(code) .. " " .. tostring(msg)) os.exit(1) end
    if #all ~= 1 then print("list gave " .. #all .. " sessions") os.exit(1) end
    local n = all[1].n or 0
    if n < last then print("went back from " .. last .. " to " .. n) os.exit(1) end
    last = n
    local s, gmsg, gcode = store:get(%q)
    if not s then print("get failed: " .. tostring(gcode) .. " " .. tostring(gmsg)) os.exit(1) end
    if (s.n or 0) < last then print("get went back from " .. last .. " to " .. tostring(s.n)) os.exit(1) end
    last = s.n or 0
  end
  print("reads %d last " .. last)
]]

local function writer_result(stop, out, pid)
  helpers.write(stop, "")
  assert.is_truthy(helpers.wait_exit(pid, 30), "the writer did not stop")
  local text = helpers.read(out) or ""
  return tonumber(text:match("writes (%d+)")), text
end

describe("reads without write access", function()
  after_each(helpers.cleanup)

  it("list and get read a read-only bind mount without the lock while a writer replaces the file", function()
    if not (helpers.is_root() and helpers.have("mount")) then return pending("needs root (a bind mount)") end
    local top = helpers.tmpdir()
    local rw, ro = top .. "/rw", top .. "/ro"
    os.execute("mkdir " .. q(rw) .. " " .. q(ro))
    local ok, out = helpers.run(("mount --bind %s %s && mount -o remount,ro,bind %s"):format(q(rw), q(ro), q(ro)))
    if not ok then
      os.execute("umount " .. q(ro) .. " 2>/dev/null")
      return pending("cannot make a read-only bind mount here: " .. out)
    end
    local path, ropath = rw .. "/pair-sessions.json", ro .. "/pair-sessions.json"
    local writer, stop, wout, script, store
    local results = { pcall(function()
      local s = assert(pairstore.open(path, { durable = false }):create {})
      stop, wout = top .. "/stop", top .. "/writer.out"
      writer, script = start_writer(path, s.sid, stop, wout)
      assert.is_truthy(helpers.wait_for(function() return (pairstore.open(path):get(s.sid) or {}).n end, 10))
      store = pairstore.open(ropath, { durable = false })
      local last = 0
      for _ = 1, 200 do
        local all, msg, code = store:list_all()
        assert.is_table(all, tostring(code) .. " " .. tostring(msg))
        assert.are.equal(1, #all)
        assert.is_true(all[1].n >= last)
        last = all[1].n
        local one, gmsg = store:get(s.sid)
        assert.is_table(one, gmsg)
        assert.is_true(one.n >= last)
        last = one.n
      end
      -- a write still needs the lock: it fails, and says why
      local v, msg, code = store:create {}
      assert.is_nil(v)
      assert.are.equal("io", code)
      assert.matches("(EROFS)", msg, 1, true)
      local writes, wtext = writer_result(stop, wout, writer)
      writer = nil
      assert.is_truthy(writes, wtext)
      assert.is_true(last > 1 and last <= writes, ("read up to %d of %d writes"):format(last, writes))
    end) }
    if writer then helpers.write(stop, ""); helpers.wait_exit(writer, 30) end
    if script then os.remove(script) end
    if store then store:close() end -- (its directory handle keeps the mount busy)
    collectgarbage()
    os.execute("umount " .. q(ro))
    assert(results[1], results[2])
  end)

  it("list and get work for a user who may read the file but not write its directory", function()
    if not (helpers.is_root() and helpers.have("setpriv")) then return pending("needs root and setpriv") end
    local top = helpers.tmpdir()
    os.execute("chmod 0755 " .. q(top))
    local dir = top .. "/svc"
    local path = dir .. "/pair-sessions.json"
    -- the service's directory, which the service itself may not write (root writes its file,
    -- as the service's: nobody may read it)
    os.execute("mkdir " .. q(dir) .. " && chown nobody:nogroup " .. q(dir))
    local s = assert(pairstore.open(path, { durable = false }):create {})
    os.execute("chmod 0555 " .. q(dir))
    local stop, wout = top .. "/stop", top .. "/writer.out"
    local writer, script = start_writer(path, s.sid, stop, wout)
    assert.is_truthy(helpers.wait_for(function() return (pairstore.open(path):get(s.sid) or {}).n end, 10))
    local _, env = helpers.readable_tree() -- (nobody may not read a tree under a 0700 directory)
    local ok, out = helpers.run(("setpriv --reuid=nobody --regid=nogroup --clear-groups env %s %s -e %s"):format(
      env, helpers.LUA, q(READER:format(path, 200, s.sid, 200))))
    local writes, wtext = writer_result(stop, wout, writer)
    os.remove(script)
    assert.is_true(ok, out)
    assert.is_truthy(writes, wtext)
    local last = tonumber(out:match("reads 200 last (%d+)"))
    assert.is_truthy(last, out)
    assert.is_true(last >= 1 and last <= writes, ("read up to %d of %d writes"):format(last, writes))
    -- a write as that user fails on the lock, as before, and changes nothing
    local before = helpers.read(path)
    ok, out = helpers.run(("setpriv --reuid=nobody --regid=nogroup --clear-groups env %s %s -e %s"):format(
      env, helpers.LUA, q(([[
        local v, msg, code = require("pairstore").open(%q):create {}
        print(tostring(v), code, msg)
      ]]):format(path))))
    assert.is_true(ok, out)
    assert.matches("nil\tio\tcreate lock in .-Permission denied %(EACCES%)", out)
    assert.are.equal(before, helpers.read(path))
    os.execute("chmod 0755 " .. q(dir))
  end)
end)
