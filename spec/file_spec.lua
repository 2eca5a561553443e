-- The sessions file: reading the reference's files, robustness of the load, corrupt and
-- unreadable files, write failures, hostile paths, modes.
local pairstore = require "pairstore"
local crypto = require "pairstore.crypto"
local helpers = require "helpers"

local T0 = 1764300000000
local FIXTURE = helpers.FIXTURES .. "/reference-store.json"
local q = helpers.sh_quote

local function open_at(path, clock_ms, extra)
  local events = {}
  local opts = { now = function() return clock_ms end, durable = false,
    on_event = function(name, info) events[#events + 1] = { name = name, info = info } end }
  for k, v in pairs(extra or {}) do opts[k] = v end
  return pairstore.open(path, opts), events
end

local function assert_io(code_expected, ...)
  local v, msg, code = ...
  assert.is_nil(v)
  assert.are.equal(code_expected or "io", code)
  assert.is_string(msg)
  return msg
end

-- A file's bytes, mode, owner, inode and links, to show that nothing touched it.
local function snapshot(path)
  local _, st = helpers.run("stat -c '%a %u:%g %i %h' " .. q(path))
  return { bytes = helpers.read(path), stat = st }
end

describe("the reference's file", function()
  after_each(helpers.cleanup)

  it("loads with its four sessions, statuses and fields", function()
    local dir = helpers.tmpdir()
    local path = dir .. "/pair-sessions.json"
    helpers.write(path, helpers.read(FIXTURE))
    local store = open_at(path, T0 + 60000)
    local all = store:list_all()
    assert.are.equal(4, #all)
    local want = {
      { "08a7a099bd235c2f544a3e132e2adc77", "awaiting_scan", 0, "042917", "generate", "cli" },
      { "a7a70c90c1681fd41a352a9c02684643", "device_connected", 0, "100000", "import", "telegram" },
      { "885d6435abf3284833d8c9ca0747452b", "completed", 0, "999999", "generate", "cli" },
      { "a775ffdf45083034e50412bf8739ed44", "rejected", 5, "555555", "generate", "cli" },
    }
    for i, w in ipairs(want) do
      local s = all[i]
      assert.are.equal(w[1], s.sid)
      assert.are.equal(w[2], s.status)
      assert.are.equal(w[3], s.secondaryCodeAttempts)
      assert.are.equal(w[4], s.secondaryCode)
      assert.are.equal(w[5], s.mode)
      assert.are.equal(w[6], s.operatorContext.channel)
      assert.is_true(helpers.is_integer(s.createdAtMs))
      -- the reference's keys are real X25519 pairs
      assert.are.equal(crypto.public_key(s.skGatewayB64), s.pkGatewayB64)
    end
    assert.are.same({ "08a7a099bd235c2f544a3e132e2adc77", "a7a70c90c1681fd41a352a9c02684643" },
      { store:list_active()[1].sid, store:list_active()[2].sid })
    -- read-only: the file is untouched
    assert.are.equal(helpers.read(FIXTURE), helpers.read(path))
  end)

  it("is written back byte for byte after a change that is undone", function()
    local dir = helpers.tmpdir()
    local path = dir .. "/pair-sessions.json"
    helpers.write(path, helpers.read(FIXTURE))
    local store = open_at(path, T0 + 60000)
    assert(store:update("08a7a099bd235c2f544a3e132e2adc77", function(s) s.tmp = 1 end))
    assert(store:update("08a7a099bd235c2f544a3e132e2adc77", function(s) s.tmp = nil end))
    assert.are.equal(helpers.read(FIXTURE), helpers.read(path))
  end)

  it("keeps unknown fields through a load-modify-write cycle", function()
    local dir = helpers.tmpdir()
    local path = dir .. "/pair-sessions.json"
    local doc = helpers.json.decode(helpers.read(FIXTURE))
    doc.sessions[1].futureField = { nested = { 1, 2, 3 }, flag = true, text = "é\"/\\" }
    doc.sessions[1].operatorContext.extra = "kept"
    helpers.write(path, helpers.json.encode(doc))
    local store = open_at(path, T0 + 60000)
    assert(store:transition("08a7a099bd235c2f544a3e132e2adc77", "device_connected"))
    local back = helpers.read_json(path).sessions[1]
    assert.are.same({ 1, 2, 3 }, back.futureField.nested)
    assert.are.equal(true, back.futureField.flag)
    assert.are.equal("é\"/\\", back.futureField.text)
    assert.are.equal("kept", back.operatorContext.extra)
    assert.are.equal("device_connected", back.status)
  end)

  it("prunes the reference's sessions on the reference's schedule", function()
    local dir = helpers.tmpdir()
    local path = dir .. "/pair-sessions.json"
    helpers.write(path, helpers.read(FIXTURE))
    -- the rejected one (changed at T0+50000) is kept until +3600000 and gone at +3600001
    local kept = open_at(path, T0 + 50000 + 3600000)
    local ids = {}
    for _, s in ipairs(kept:list_all()) do ids[#ids + 1] = s.sid end
    assert.are.equal(3, #ids) -- the completed one (changed at T0+40000) is already gone
    assert.are.equal("a775ffdf45083034e50412bf8739ed44", ids[3])
    local store = open_at(path, T0 + 50000 + 3600001)
    local all = store:list_all()
    local by = {}
    for _, s in ipairs(all) do by[s.sid] = s end
    assert.is_nil(by["a775ffdf45083034e50412bf8739ed44"])
    assert.is_nil(by["885d6435abf3284833d8c9ca0747452b"])
    assert.are.equal("expired", by["08a7a099bd235c2f544a3e132e2adc77"].status)
    assert.are.equal(T0 + 900000, by["08a7a099bd235c2f544a3e132e2adc77"].lastStatusChangeAtMs)
    -- and the file lost them (a read writes back when it deleted)
    assert.are.equal(2, #helpers.read_json(path).sessions)
  end)

  it("is readable by the reference peer after pairstore wrote it", function()
    if not helpers.have("node") then return pending("node not installed") end
    local dir = helpers.tmpdir()
    local path = dir .. "/pair-sessions.json"
    local store = pairstore.open(path)
    local s = assert(store:create { mode = "import", operator = { channel = "cli", senderId = "42" } })
    local ok, out = helpers.peer("dump " .. q(path))
    assert.is_true(ok, out)
    local seen = helpers.json.decode(out)
    assert.are.equal(1, #seen)
    assert.are.equal(s.sid, seen[1].sid)
    assert.are.equal(s.pkGatewayB64, seen[1].pkGatewayB64)
    -- and pairstore reads what the peer creates
    ok, out = helpers.peer("create " .. q(path))
    assert.is_true(ok, out)
    local created = helpers.json.decode(out)
    local got = assert(store:get(created.sid))
    assert.are.equal("reference-peer", got.operatorContext.channel)
    assert.are.equal(2, #store:list_all())
    assert.is_false(helpers.exists(path .. ".lock"))
  end)
end)

describe("loading", function()
  after_each(helpers.cleanup)

  local function good(overrides)
    local s = {
      sid = "0123456789abcdef0123456789abcdef", skGatewayB64 = "sk", pkGatewayB64 = "pk",
      createdAtMs = T0, expiresAtMs = T0 + 900000, secondaryCode = "123456",
      secondaryCodeAttempts = 0, operatorContext = { channel = "cli" }, mode = "generate",
      status = "awaiting_scan", lastStatusChangeAtMs = T0,
    }
    for k, v in pairs(overrides or {}) do s[k] = v end
    return s
  end

  local function with_sessions(list)
    local dir = helpers.tmpdir()
    local path = dir .. "/pair-sessions.json"
    local parts = {}
    for i, s in ipairs(list) do parts[i] = type(s) == "string" and s or helpers.json.encode(s) end
    helpers.write(path, '{"version":1,"sessions":[' .. table.concat(parts, ",") .. "]}")
    return path, dir
  end

  it("drops invalid entries like the reference, and says so", function()
    local null = helpers.json.null
    local bad = {
      good { sid = "" }, good { sid = 5 }, good { skGatewayB64 = 1 }, good { pkGatewayB64 = null },
      good { createdAtMs = "1" }, good { expiresAtMs = true }, good { lastStatusChangeAtMs = {} },
      good { secondaryCodeAttempts = "0" }, good { secondaryCode = "12345" },
      good { secondaryCode = "1234567" }, good { secondaryCode = 123456 }, good { secondaryCode = "12a456" },
      good { operatorContext = "cli" }, good { operatorContext = null }, good { mode = "export" },
      good { status = 1 }, '"a string"', "42", "null", "[]",
    }
    local list = { good { sid = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" } }
    for _, b in ipairs(bad) do list[#list + 1] = b end
    list[#list + 1] = good { sid = "ffffffffffffffffffffffffffffffff", status = "from_the_future" }
    local path = with_sessions(list)
    local store, events = open_at(path, T0)
    local all = store:list_all()
    assert.are.equal(2, #all)
    assert.are.equal("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", all[1].sid)
    assert.are.equal("ffffffffffffffffffffffffffffffff", all[2].sid)
    -- an unknown status is kept and non-terminal
    assert.are.equal("from_the_future", all[2].status)
    assert.are.equal(1, #events)
    assert.are.equal("invalid_dropped", events[1].name)
    assert.are.equal(#bad, events[1].info.count)
    -- a read does not rewrite; the next write drops them for good
    assert.are.equal(#list, #helpers.read_json(path).sessions)
    assert(store:transition("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "device_connected"))
    assert.are.equal(2, #helpers.read_json(path).sessions)
  end)

  it("expires an unknown status like any non-terminal one", function()
    local path = with_sessions { good { status = "from_the_future" } }
    local store = open_at(path, T0 + 900001)
    assert.are.equal("expired", store:get("0123456789abcdef0123456789abcdef").status)
  end)

  it("accepts integral numbers written as floats", function()
    local path = with_sessions { '{"sid":"eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee","skGatewayB64":"a","pkGatewayB64":"b","createdAtMs":1.7643e12,' ..
      '"expiresAtMs":1764300900000.0,"secondaryCode":"000000","secondaryCodeAttempts":0e0,' ..
      '"operatorContext":{},"mode":"import","status":"awaiting_scan","lastStatusChangeAtMs":1764300000000}' }
    local s = assert(open_at(path, T0):get("eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"))
    assert.are.equal(1764300000000, s.createdAtMs)
    assert.is_true(helpers.is_integer(s.createdAtMs))
    assert.is_true(helpers.is_integer(s.secondaryCodeAttempts))
  end)

  it("treats a missing file as empty and does not create it on reads", function()
    local dir = helpers.tmpdir()
    local store = open_at(dir .. "/none/pair-sessions.json", T0)
    assert.are.same({}, store:list_all())
    assert.are.equal(0, store:prune())
    assert.are.same({ "none" }, helpers.ls(dir)) -- the lock needed the directory; nothing else
    store:close()
    assert.are.same({}, helpers.ls(dir .. "/none"))
  end)

  local corrupt_cases = {
    { "not JSON", "{version:1" },
    { "empty file", "" },
    { "NaN", '{"version":1,"sessions":[],"x":NaN}' },
    { "Infinity", '{"version":1,"sessions":[],"x":-Infinity}' },
    { "1e999", '{"version":1,"sessions":[{"sid":"a","n":1e999}]}' },
    { "hex number", '{"version":1,"sessions":[],"x":0x10}' },
    { "version as a string", '{"version":"1","sessions":[]}' },
    { "sessions not an array", '{"version":1,"sessions":{"a":1}}' },
    { "sessions missing", '{"version":1}' },
    { "top level an array", "[1,2]", "refused" },
    { "deep nesting", '{"version":1,"sessions":[' .. ("["):rep(5000) .. ("]"):rep(5000) .. "]}" },
    { "BOM", "\239\187\191" .. '{"version":1,"sessions":[]}', "refused" },
    { "trailing garbage", '{"version":1,"sessions":[]} x' },
  }
  for _, c in ipairs(corrupt_cases) do
    it("refuses a corrupt file (" .. c[1] .. ") on reads, and a write moves it aside", function()
      local dir = helpers.tmpdir()
      local path = dir .. "/pair-sessions.json"
      helpers.write(path, c[2])
      os.execute("chmod 0600 " .. q(path))
      local before = snapshot(path)
      local store, events = open_at(path, T0)
      -- reads: code corrupt, the message names the path and why; the file as it was
      for _, read in ipairs { function() return store:list_all() end, function() return store:list_active() end,
        function() return store:get("0123456789abcdef0123456789abcdef") end } do
        local msg = assert_io("corrupt", read())
        assert.matches(path:gsub("%p", "%%%0") .. " is not a valid sessions file %(.+%); left as it is", msg)
      end
      assert.are.same(before, snapshot(path))
      assert.are.same({ "pair-sessions.json" }, helpers.ls_live(dir))
      assert.are.equal(0, #events)
      if c[3] == "refused" then -- it does not begin like a sessions file: never moved
        local msg = assert_io("corrupt", store:create {})
        assert.matches("does not begin like one", msg)
        assert.are.same(before, snapshot(path))
        return
      end
      -- a write: moved aside with its bytes and mode, then a fresh file
      assert(store:create {})
      local moved
      for _, n in ipairs(helpers.ls(dir)) do
        if n:match("^pair%-sessions%.json%.corrupt%-%d+$") then moved = dir .. "/" .. n end
      end
      assert.is_string(moved)
      assert.are.equal(c[2], helpers.read(moved))
      assert.are.equal("600", helpers.mode(moved))
      assert.are.equal(1, #events)
      assert.are.equal("corrupt", events[1].name)
      assert.are.equal(moved, events[1].info.path)
      assert.matches("corrupt sessions file moved aside", events[1].info.message)
      assert.are.equal(1, #helpers.read_json(path).sessions)
    end)
  end

  it("refuses a file over the size cap without reading or moving it, reads and writes alike", function()
    local dir = helpers.tmpdir()
    local path = dir .. "/pair-sessions.json"
    os.execute("truncate -s 50M " .. q(path) .. " && chmod 0600 " .. q(path))
    local store, events = open_at(path, T0)
    assert.matches("larger than max_file_bytes", assert_io("limit", store:list_all()))
    assert.matches("left as it is", assert_io("limit", store:prune()))
    assert.are.equal(0, #events)
    assert.are.same({ "pair-sessions.json" }, helpers.ls_live(dir))
    -- a smaller cap applies too: a valid file another store wrote is never moved for it
    helpers.write(path, helpers.read(FIXTURE))
    os.execute("chmod 0600 " .. q(path))
    local small, ev2 = open_at(path, T0, { max_file_bytes = 1000 })
    assert_io("limit", small:get("08a7a099bd235c2f544a3e132e2adc77"))
    assert_io("limit", small:create {})
    assert.is_nil(ev2[1])
    assert.are.equal(helpers.read(FIXTURE), helpers.read(path))
  end)
end)

describe("files that are not ours", function()
  after_each(helpers.cleanup)

  -- Every operation fails with `code` and nothing in dir changes.
  local function all_refuse(path, code, pattern)
    local dir = path:match("^(.*)/")
    local before, names = snapshot(path), helpers.ls(dir)
    local store, events = open_at(path, T0 + 60000)
    local sid = "08a7a099bd235c2f544a3e132e2adc77"
    local ops = {
      { "list_all", false, function() return store:list_all() end },
      { "get", false, function() return store:get(sid) end },
      { "create", true, function() return store:create {} end },
      { "prune", true, function() return store:prune() end },
      { "transition", true, function() return store:transition(sid, "rejected") end },
      { "update", true, function() return store:update(sid, function(x) x.n = 1 end) end },
    }
    for _, o in ipairs(ops) do
      local name, writes = o[1], o[2]
      local msg = assert_io(code, o[3]())
      assert.matches(path:gsub("%p", "%%%0"), msg, nil, name)
      -- a read says it moves nothing; a write says why it did not move this one
      if code == "corrupt" and not writes then assert.matches("only a writing operation moves it aside", msg, nil, name) end
      if pattern and (writes or code ~= "corrupt") then assert.matches(pattern, msg, nil, name) end
      assert.are.same(before, snapshot(path), name)
    end
    store:close()
    assert.are.same(names, helpers.ls(dir))
    for _, e in ipairs(events) do assert.are_not.equal("corrupt", e.name) end
  end

  it("never moves an /etc/passwd-like file (root's, 0644): reads and writes fail with corrupt", function()
    local dir = helpers.tmpdir()
    local path = dir .. "/passwd"
    os.execute("cp /etc/passwd " .. q(path) .. " && chmod 0644 " .. q(path))
    all_refuse(path, "corrupt", "mode 0644 lets group or others in")
  end)

  for _, mode in ipairs { "0640", "0604", "0660", "0610" } do
    it("never moves a corrupt file with group or other bits (" .. mode .. ")", function()
      local dir = helpers.tmpdir()
      local path = dir .. "/pair-sessions.json"
      helpers.write(path, "{not json")
      os.execute("chmod " .. mode .. " " .. q(path))
      all_refuse(path, "corrupt", "lets group or others in")
    end)
  end

  it("never moves a corrupt file owned by another user (as root)", function()
    if not helpers.is_root() then return pending("needs root to give a file to another user") end
    local dir = helpers.tmpdir()
    local path = dir .. "/pair-sessions.json"
    helpers.write(path, "{not json")
    os.execute("chmod 0600 " .. q(path) .. " && chown nobody:nogroup " .. q(path))
    all_refuse(path, "corrupt", "belongs to uid 65534, not to this user %(uid 0%)")
  end)

  it("never moves a well-formed file of another format version, even by writes", function()
    local dir = helpers.tmpdir()
    local path = dir .. "/pair-sessions.json"
    for _, content in ipairs { '{"version":2,"sessions":[]}', '{"version":3,"sessions":{"new":"shape"}}' } do
      helpers.write(path, content)
      os.execute("chmod 0600 " .. q(path))
      all_refuse(path, "unsupported_version", "has format version %d; this pairstore reads and writes version 1 only")
      assert.are.equal(content, helpers.read(path))
    end
    -- a number from the file goes into the message only when it looks like a version
    helpers.write(path, '{"version":424242,"sessions":[]}')
    local store = open_at(path, T0)
    local msg = assert_io("unsupported_version", store:list_all())
    assert.is_nil(msg:find("424242", 1, true), msg)
    assert.matches("a format version other than 1", msg)
  end)

  -- (from a copy of the tree nobody may read, and from /: the clone may sit in a 0700 directory)
  local function as_nobody(lua)
    local _, env = helpers.readable_tree()
    return helpers.run(("cd / && setpriv --reuid=nobody --regid=nogroup --clear-groups env %s %s -e %s"):format(
      env, helpers.LUA, q(lua)))
  end

  it("keeps the owner and group of a service's file that root replaces", function()
    if not (helpers.is_root() and helpers.have("setpriv")) then return pending("needs root and setpriv") end
    local top = helpers.tmpdir()
    os.execute("chmod 0755 " .. q(top))
    local dir = top .. "/svc"
    local path = dir .. "/pair-sessions.json"
    os.execute("mkdir " .. q(dir) .. " && chown nobody:nogroup " .. q(dir) .. " && chmod 0700 " .. q(dir))
    local code = ([[
      local store = require("pairstore").open(%q, { durable = false })
      local s = assert(store:create {})
      print("created " .. s.sid)
    ]]):format(path)
    local ok, out = as_nobody(code)
    assert.is_true(ok, out)
    local function owner() local _, o = helpers.run("stat -c '%U:%G %a' " .. q(path)); return o:match("^(%S+ %d+)") end
    assert.are.equal("nobody:nogroup 600", owner())
    -- root writes (create, update, prune that deletes): the file stays the service's
    local store = pairstore.open(path, { durable = false })
    local s = assert(store:create {})
    assert.are.equal("nobody:nogroup 600", owner())
    assert(store:update(s.sid, function(x) x.note = "root was here" end))
    assert.are.equal("nobody:nogroup 600", owner())
    store:close()
    -- and the service still reads and writes it
    ok, out = as_nobody(([[
      local store = require("pairstore").open(%q, { durable = false })
      local all = assert(store:list_all())
      assert(store:create {})
      print("count " .. #all)
    ]]):format(path))
    assert.is_true(ok, out)
    assert.matches("count 2", out)
    assert.are.equal("nobody:nogroup 600", owner())
    -- a group that differs only: kept too
    os.execute("chown root:nogroup " .. q(path))
    store = pairstore.open(path, { durable = false })
    assert(store:create {})
    store:close()
    assert.are.equal("root:nogroup 600", owner())
  end)

  it("as root in a service's directory, makes the first file and the lock the service's", function()
    if not (helpers.is_root() and helpers.have("setpriv")) then return pending("needs root and setpriv") end
    local top = helpers.tmpdir()
    os.execute("chmod 0755 " .. q(top))
    local dir = top .. "/svc"
    local path = dir .. "/pair-sessions.json"
    os.execute("mkdir " .. q(dir) .. " && chown nobody:nogroup " .. q(dir) .. " && chmod 0700 " .. q(dir))
    local function owner(p) local _, o = helpers.run("stat -c '%U:%G' " .. q(p)); return o:match("^(%S+)") end
    local store = pairstore.open(path, { durable = false })
    local s = assert(store:create {})
    assert.are.equal("nobody:nogroup", owner(path))
    -- while root holds the lock, the service waits for it (before: EACCES on root's sentinel)
    local sentinel, waited
    assert(store:update(s.sid, function()
      sentinel = owner(path .. ".lock")
      local _, out = as_nobody(([[
        local r, msg, code = require("pairstore").open(%q, { lock_wait_ms = 300 }):list_all()
        print("code " .. tostring(code))
      ]]):format(path))
      waited = out
    end))
    store:close()
    assert.are.equal("nobody:nogroup", sentinel)
    assert.matches("code timeout", waited)
    local ok, out = as_nobody(([[
      local all = assert(require("pairstore").open(%q):list_all())
      print("count " .. #all)
    ]]):format(path))
    assert.is_true(ok, out)
    assert.matches("count 1", out)
  end)

  it("fails with 'io' and writes nothing when it cannot keep the owner (not root)", function()
    if not (helpers.is_root() and helpers.have("setpriv")) then return pending("needs root and setpriv") end
    local dir = helpers.tmpdir()
    local path = dir .. "/pair-sessions.json"
    helpers.write(path, helpers.read(FIXTURE))
    -- root's readable file in a directory nobody may write: nobody cannot give a file to root
    os.execute("chmod 0644 " .. q(path) .. " && chown nobody " .. q(dir) .. " && chmod 0755 " .. q(dir))
    local before = snapshot(path)
    local ok, out = as_nobody(([[
      local store = require("pairstore").open(%q, { durable = false, now = function() return %d end })
      local v, msg, code = store:create {}
      print(tostring(v), code, msg)
    ]]):format(path, T0 + 60000))
    assert.is_true(ok, out)
    assert.matches("nil\tio\tgive the new file the owner 0:0 of .-: Operation not permitted %(EPERM%)", out)
    assert.are.same(before, snapshot(path))
    assert.are.same({ "pair-sessions.json" }, helpers.ls(dir))
  end)
end)

describe("failures", function()
  after_each(helpers.cleanup)

  it("fails with 'io' on an unreadable file and writes nothing", function()
    if helpers.is_root() and not helpers.have("setpriv") then return pending("needs a non-root user") end
    local dir = helpers.tmpdir()
    local path = dir .. "/pair-sessions.json"
    helpers.write(path, helpers.read(FIXTURE))
    os.execute("chmod 000 " .. q(path))
    if helpers.is_root() then
      -- run the operation as nobody, who owns the directory but cannot read the file
      os.execute("chown -R nobody " .. q(dir) .. " && chmod 000 " .. q(path))
      local _, env = helpers.readable_tree()
      local ok, out = helpers.run(("cd / && setpriv --reuid=nobody --regid=nogroup --clear-groups env %s %s -e %s"):format(
        env, helpers.LUA, q(([[
        local store = require("pairstore").open(%q, { durable = false })
        local v, msg, code = store:create {}
        print(tostring(v), code, msg)
        v, msg, code = store:list_all()
        print(tostring(v), code, msg)
      ]]):format(path))))
      assert.is_true(ok, out)
      assert.matches("nil\tio\topen .-pair%-sessions%.json: Permission denied %(EACCES%)", out)
      local lines = {}
      for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
      assert.are.equal(2, #lines)
      assert.matches("^nil\tio\t", lines[2])
    else
      local store = open_at(path, T0)
      local msg = assert_io("io", store:create {})
      assert.matches("EACCES", msg)
    end
    os.execute("chmod 600 " .. q(path))
    assert.are.equal(helpers.read(FIXTURE), helpers.read(path))
    assert.are.same({ "pair-sessions.json" }, helpers.ls(dir))
  end)

  it("fails with 'io' when the path is a directory, a FIFO or a symlink", function()
    local dir = helpers.tmpdir()
    local path = dir .. "/pair-sessions.json"
    local victim = helpers.tmpdir() .. "/victim"
    helpers.write(victim, "victim")
    local plant = {
      directory = "mkdir " .. q(path),
      fifo = "mkfifo " .. q(path),
      symlink = "ln -s " .. q(victim) .. " " .. q(path),
      ["dangling symlink"] = "ln -s " .. q(dir .. "/nowhere") .. " " .. q(path),
    }
    for what, cmd in pairs(plant) do
      os.execute("rm -rf " .. q(path))
      assert.is_true(helpers.compat.execute(cmd))
      local store = open_at(path, T0, { lock_wait_ms = 200 })
      local msg = assert_io("io", store:create {})
      assert.matches("pair%-sessions%.json", msg, what)
      assert_io("io", store:list_all())
      assert_io("io", store:get("eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"))
      assert.is_false(helpers.exists(path .. ".lock"), what)
    end
    assert.are.equal("victim", helpers.read(victim))
    assert.is_false(helpers.exists(dir .. "/nowhere"))
  end)

  it("fails with 'io' when the lock path is a symlink, FIFO or directory, without hanging", function()
    local dir = helpers.tmpdir()
    local path = dir .. "/pair-sessions.json"
    local victim = helpers.tmpdir() .. "/victim"
    helpers.write(victim, "victim")
    for _, cmd in ipairs { "ln -s " .. q(victim), "mkfifo", "mkdir", "ln -s " .. q(dir .. "/nowhere") } do
      os.execute("rm -rf " .. q(path .. ".lock"))
      assert.is_true(helpers.compat.execute(cmd .. " " .. q(path .. ".lock")))
      local store = open_at(path, T0, { lock_wait_ms = 5000 })
      local t0 = helpers.mono()
      local msg = assert_io("io", store:create {})
      assert.is_true(helpers.mono() - t0 < 2, cmd)
      assert.matches("lock", msg)
      assert.is_false(helpers.exists(path))
    end
    assert.are.equal("victim", helpers.read(victim))
    assert.is_false(helpers.exists(dir .. "/nowhere"))
  end)

  it("returns 'io' on a write failure and leaves the old file byte-identical (ulimit -f)", function()
    local dir = helpers.tmpdir()
    local path = dir .. "/pair-sessions.json"
    helpers.write(path, helpers.read(FIXTURE))
    local ok, out = helpers.run(("trap '' XFSZ; ulimit -f 2; %s %s -e %s"):format(helpers.LUA_ENV, helpers.LUA, q(([[
      local store = require("pairstore").open(%q, { now = function() return %d end })
      local v, msg, code = store:update("08a7a099bd235c2f544a3e132e2adc77", function(s)
        s.padding = string.rep("x", 4096)
      end)
      print(tostring(v), code, msg)
    ]]):format(path, T0 + 60000))))
    assert.is_true(ok, out)
    assert.matches("^nil\tio\twrite temp file for .-: File too large %(EFBIG%)", out)
    assert.are.equal(helpers.read(FIXTURE), helpers.read(path))
    assert.are.same({ "pair-sessions.json" }, helpers.ls(dir))
  end)

  it("fails with 'io' when the directory cannot be created", function()
    local dir = helpers.tmpdir()
    helpers.write(dir .. "/file", "x")
    local store = open_at(dir .. "/file/sub/pair-sessions.json", T0)
    local msg = assert_io("io", store:create {})
    assert.matches("ENOTDIR", msg)
  end)
end)

describe("modes", function()
  after_each(helpers.cleanup)

  it("brings a pre-existing 0644 file back to 0600 on the next write", function()
    local dir = helpers.tmpdir()
    local path = dir .. "/pair-sessions.json"
    helpers.write(path, helpers.read(FIXTURE))
    os.execute("chmod 0644 " .. q(path))
    local store = open_at(path, T0 + 60000)
    assert(store:create {})
    assert.are.equal("600", helpers.mode(path))
  end)

  for _, umask in ipairs { "0000", "0277", "0077" } do
    it("writes 0600 files and 0700 directories under umask " .. umask, function()
      local dir = helpers.tmpdir()
      local path = dir .. "/a/b/pair-sessions.json"
      local ok, out = helpers.run(("umask %s; %s %s -e %s"):format(umask, helpers.LUA_ENV, helpers.LUA, q(([[
        local store = require("pairstore").open(%q)
        assert(store:create {})
        assert(store:create {})
        print(#store:list_all())
      ]]):format(path))))
      assert.is_true(ok, out)
      assert.matches("^2", out)
      assert.are.equal("600", helpers.mode(path))
      assert.are.equal("700", helpers.mode(dir .. "/a"))
      assert.are.equal("700", helpers.mode(dir .. "/a/b"))
    end)
  end
end)

describe("orphans of killed writers", function()
  after_each(helpers.cleanup)

  it("are swept under the lock: only regular files of ours with our prefixes", function()
    local dir = helpers.tmpdir()
    local path = dir .. "/pair-sessions.json"
    local alive = open_at(path, T0 + 60000) -- a live store: its parked sentinel is flocked
    alive:list_all()
    helpers.write(path, helpers.read(FIXTURE))
    local victim = helpers.tmpdir() .. "/victim"
    helpers.write(victim, "victim")
    helpers.write(path .. ".tmp-999-1764300000000", "half a fi")        -- the reference's temp name
    helpers.write(path .. ".tmp-998-0123456789abcdef", "half")          -- ours
    helpers.write(path .. ".lock.break-0123456789abcdef", "12\n")       -- a break interrupted
    helpers.write(path .. ".lock.idle-0123456789abcdef", "13\n")        -- parked by a dead process
    os.execute("ln -s " .. q(victim) .. " " .. q(path .. ".tmp-1-symlink"))
    os.execute("mkdir " .. q(path .. ".tmp-2-dir"))
    helpers.write(dir .. "/other.tmp-3-x", "not ours")
    local store, events = open_at(path, T0 + 60000)
    assert.are.equal(4, #store:list_all())
    assert.are.same({ "other.tmp-3-x", "pair-sessions.json", "pair-sessions.json.tmp-1-symlink",
      "pair-sessions.json.tmp-2-dir" }, helpers.ls_live(dir))
    assert.are.equal(2, #helpers.ls_parked(dir)) -- the live store's and ours
    assert.are.equal("victim", helpers.read(victim))
    assert.are.equal("orphans_swept", events[1].name)
    assert.are.equal(4, events[1].info.count)
    -- the sweep needs the lock: the same store does not sweep on every call
    helpers.write(path .. ".tmp-997-late", "x")
    store:list_all()
    assert.is_true(helpers.exists(path .. ".tmp-997-late"))
    -- closing removes the parked sentinels
    alive:close()
    store:close()
    assert.are.same({ "other.tmp-3-x", "pair-sessions.json", "pair-sessions.json.tmp-1-symlink",
      "pair-sessions.json.tmp-2-dir", "pair-sessions.json.tmp-997-late" }, helpers.ls(dir))
  end)
end)
