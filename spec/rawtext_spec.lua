-- What the reference (or a person) wrote is kept byte for byte (issue 11, item 1): a session an
-- operation does not change is written back exactly as read; a changed one differs only in the
-- values changed, written as JSON.stringify would write them.
local pairstore = require "pairstore"
local helpers = require "helpers"
local cjson = require "cjson"

local ROOT = helpers.ROOT
local T0 = 1764300000000

-- The values a corpus mutator sets: the same names as spec/support/corpus.mjs's VALUES.
local VALUES = {
  pointthree = 0.1 + 0.2, big53 = 2.0 ^ 53, e21 = 1e21, tiny = 1.5e-7, neg = -12.5, int = 42,
  third = 1 / 3, huge = 1.7976931348623157e308, small = 5e-324, ms = 1764300123456.25,
  str = "plain", esc = "q\"b\\s\n\t\a\195\169\240\159\152\128\226\128\168", yes = true, no = false, nul = cjson.null,
  obj = { a = 1, b = { 1, "x", { c = cjson.null } } }, arr = { 0.5, "y", { 2 } },
}

local function copy(v)
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = copy(x) end
  return t
end

-- Where two texts first differ, for a readable failure.
local function first_diff(a, b)
  local i = 1
  while i <= #a and a:sub(i, i) == b:sub(i, i) do i = i + 1 end
  return string.format("first difference at byte %d:\n  got:      %s\n  expected: %s", i,
    a:sub(math.max(1, i - 60), i + 60), b:sub(math.max(1, i - 60), i + 60))
end

local function open(path, now)
  now = helpers.compat.tointeger(now)
  return pairstore.open(path, { now = function() return now end, durable = false })
end

local function run_op(store, op)
  if op.op == "transition" then return store:transition(op.sid, op.status) end
  if op.op == "register_failed_code" then return store:register_failed_code(op.sid) end
  if op.op == "consume" then return store:consume(op.sid) end
  if op.op == "expire" then return store:prune() end
  return store:update(op.sid, function(s)
    local t, k = s, op.key
    local sub = k:match("^operatorContext%.(.+)$")
    if sub then t, k = s.operatorContext, sub end
    if op.op == "set" then t[k] = copy(VALUES[op.value]) else t[k] = nil end
  end)
end

describe("files as JSON.stringify writes them", function()
  local dir
  before_each(function() dir = helpers.tmpdir() end)
  after_each(function() helpers.cleanup() end)

  for _, seed in ipairs { 7, 1234, 99991 } do
    it("come back byte for byte but for the values one operation changed (seed " .. seed .. ")", function()
      local ok, out = helpers.run(string.format("node %s/spec/support/corpus.mjs %s %d 60", ROOT, helpers.sh_quote(dir), seed))
      assert.is_true(ok, out)
      for i = 1, 60 do
        local before = helpers.read(dir .. "/" .. i .. ".before.json")
        local after = helpers.read(dir .. "/" .. i .. ".after.json")
        local op = cjson.decode(helpers.read(dir .. "/" .. i .. ".op.json"))
        local path = dir .. "/case" .. i .. ".json"
        helpers.write(path, before)
        local store = open(path, op.now)
        local r, msg = run_op(store, op)
        assert(r ~= nil, "case " .. i .. " " .. op.op .. ": " .. tostring(msg))
        -- a read changes nothing
        assert.is_table(store:list_all())
        store:close()
        local got = helpers.read(path)
        if got ~= after then
          error(string.format("case %d (%s %s): %s", i, op.op, tostring(op.key or op.status or ""),
            first_diff(got, after)))
        end
      end
    end)
  end
end)

-- One session's text as JSON.stringify writes it (reference key order), with extra members
-- appended and some values overridden; file(): the same in a sessions file.
local SID = "0123456789abcdef0123456789abcdef" -- helpers.session_text's default sid
local function session(extra, over) return helpers.session_text(over, extra) end
local function file(extra, over)
  return '{"version":1,"sessions":[' .. session(extra, over) .. ']}'
end

