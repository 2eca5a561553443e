-- What a PostgreSQL store says (issue 19, items 1, 2, 6 and 8): every message names the store
-- by its display form, in which no password can be, whatever the password is (nothing is
-- searched for and replaced, so nothing else is altered); a user or database name the display
-- hides is hidden in the server's refusals too; multi-host targets are shown as a URI; and
-- a refused connection has the code whose advice fits (authentication: denied; no database:
-- schema; only an unreachable or failing server: unavailable). Needs the private cluster
-- `make test` starts (its role pairstore_password logs in with a password).
local pairstore = require "pairstore"
local helpers = require "helpers"
local q = helpers.sh_quote

local function rand_hex(n)
  local f = assert(io.open("/dev/urandom", "rb"))
  local r = f:read(n)
  f:close()
  return (r:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

local function host() return assert(helpers.pg_target():match("host=([^&]+)"), "no host= in PAIRSTORE_TEST_PG") end

local function sql(text)
  local ok, out = helpers.psql(text)
  assert(ok, out)
  return out
end

-- A role that logs in with a password (member of pairstore_password), dropped by after_each.
local roles = {}
local function password_role(name, password)
  sql(("CREATE ROLE %s LOGIN PASSWORD %s IN ROLE pairstore_password"):format(name, helpers.sql_literal(password)))
  roles[#roles + 1] = name
  return name
end

local function drop_roles()
  helpers.cleanup()
  for i = #roles, 1, -1 do
    helpers.psql("DROP OWNED BY " .. roles[i])
    helpers.psql("DROP ROLE IF EXISTS " .. roles[i])
    roles[i] = nil
  end
end

local function open(target, store)
  return pairstore.open(target, { store = store or "s", durable = false, connect_timeout_ms = 5000 })
end

-- One operation's failure: message and code (it must fail).
local function failure(st)
  local r, msg, code = st:list_all()
  assert.is_nil(r)
  return msg, code
end

describe("PostgreSQL messages and a password in the target", function()
  after_each(drop_roles)

  it("password = the user name: the user is shown, as in store.path, nothing is starred", function()
    local name = "gw_" .. rand_hex(4)
    local role = password_role(name, name)
    assert(open(helpers.pg_target()):list_all()) -- the tables exist (the superuser made them)
    local st = open(("postgresql://%s:%s@/pairstore?host=%s"):format(role, role, host()))
    assert.are.equal(("postgresql://%s@%s/pairstore (store s)"):format(role, host()), st.path)
    -- logged in (the password is right), then refused the tables: the message names the store
    local msg, code = failure(st)
    assert.are.equal("denied", code, msg)
    assert.are.equal("PostgreSQL " .. st.path .. ": ", msg:sub(1, #st.path + 13))
    assert.is_nil(msg:find("*", 1, true), msg)
  end)

  it("password = the port: the port is shown as it is", function()
    local st = open("postgresql://u:54329@127.0.0.1:54329/db")
    assert.are.equal("postgresql://u@127.0.0.1:54329/db (store s)", st.path)
    local msg, code = failure(st)
    assert.are.equal("unavailable", code, msg)
    assert.are.equal("PostgreSQL " .. st.path .. ": cannot connect: ", msg:sub(1, #st.path + 29))
    assert.matches('"127.0.0.1", port 54329 failed', msg, 1, true)
    assert.is_nil(msg:find("*", 1, true), msg)
  end)

  it("password = t: the server's refusal reads as written, and says authentication (code denied)", function()
    local role = password_role("ps_t_" .. rand_hex(4), "right-" .. rand_hex(4))
    local st = open(("postgresql://%s:t@/pairstore?host=%s"):format(role, host()))
    local msg, code = failure(st)
    assert.are.equal("denied", code, msg)
    assert.are.equal("PostgreSQL " .. st.path .. ": cannot connect: ", msg:sub(1, #st.path + 29))
    assert.matches("password authentication failed (SQLSTATE 28P01)", msg, 1, true)
    assert.is_nil(msg:find("*", 1, true), msg)
  end)

  -- In a child: the old search-and-replace grew the message until SIGSEGV (`*`) or looped
  -- forever (`***`).
  for _, case in ipairs { { "%2A", "a*b" }, { "%2A%2A%2A", "a***b" } } do
    it(("password %s with store %s: no hang, no crash, the store's name as it is"):format(case[1], case[2]), function()
      local ok, out = helpers.run(("%s timeout 30 %s -e %s"):format(helpers.LUA_ENV, helpers.LUA, q(([[
        local st = require("pairstore").open("postgresql://u:%s@127.0.0.1:1/db", { store = %q, connect_timeout_ms = 5000 })
        local r, msg, code = st:get(("a"):rep(32))
        io.write(st.path, "\n", tostring(r), "\n", code, "\n", msg)
      ]]):format(case[1], case[2]))))
      assert.is_true(ok, out)
      local path, r, code, msg = out:match("^([^\n]*)\n([^\n]*)\n([^\n]*)\n(.*)$")
      assert.are.equal(("postgresql://u@127.0.0.1:1/db (store %s)"):format(case[2]), path)
      assert.are.equal("nil", r)
      assert.are.equal("unavailable", code)
      assert.are.equal("PostgreSQL " .. path .. ": cannot connect: ", msg:sub(1, #path + 29))
      assert.are.equal(select(2, path:gsub("%*", "")), select(2, msg:gsub("%*", "")), msg)
    end)
  end

  it("a user or database name the display hides is hidden in the server's refusal too", function()
    local cases = {
      { ("pg:host=%s dbname=pairstore user=gw:S3cretPW"):format(host()), "denied" },
      { ("postgresql://gw%%3AS3cretPW@/pairstore?host=%s"):format(host()), "denied" },
      { ("pg:host=%s user=pairstore dbname=postgresql://gw:S3cretPW@x/ps"):format(host()), "schema" },
    }
    for _, c in ipairs(cases) do
      local st = open(c[1])
      assert.is_nil(st.path:find("S3cretPW", 1, true), st.path)
      local msg, code = failure(st)
      assert.are.equal(c[2], code, msg)
      assert.is_nil(msg:find("S3cretPW", 1, true), msg)
      assert.are.equal("PostgreSQL " .. st.path .. ": cannot connect: ", msg:sub(1, #st.path + 29))
    end
  end)

  it("a target libpq cannot parse is refused without quoting any of it", function()
    for _, t in ipairs {
      "postgresql://[::1/db?user=gw:S3cretPW",
      "postgresql://gw:S3cretPW@h/db?%zz=1",
      "pg:host=h S3cretPW",
    } do
      local ok, err = pcall(pairstore.open, t)
      assert.is_false(ok)
      assert.matches("^[^\n]*pairstore.open: invalid PostgreSQL target: ", err)
      assert.is_nil(err:find("S3cretPW", 1, true), err)
      local d, why = pairstore.display_target(t)
      assert.is_nil(d)
      assert.is_nil(why:find("S3cretPW", 1, true), why)
    end
  end)
end)

describe("PostgreSQL: how a multi-host target is shown", function()
  it("each host with its own port, IPv6 literals in brackets, as in a URI", function()
    for _, c in ipairs {
      { "postgresql://gw:pw@nohost.invalid,127.0.0.1:54329/ps", "postgresql://gw@nohost.invalid,127.0.0.1:54329/ps (store default)" },
      { "postgresql://u@a:7001,[::1]:7002/db", "postgresql://u@a:7001,[::1]:7002/db (store default)" },
      { "postgresql://u@[::1]:7002,b/db", "postgresql://u@[::1]:7002,b/db (store default)" },
      { "pg:host=a,b,c port=1,2,3 user=u dbname=d", "postgresql://u@a:1,b:2,c:3/d (store default)" },
      { "pg:host=a,b port=5 dbname=d", "postgresql://a:5,b:5/d (store default)" },
      { "postgresql://gw:Sekr3t@db1,db2/pairstore", "postgresql://gw@db1,db2/pairstore (store default)" },
    } do
      assert.are.equal(c[2], pairstore.open(c[1]).path)
      assert.are.equal(c[2], pairstore.display_target(c[1]))
    end
    assert.are.equal("/tmp/x.json", pairstore.display_target("/tmp/x.json"))
    assert.are.equal("postgresql://h/d (store prod)", pairstore.display_target("postgresql://h/d", "prod"))
  end)
end)

describe("PostgreSQL: the code of a refused connection", function()
  after_each(drop_roles)

  it("a wrong password, no password, no such role: denied; no such database: schema; no server: unavailable", function()
    local role = password_role("ps_code_" .. rand_hex(4), "right-" .. rand_hex(4))
    local h = host()
    for _, c in ipairs {
      { ("postgresql://%s:wrong@/pairstore?host=%s"):format(role, h), "denied", "(SQLSTATE 28P01)" },
      { ("postgresql://%s@/pairstore?host=%s&passfile=/nonexistent"):format(role, h), "denied", "password" },
      { ("postgresql://nosuchrole_%s@/pairstore?host=%s"):format(rand_hex(3), h), "denied", "(SQLSTATE 28000)" },
      { ("postgresql://pairstore@/nosuchdb_%s?host=%s"):format(rand_hex(3), h), "schema", "the database does not exist (SQLSTATE 3D000)" },
      { "postgresql://pairstore@/pairstore?host=/nonexistent-" .. rand_hex(3), "unavailable", "No such file or directory" },
    } do
      local st = open(c[1])
      local r, msg, code = st:create {}
      assert.is_nil(r)
      assert.are.equal(c[2], code, msg)
      assert.matches(c[3], msg, 1, true)
    end
  end)
end)

describe("pairstore.hide_targets (what the CLI echoes of its arguments)", function()
  it("replaces each target by its display form in one pass, altering nothing else", function()
    local hide = pairstore.hide_targets
    local t1 = "postgresql://gw:t@db1:54329/ps"
    assert.are.equal("unknown command 'postgresql://gw@db1:54329/ps' (PostgreSQL, port 54329, gw)",
      hide("unknown command '" .. t1 .. "' (PostgreSQL, port 54329, gw)", { t1 }))
    -- a password that the display form holds (*, ***) is not looked for again: no growth, no loop
    local t2 = "postgresql://u:***@h/a***b"
    assert.are.equal("x postgresql://u@h/a***b y", hide("x " .. t2 .. " y", { t2 }))
    -- a target that hides nothing is left as it is: a message that names it with its store
    -- says that store once (not "(store default) (store prod)")
    local t3 = "postgresql://gateway@127.0.0.1:1/pairstore"
    assert.are.equal("PostgreSQL " .. t3 .. " (store prod): cannot connect",
      hide("PostgreSQL " .. t3 .. " (store prod): cannot connect", { t3 }))
    -- unparsable, refused: the scheme only
    assert.are.equal("a postgresql:[target not shown] b", hide("a postgresql://[::1/db?user=gw:S3cretPW b",
      { "postgresql://[::1/db?user=gw:S3cretPW" }))
    assert.are.equal("'postgresql:[target not shown]'", hide("'postgresql:/gw:S3cretPW@db1/ps'", { "postgresql:/gw:S3cretPW@db1/ps" }))
    -- file paths and texts that are no target are left alone
    assert.are.equal("list /tmp/x.json --all", hide("list /tmp/x.json --all", { "/tmp/x.json", "--all", "" }))
    assert.has_error(function() hide(1, {}) end, "pairstore.hide_targets: text must be a string, got number")
    assert.has_error(function() hide("x", { 1 }) end, "pairstore.hide_targets: targets[1] must be a string, got number")
  end)
end)
