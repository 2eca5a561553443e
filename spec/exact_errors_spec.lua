-- Exact messages and one rule for argument types (issue 19, items 10, 11 and 16): what a
-- mutator returns that cannot be stored is refused naming what is wrong with it; an option
-- that is not a count says why; -0 reads as the same 0 to the writer and every reader (on
-- LuaJIT too); an argument of another type than documented raises at the caller, numbers
-- included where a string is wanted.
local pairstore = require "pairstore"
local helpers = require "helpers"

local function is_neg_zero(x) return x == 0 and 1 / x < 0 end

for _, backend in ipairs(helpers.backends()) do
  describe("[" .. backend .. "] what a mutator returns", function()
    after_each(helpers.cleanup)

    it("is refused when it cannot be stored (invalid, nothing stored), naming what is wrong", function()
      local st, where = helpers.open_store(backend, { durable = false })
      local s = assert(st:create {})
      local before = helpers.snapshot(where)
      local deep = {}
      local d = deep
      for _ = 1, 600 do d.x = {}; d = d.x end
      local cyclic = {}
      cyclic.self = cyclic
      local cases = {
        { function(x) x.loop = cyclic end, "a table contains itself (a cycle)" },
        { function(x) x.f = print end, "a function is not a JSON value" },
        { function(x) x.t = { [true] = 1 } end, "a table has a boolean key (JSON keys are strings)" },
        { function(x) x.deep = deep end, "tables are nested deeper than 512 levels" },
        { function(x) x.holes = { [1] = 1, [3] = 3 } end, "a table's integer keys are not 1..n (an array with holes)" },
        { function(x) x.mixed = { 1, a = 2 } end, "a table mixes string and integer keys" },
        { function(x) x.n = 0 / 0 end, "a number is NaN or infinite (JSON has neither)" },
        { function(x) x.h = { 1.5 == 1.5 and 1.5 or 0, [2.5] = 1 } end, "a table has a key that is a number but not an integer (JSON keys are strings)" },
      }
      for _, c in ipairs(cases) do
        local r, msg, code = st:update(s.sid, c[1])
        assert.is_nil(r)
        assert.are.equal("invalid", code, msg)
        assert.matches(c[2], msg, 1, true)
        assert.are.equal(before, helpers.snapshot(where))
      end
    end)

    it("-0 is stored as 0: the writer, the same process and a fresh one read one value", function()
      local st, where = helpers.open_store(backend, { durable = false })
      local s = assert(st:create {})
      local written = assert(st:update(s.sid, function(x) x.z = -0.0; x.nested = { -0.0 } end))
      assert.is_false(is_neg_zero(written.z))
      assert.is_false(is_neg_zero(written.nested[1]))
      local again = assert(st:get(s.sid))
      assert.are.equal(0, again.z)
      assert.is_false(is_neg_zero(again.z), "the same process reads -0")
      assert.is_false(is_neg_zero(again.nested[1]))
      local other = helpers.reopen(where, { durable = false })
      local fresh = assert(other:get(s.sid))
      assert.is_false(is_neg_zero(fresh.z))
      local ok, out = helpers.run_lua(([[
        local st = %s
        local x = assert(st:get(%q))
        io.write(tostring(1 / x.z), " ", tostring(1 / x.nested[1]))
      ]]):format(helpers.open_expr(where), s.sid))
      assert.is_true(ok, out)
      assert.are.equal(tostring(1 / 0) .. " " .. tostring(1 / 0), out)
    end)
  end)
end

describe("options that are not counts", function()
  after_each(helpers.cleanup)

  it("say what is wrong: too large, not an integer, negative, NaN", function()
    local dir = helpers.tmpdir()
    for _, c in ipairs {
      { 1e308, "option max_sessions is too large: 1e+308" },
      { 1.5, "option max_sessions must be an integer, got 1.5" },
      { -1, "option max_sessions must not be negative, got -1" },
      { 0 / 0, "option max_sessions must be a non-negative integer, got NaN" },
    } do
      local ok, err = pcall(function() local st = pairstore.open(dir .. "/s.json", { max_sessions = c[1] }); return st end)
      assert.is_false(ok)
      assert.are.equal("spec/exact_errors_spec.lua:" .. debug.getinfo(1, "l").currentline - 2 ..
        ": pairstore.open: " .. c[2], err)
    end
    local st = pairstore.open(dir .. "/s.json")
    local s = assert(st:create {})
    local ok, err = pcall(function() local r = st:wait(s.sid, { timeout_ms = 1e308 }); return r end)
    assert.is_false(ok)
    assert.matches("exact_errors_spec.lua:%d+: pairstore.wait: option timeout_ms is too large: ", err)
    st:close()
  end)
end)

describe("one rule for argument types", function()
  after_each(helpers.cleanup)

  it("an argument of another type raises at the caller, nil and numbers alike", function()
    local st = pairstore.open(helpers.tmpdir() .. "/s.json")
    local s = assert(st:create {})
    local function raises(want, f)
      local ok, err = pcall(f)
      assert.is_false(ok)
      assert.matches("^spec/exact_errors_spec.lua:%d+: ", err)
      assert.are.equal(want, (err:gsub("^[^:]*:%d+: ", "")))
    end
    raises("pairstore.verify_code: code must be a string, got number", function() local r = st:verify_code(s.sid, 123456); return r end)
    raises("pairstore.verify_code: code must be a string, got nil", function() local r = st:verify_code(s.sid); return r end)
    raises("pairstore.transition: status must be a string, got number", function() local r = st:transition(s.sid, 1); return r end)
    raises("pairstore.create: mode must be a string, got number", function() local r = st:create { mode = 1 }; return r end)
    raises("pairstore.is_terminal: status must be a string, got nil", function() local r = pairstore.is_terminal(); return r end)
    raises("pairstore.get: sid must be a string, got number", function() local r = st:get(1); return r end)
    raises("pairstore.create: ttl_ms must be a number", function() local r = st:create { ttl_ms = "600000" }; return r end)
    -- and the numeric string is not taken for a count either
    raises("pairstore.open: option max_sessions must be a number", function()
      local r = pairstore.open(helpers.tmpdir() .. "/t.json", { max_sessions = "10" }); return r
    end)
    assert.are.equal(0, st:get(s.sid).secondaryCodeAttempts)
    st:close()
  end)
end)
