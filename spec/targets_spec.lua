-- Which store a target names (issue 19, item 5): a PostgreSQL URI (its scheme in any case,
-- as RFC 3986 has it), a pg: conninfo, or a file path; a target that looks like a URI of
-- another scheme (a scheme followed by ":/": a typo such as postgresq://, a missing slash)
-- is refused with a clear error and nothing is created, by the library and so by the CLI.
local pairstore = require "pairstore"
local core = require "pairstore.core"
local helpers = require "helpers"
local q = helpers.sh_quote

-- The names in dir (sorted).
local function ls(dir)
  local ok, out = helpers.run("ls -A " .. q(dir))
  assert(ok, out)
  local t = {}
  for name in out:gmatch("[^\n]+") do t[#t + 1] = name end
  table.sort(t)
  return t
end

local REFUSED = {
  "postgresq://gw@db1/x", "postgresql:/gw:S3cretPW@db1/ps", "postgres:/x", "POSTGRESQ://x/y",
  "file:/tmp/x.json", "http://example.com/x", "a+b.c-d:/x", "Pg:/x",
}

describe("targets", function()
  after_each(helpers.cleanup)

  it("a URI of an unsupported scheme is refused at the caller, naming only the scheme, creating nothing", function()
    for _, t in ipairs(REFUSED) do
      assert.is_false(pairstore.is_pg_target(t), t)
      local dir = helpers.tmpdir()
      local ok, out = helpers.run(("cd %s && %s %s -e %s"):format(q(dir), helpers.LUA_ENV, helpers.LUA, q(([[
        local pairstore = require "pairstore"
        local ok, err = pcall(function() local st = pairstore.open(%q); return st end)
        io.write(tostring(ok), "\n", err)
      ]]):format(t))))
      assert.is_true(ok, out)
      local res, err = out:match("^([^\n]*)\n(.*)$")
      assert.are.equal("false", res, t)
      local scheme = t:match("^[^:]*")
      assert.matches("^%(command line%):2: pairstore.open: the target looks like a URI %(scheme \"" ..
        scheme:gsub("%p", "%%%0") .. "\" followed by \":/\"%) but is not one pairstore supports", err)
      assert.is_nil(err:find("S3cretPW", 1, true), err)
      assert.are.same({}, ls(dir), t)
      -- the core refuses it too
      assert.has_error(function() core.open(t, {}) end)
    end
  end)

  it("the CLI inherits the refusal: exit 2, nothing created, no password shown", function()
    local dir = helpers.tmpdir()
    for _, t in ipairs { "postgresq://gw@db1/x", "postgresql:/gw:S3cretPW@db1/ps" } do
      for _, cmd in ipairs { "create", "list --all" } do
        local ok, out, rc = helpers.run(("cd %s && PAIRSTORE_URL=https://x.example/pair %s timeout 60 %s %s --store %s %s </dev/null")
          :format(q(dir), helpers.LUA_ENV, helpers.LUA, q(helpers.ROOT .. "/bin/pairstore"), q(t), cmd))
        assert.is_false(ok)
        assert.are.equal(2, rc, out)
        assert.matches("looks like a URI", out, 1, true)
        assert.is_nil(out:find("S3cretPW", 1, true), out)
        assert.are.same({}, ls(dir), t)
      end
    end
  end)

  it("the PostgreSQL schemes are accepted in any case", function()
    for _, t in ipairs { "POSTGRESQL://u@h/db", "Postgres://u@h/db", "PostgreSQL://u:pw@h:5/db" } do
      assert.is_true(pairstore.is_pg_target(t), t)
      local st = pairstore.open(t)
      assert.are.equal("postgresql", st:backend())
      assert.are.equal(t:gsub("^%a+://", ""):gsub(":pw", ""):gsub("^", "postgresql://") .. " (store default)", st.path)
      st:close()
    end
    -- and reach the server like their lower-case form
    local target = helpers.pg_target():gsub("^postgresql", "POSTGRESQL")
    local st = pairstore.open(target, { store = helpers.store_name(), durable = false })
    local s = assert(st:create {})
    assert.are.equal(s.sid, assert(st:get(s.sid)).sid)
    st:close()
  end)

  it("what does not look like a URI stays a file path", function()
    local dir = helpers.tmpdir()
    for _, name in ipairs { "postgresq:x", "1abc:/x", "-x:/y", "pg_sessions.json" } do
      local t = dir .. "/" .. name
      assert.is_nil(core.target_refused(t))
      local st = pairstore.open(t, { durable = false })
      assert.are.equal("file", st:backend())
      assert(st:create {})
      st:close()
    end
    for _, t in ipairs { "postgresq:x", "1abc:/x", "./postgresq:/x" } do
      assert.is_nil(core.target_refused(t), t)
      assert.is_false(pairstore.is_pg_target(t))
    end
    assert.is_true(pairstore.is_pg_target("pg:host=/x"))
  end)
end)