-- The same specs on both backends: a store holding exactly a given session text (a file
-- written by hand, or the text imported verbatim into a PostgreSQL store), read and changed
-- through the API, and what is stored compared byte for byte.
for _, backend in ipairs(helpers.backends()) do
  describe("[" .. backend .. "]", function()
    after_each(function() helpers.cleanup() end)

    -- where (see helpers.open_store) of a store that holds exactly the session `text`
    local function holding(text)
      local st, where = helpers.open_store(backend, { durable = false, now = function() return T0 end })
      if backend == "file" then
        helpers.write(where.path, '{"version":1,"sessions":[' .. text .. ']}')
      else
        assert.are.same({ 1, 0 }, { st:import { text } })
      end
      st:close()
      return where
    end

    local function open_at(where, now)
      now = helpers.compat.tointeger(now)
      return helpers.reopen(where, { now = function() return now end, durable = false })
    end

    -- what is stored for SID: the whole file, or the row's text
    local function stored_text(where)
      if backend == "file" then return helpers.read(where.path) end
      return helpers.stored_body(where, SID)
    end
    -- what stored_text gives for a store holding only the session `text`
    local function as_stored(text)
      if backend == "file" then return '{"version":1,"sessions":[' .. text .. ']}' end
      return text
    end

    describe("values read from what is stored", function()
      it("are Lua integers when integral, exactly, beyond 2^53 too; floats otherwise", function()
        local where = holding(session('"a":1152921504606846977,"b":-9223372036854775808,"c":1e3,"d":0.30000000000000004,"e":1e300,"f":-0'))
        local s = assert(open_at(where, T0):get(SID))
        assert.is_true(helpers.is_integer(s.a))
        assert.are.equal(1152921504606846977, s.a)
        assert.are.equal(helpers.compat.mininteger, s.b)
        assert.is_true(helpers.is_integer(s.c))
        assert.are.equal(1000, s.c)
        assert.is_false(helpers.is_integer(s.d))
        assert.are.equal(0.1 + 0.2, s.d)
        assert.is_false(helpers.is_integer(s.e))
        assert.are.equal(0, s.f)
      end)

      it("keep their text when the session changes elsewhere", function()
        local extra = '"a":1152921504606846977,"n":1.0,"m":1E2,"s":"\\u00e9\\/","arr":[],"o":{"z":[],"a":{}}'
        local where = holding(session(extra))
        local st = open_at(where, T0 + 1000)
        assert(st:verify_code(SID, "123456"))
        st:close()
        local want = as_stored(session(extra, { status = '"device_connected"', lastStatusChangeAtMs = "1764300001000" }))
        assert.are.equal(want, stored_text(where))
      end)

      it("accept a fractional expiresAtMs, keep it, and prune on its value", function()
        local where = holding(session(nil, { expiresAtMs = "1764300600000.5" }))
        local st = open_at(where, 1764300600000)
        local s = assert(st:get(SID))
        assert.are.equal(1764300600000.5, s.expiresAtMs)
        assert.are.equal("awaiting_scan", s.status)
        st:close()
        st = open_at(where, 1764300600001)
        local e = assert(st:prune() and st:get(SID))
        assert.are.equal("expired", e.status)
        assert.are.equal(1764300600000.5, e.lastStatusChangeAtMs) -- the moment it expired
        st:close()
        if backend == "file" then
          -- written as JSON.stringify writes that number (a PostgreSQL row keeps its text: pruning
          -- marks the row expired, and readers apply it)
          assert.are.equal(file(nil, { expiresAtMs = "1764300600000.5", status = '"expired"',
            lastStatusChangeAtMs = "1764300600000.5" }), helpers.read(where.path))
        end
        st = open_at(where, 1764300600000 + 3600000)
        assert.is_table(st:get(SID))
        st:close()
        st = open_at(where, 1764300600001 + 3600000)
        local none, err = st:get(SID)
        assert.is_nil(none)
        assert.are.equal("not_found", err)
        st:close()
      end)

      it("prune a session that ends on time even when its expiresAtMs is far away", function()
        local where = holding(session(nil, { expiresAtMs = "9223372036854775807" }))
        local now = T0
        local st = helpers.reopen(where, { now = function() return now end, durable = false })
        assert(st:reject(SID))
        now = T0 + 3600000
        assert.is_table(st:get(SID))
        now = T0 + 3600001 -- the same store, its parsed sessions reused: still pruned on time
        local none, err = st:get(SID)
        assert.is_nil(none)
        assert.are.equal("not_found", err)
        st:close()
      end)

      it("read a lone surrogate escape as U+FFFD and keep the escape as stored", function()
        local where = holding(session(nil, { operatorContext = '{"channel":"cli","senderId":"ab\\ud83d"}' }))
        local st = open_at(where, T0)
        local s = assert(st:get(SID))
        assert.are.equal("ab\239\191\189", s.operatorContext.senderId)
        assert(st:register_failed_code(SID))
        st:close()
        assert.are.equal(as_stored(session(nil, { operatorContext = '{"channel":"cli","senderId":"ab\\ud83d"}',
          secondaryCodeAttempts = "1" })), stored_text(where))
      end)
    end)

    describe("values a mutator sets", function()
      it("are written as JSON.stringify writes the same value", function()
        local st, where = helpers.open_store(backend, { durable = false, now = function() return T0 end })
        local s = assert(st:create {})
        local cases = {
          { 0.1 + 0.2, "0.30000000000000004" }, { 2.0 ^ 60, "1152921504606846976" },
          { helpers.compat.maxinteger, helpers.compat.has_integers and "9223372036854775807" or "9223372036854774784" }, -- (5.1: a double), { 1e21, "1e+21" }, { 1e20, "100000000000000000000" },
          { 1.5e-7, "1.5e-7" }, { 0.000001, "0.000001" }, { -0.0, "0" }, { 123.456, "123.456" },
          { 5e-324, "5e-324" }, { 1 / 3, "0.3333333333333333" }, { "\0\31\"\\/\127", '"\\u0000\\u001f\\"\\\\/\127"' },
          { {}, "{}" }, { { 1, { a = true } }, '[1,{"a":true}]' },
        }
        local tail = backend == "file" and '"v":(.*)}]}$' or '"v":(.*)}$'
        for _, c in ipairs(cases) do
          assert(st:update(s.sid, function(x) x.v = c[1] end))
          local text = backend == "file" and helpers.read(where.path) or helpers.stored_body(where, s.sid)
          assert.are.equal(c[2], text:match(tail), tostring(c[1]))
        end
        st:close()
      end)

      it("that are not valid UTF-8 are refused with 'invalid' and nothing is stored", function()
        local st, where = helpers.open_store(backend, { durable = false, now = function() return T0 end })
        local s = assert(st:create {})
        local before = helpers.snapshot(where)
        local r, msg, code = st:update(s.sid, function(x) x.v = "\255" end)
        assert.is_nil(r)
        assert.are.equal("invalid", code)
        assert.matches("UTF%-8", msg)
        assert.are.equal(before, helpers.snapshot(where))
        st:close()
      end)
    end)
  end)
end

describe("values read from the file", function()
  local dir, path
  before_each(function()
    dir = helpers.tmpdir()
    path = dir .. "/pair-sessions.json"
  end)
  after_each(function() helpers.cleanup() end)

  it("count as corrupt only what the reference would reject or what is not JSON", function()
    for _, bad in ipairs { '"a":1e400', '"a":01', '"a":.5', '"a":+1', '"a":"\\x"', '"a":NaN', '"a":[1,]' } do
      helpers.write(path, file(bad))
      os.execute("chmod 600 " .. helpers.sh_quote(path)) -- plausibly ours: moved aside
      local st = open(path, T0)
      local r = st:create {} -- a writing operation moves a corrupt file aside
      assert.is_table(r, bad)
      st:close()
      assert.is_nil(pairstore.open(path, { now = function() return T0 end }):get(SID), bad)
      os.execute("rm -f " .. helpers.sh_quote(dir) .. "/*")
    end
  end)

  it("of the reference's own fixture stay byte for byte through a change of one session", function()
    local fixture = helpers.read(ROOT .. "/spec/fixtures/reference-store.json")
    helpers.write(path, fixture)
    local doc = cjson.decode(fixture)
    local st = open(path, 1764300050000)
    local target = doc.sessions[1].sid
    assert(st:update(target, function(s) s.note = "x" end))
    st:close()
    local got = helpers.read(path)
    -- only the first session changed: one member appended at its end
    local first_end = fixture:find('"lastStatusChangeAtMs":%d+}')
    local _, e = fixture:find('"lastStatusChangeAtMs":%d+', first_end)
    assert.are.equal(fixture:sub(1, e) .. ',"note":"x"' .. fixture:sub(e + 1), got)
  end)
end)
