-- Shared test helpers: temp directories, a controllable clock, files and modes, and child
-- processes (children of the runtime under test running against its in-tree build, the
-- Node.js reference peer).
local compat = require "pairstore.compat"
local helpers = {}
helpers.compat = compat

local ROOT = (function()
  local p = io.popen("pwd")
  local d = p:read("*l")
  p:close()
  return d
end)()
helpers.ROOT = ROOT
-- The Node.js peer speaking the reference's lock and write protocol (REFERENCE_PEER: another one).
helpers.REFERENCE_PEER = os.getenv("REFERENCE_PEER") or ROOT .. "/spec/support/ref_peer.mjs"
-- reference-store.json (written by the reference itself, byte for byte) and pairing-vectors.json
helpers.FIXTURES = ROOT .. "/spec/fixtures"

-- The runtime under test (`make test LUA=...` exports it; else the one running the specs):
-- the Lua children run it, against its test build (build/lua5.4-test, build/luajit-test, ...).
helpers.LUA = os.getenv("PAIRSTORE_TEST_LUA") or compat.runtime
local LUA_ENV = string.format("LUA_PATH='%s/lua/?.lua;%s/lua/?/init.lua;%s/spec/support/?.lua;%s/spec/?.lua;;' LUA_CPATH='%s/build/%s-test/?.so;;'",
  ROOT, ROOT, ROOT, ROOT, ROOT, helpers.LUA)
helpers.LUA_ENV = LUA_ENV

--- Whether x is an integer: math.type(x) == "integer" on 5.3 and 5.4; on 5.1 and LuaJIT,
-- where every number is a double, a number with an integral value.
helpers.is_integer = compat.is_integer

function helpers.sh_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
local q = helpers.sh_quote

--- Run a shell command; returns ok, output (stdout+stderr), exit code.
function helpers.run(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"__rc=$?\"")
  local out = p:read("*a")
  p:close()
  local rc = tonumber(out:match("__rc=(%d+)%s*$"))
  out = out:gsub("__rc=%d+%s*$", "")
  return rc == 0, out, rc
end

--- A fresh temp directory, removed by helpers.cleanup().
local dirs = {}
function helpers.tmpdir()
  local p = io.popen("mktemp -d /tmp/pairstore-spec.XXXXXX")
  local d = p:read("*l")
  p:close()
  dirs[#dirs + 1] = d
  return d
end

local opened = {} -- stores opened through helpers.open_store/reopen, closed by cleanup

-- The current test's scratch directory (children's scripts), made on first use and removed by
-- helpers.cleanup with the test's other temp directories: nothing is left in /tmp itself.
local scratch, scratch_seq = nil, 0
local function scratch_file(name)
  if not scratch then scratch = helpers.tmpdir() end
  scratch_seq = scratch_seq + 1
  return ("%s/%d-%s"):format(scratch, scratch_seq, name)
end
helpers.scratch_file = scratch_file

function helpers.cleanup()
  -- a PostgreSQL store holds a connection until it is closed or collected: close them all,
  -- so that a long suite never runs the server out of connections
  for i = #opened, 1, -1 do
    pcall(opened[i].close, opened[i])
    opened[i] = nil
  end
  for i = #dirs, 1, -1 do
    os.execute("chmod -R u+rwx " .. q(dirs[i]) .. " 2>/dev/null; rm -rf " .. q(dirs[i]))
    dirs[i] = nil
  end
  scratch = nil
end

--- A clock under the test's control: clock.now is the function to pass as `now`.
function helpers.clock(start)
  local c = { t = start or 1764300000000 }
  function c.now() return c.t end
  function c.advance(ms) c.t = c.t + ms end
  function c.set(ms) c.t = ms end
  return c
end

function helpers.read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

function helpers.write(path, content)
  local f = assert(io.open(path, "wb"))
  assert(f:write(content))
  assert(f:close())
end

--- base64url without padding, for building and reading raw keys and tampered inputs.
local B64U = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

function helpers.b64u_encode(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    for k = 1, 2 + (b and 1 or 0) + (c and 1 or 0) do
      local v = math.floor(n / 2 ^ (6 * (4 - k))) % 64
      out[#out + 1] = B64U:sub(v + 1, v + 1)
    end
  end
  return table.concat(out)
end

function helpers.b64u_decode(s)
  local bits, nbits, out = 0, 0, {}
  for i = 1, #s do
    bits = (bits * 64 + (B64U:find(s:sub(i, i), 1, true) - 1)) % 65536
    nbits = nbits + 6
    if nbits >= 8 then
      nbits = nbits - 8
      out[#out + 1] = string.char(math.floor(bits / 2 ^ nbits) % 256)
    end
  end
  return table.concat(out)
end

function helpers.exists(path)
  return compat.execute("test -e " .. q(path) .. " -o -L " .. q(path)) == true
end

--- Octal permission string of a path ("600").
function helpers.mode(path)
  local ok, out = helpers.run("stat -c %a " .. q(path))
  return ok and out:match("%d+") or nil
end

--- Names in a directory (excluding . and ..), sorted.
function helpers.ls(dir)
  local names = {}
  local p = io.popen("ls -A " .. q(dir) .. " 2>/dev/null")
  for l in p:lines() do names[#names + 1] = l end
  p:close()
  table.sort(names)
  return names
end

-- The parked lock sentinels ("<path>.lock.idle-<hex>") that open stores keep between transactions.
local PARKED = "%.lock%.idle%-%x+$"

local function ls_parked_or_not(dir, parked)
  local names = {}
  for _, n in ipairs(helpers.ls(dir)) do
    if (n:match(PARKED) ~= nil) == parked then names[#names + 1] = n end
  end
  return names
end

--- Names in dir that are parked lock sentinels, sorted.
function helpers.ls_parked(dir) return ls_parked_or_not(dir, true) end

--- As ls, without the parked lock sentinels: for tests whose stores are still open.
function helpers.ls_live(dir) return ls_parked_or_not(dir, false) end

--- Files in dir other than the sessions file itself (temps, locks, quarantines).
function helpers.leftovers(dir, keep)
  local out = {}
  for _, n in ipairs(helpers.ls(dir)) do
    if n ~= (keep or "pair-sessions.json") then out[#out + 1] = n end
  end
  return out
end

local cjson = require("cjson").new()
helpers.json = cjson

-- One session's text as JSON.stringify writes it, in the reference's key order: each member
-- of `over` (a raw JSON text by key) replaces that key's default; `extra` (raw members, no
-- leading comma) goes before the closing brace. Keys of `over` the reference does not write
-- are not added (put them in `extra`).
local SESSION_KEYS = { "sid", "skGatewayB64", "pkGatewayB64", "createdAtMs", "expiresAtMs",
  "secondaryCode", "secondaryCodeAttempts", "operatorContext", "mode", "status",
  "lastStatusChangeAtMs" }
local SESSION_DEFAULTS = {
  sid = '"0123456789abcdef0123456789abcdef"', skGatewayB64 = '"sk"', pkGatewayB64 = '"pk"',
  createdAtMs = "1764300000000", expiresAtMs = "1764300900000", secondaryCode = '"123456"',
  secondaryCodeAttempts = "0", operatorContext = '{"senderId":"s","channel":"cli"}',
  mode = '"generate"', status = '"awaiting_scan"', lastStatusChangeAtMs = "1764300000000",
}

function helpers.session_text(over, extra)
  local f = {}
  for i, k in ipairs(SESSION_KEYS) do
    f[i] = '"' .. k .. '":' .. tostring((over or {})[k] or SESSION_DEFAULTS[k])
  end
  return "{" .. table.concat(f, ",") .. (extra and ("," .. extra) or "") .. "}"
end

function helpers.read_json(path)
  return cjson.decode(assert(helpers.read(path)))
end

--- A child (helpers.LUA) running `code` (a chunk); returns its pid (and its script, which
-- helpers.cleanup removes). Output goes to outfile.
function helpers.spawn_lua(code, outfile)
  local script = scratch_file("child.lua")
  helpers.write(script, code)
  local cmd = string.format("%s %s %s > %s 2>&1 & echo $!", LUA_ENV, helpers.LUA, q(script),
    q(outfile or "/dev/null"))
  local p = io.popen(cmd)
  local pid = tonumber(p:read("*l"))
  p:close()
  return pid, script
end

--- Run a chunk under helpers.LUA to completion; returns ok, output.
function helpers.run_lua(code, args)
  local script = scratch_file("run.lua")
  helpers.write(script, code)
  local ok, out, rc = helpers.run(string.format("%s timeout 120 %s %s %s", LUA_ENV, helpers.LUA, q(script), args or ""))
  os.remove(script)
  return ok, out, rc
end

--- A copy of what a child run as another user (nobody) needs: the tree's lua/, spec/ and
-- build/<runtime>/, readable by everyone. The clone itself may sit where only its owner may
-- enter (/root, a `mktemp -d` directory), as spec/nginx/run.sh copies it for nginx's workers.
-- Returns the copy's root and the LUA_PATH/LUA_CPATH assignments for it; removed by
-- helpers.cleanup.
function helpers.readable_tree()
  local d = helpers.tmpdir()
  local ok, out = helpers.run(("cp -R %s %s %s/ && mkdir %s/build && cp -R %s %s/build/ && chmod -R a+rX %s"):format(
    q(ROOT .. "/lua"), q(ROOT .. "/spec"), q(d), q(d), q(ROOT .. "/build/" .. helpers.LUA), q(d), q(d)))
  assert(ok, out)
  return d, string.format("LUA_PATH='%s/lua/?.lua;%s/lua/?/init.lua;%s/spec/support/?.lua;%s/spec/?.lua;;' LUA_CPATH='%s/build/%s/?.so;;'",
    d, d, d, d, d, helpers.LUA)
end

--- Whether pid runs (a zombie does not: PID 1 may never reap our orphans).
function helpers.alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local stat = f:read("*a") or ""
  f:close()
  local state = stat:match("^%d+ %b() (%a)")
  return state ~= nil and state ~= "Z" and state ~= "X"
end

function helpers.kill(pid, sig)
  os.execute("kill -" .. (sig or "KILL") .. " " .. pid .. " 2>/dev/null")
end

--- Wait until pred() is true or timeout_s passes; returns pred()'s last value.
function helpers.wait_for(pred, timeout_s)
  local deadline = helpers.mono() + (timeout_s or 10)
  while true do
    local v = pred()
    if v or helpers.mono() > deadline then return v end
    helpers.sleep(0.01)
  end
end

function helpers.sleep(s)
  os.execute("sleep " .. s)
end

--- Monotonic seconds (float) from /proc/uptime's sibling: clock_gettime via date is too
-- coarse, so read CLOCK_MONOTONIC through /proc/self/stat-free means: `date +%s.%N`.
function helpers.mono()
  local p = io.popen("date +%s.%N")
  local v = tonumber(p:read("*l"))
  p:close()
  return v
end

--- Wait for a child pid to exit (it is ours only through the shell, so poll).
function helpers.wait_exit(pid, timeout_s)
  return helpers.wait_for(function() return not helpers.alive(pid) end, timeout_s or 30)
end

function helpers.have(cmd)
  return compat.execute("command -v " .. cmd .. " >/dev/null 2>&1") == true
end

function helpers.is_root()
  local p = io.popen("id -u")
  local uid = p:read("*l")
  p:close()
  return uid == "0"
end

--- Run the reference peer (Node.js); returns ok, output.
function helpers.peer(args)
  return helpers.run("timeout 60 node " .. q(helpers.REFERENCE_PEER) .. " " .. args)
end

--- Run a shell command with stdout and stderr kept apart; returns ok, stdout, stderr, exit code.
function helpers.run_split(cmd)
  local errfile = os.tmpname()
  local ok, out, rc = helpers.run("{ { " .. cmd .. "; } 2>" .. q(errfile) .. "; }")
  local err = helpers.read(errfile) or ""
  os.remove(errfile)
  return ok, out, err, rc
end

--- Start cmd in the background as the leader of a new process group (as a terminal's
-- foreground job is), stdout to outfile, stderr to errfile; its exit code is written to
-- rcfile. The wrapping shell ignores SIGINT so that it survives a group-wide SIGINT and can
-- record the code. Returns the process group id (for `kill -INT -- -pgid`).
function helpers.spawn_group(cmd, outfile, errfile, rcfile)
  local inner = string.format("trap '' INT; %s >%s 2>%s; echo $? >%s", cmd, q(outfile), q(errfile),
    q(rcfile .. ".tmp")) .. "; mv " .. q(rcfile .. ".tmp") .. " " .. q(rcfile)
  local p = io.popen("setsid sh -c " .. q(inner) .. " </dev/null >/dev/null 2>&1 & echo $!")
  local pid = tonumber(p:read("*l"))
  p:close()
  return pid
end

--- Wait until path exists and pred(content) holds (default: any content); returns the content
-- or nil after timeout_s.
function helpers.wait_file(path, pred, timeout_s)
  local got
  helpers.wait_for(function()
    local c = helpers.read(path)
    if c and (pred == nil or pred(c)) then got = c end
    return got ~= nil
  end, timeout_s or 20)
  return got
end

-- Backends ------------------------------------------------------------------------------------
-- The behaviour specs run once per backend from one source:
--   for _, backend in ipairs(helpers.backends()) do describe("[" .. backend .. "]", ...) end
-- helpers.open_store gives a fresh, independent store each call: a new temp directory for the
-- file backend, a new `store` name in the test database (PAIRSTORE_TEST_PG, set by
-- spec/support/with-pg.sh under `make test`) for PostgreSQL. Without PAIRSTORE_TEST_PG the
-- PostgreSQL variants fail (they are never skipped).

function helpers.backends() return { "file", "postgresql" } end

--- The test database's target; raises (failing the test) when it is not set.
function helpers.pg_target()
  local t = os.getenv("PAIRSTORE_TEST_PG")
  if t == nil or t == "" then
    error("PAIRSTORE_TEST_PG is not set: the PostgreSQL specs need the test server; run them " ..
      "through `make test` (bash spec/support/with-pg.sh busted --lua=$LUA spec)", 2)
  end
  return t
end

--- The test cluster's directory (for spec/support/pgcluster.sh ctl/psql/pid); raises when unset.
function helpers.pg_dir()
  local d = os.getenv("PAIRSTORE_TEST_PGDIR")
  if d == nil or d == "" then
    error("PAIRSTORE_TEST_PGDIR is not set: run the PostgreSQL specs through `make test` " ..
      "(spec/support/with-pg.sh)", 2)
  end
  return d
end

local function self_pid()
  local f = io.open("/proc/self/stat")
  local pid = f and f:read("*l"):match("^(%d+)")
  if f then f:close() end
  return pid or "0"
end

local name_seq = 0
--- A store name no other test (of this or another process) uses.
function helpers.store_name(tag)
  name_seq = name_seq + 1
  local f = assert(io.open("/dev/urandom", "rb"))
  local r = f:read(4)
  f:close()
  return ("spec-%s-%d-%s%s"):format(self_pid(), name_seq,
    (r:gsub(".", function(c) return ("%02x"):format(c:byte()) end)), tag and ("-" .. tag) or "")
end

local function merged(a, b)
  local o = {}
  for k, v in pairs(a or {}) do o[k] = v end
  for k, v in pairs(b or {}) do o[k] = v end
  return o
end

--- A fresh store of `backend` with options opts; returns store, where. `where` names the
-- store's data for helpers.reopen, helpers.open_expr, helpers.snapshot and helpers.stored:
--   { backend =, target = (path or PostgreSQL target), path =, dir = (file), store = (pg name) }
function helpers.open_store(backend, opts)
  local where
  if backend == "file" then
    local dir = helpers.tmpdir()
    where = { backend = "file", dir = dir, path = dir .. "/pair-sessions.json" }
    where.target = where.path
  elseif backend == "postgresql" then
    where = { backend = "postgresql", target = helpers.pg_target(), store = helpers.store_name() }
  else
    error("unknown backend " .. tostring(backend), 2)
  end
  return helpers.reopen(where, opts), where
end

--- Another store object on the same data as `where` (its own connection, for PostgreSQL);
-- closed by helpers.cleanup.
function helpers.reopen(where, opts)
  if where.backend == "postgresql" then opts = merged(opts, { store = where.store }) end
  local store = require("pairstore").open(where.target, opts)
  opened[#opened + 1] = store
  return store
end

--- Lua source of an expression that opens the store of `where` in a child process;
-- extra: more option fields as Lua source ("durable = false, lock_wait_ms = 100").
function helpers.open_expr(where, extra)
  local fields = {}
  if where.store then fields[#fields + 1] = ("store = %q"):format(where.store) end
  if extra and extra ~= "" then fields[#fields + 1] = extra end
  return ("require(\"pairstore\").open(%q, { %s })"):format(where.target, table.concat(fields, ", "))
end

--- The command that runs spec/support/pgcluster.sh (ctl, psql, pid): PostgreSQL's own programs
-- never get the ASan runtime that spec/sanitize/run.sh preloads into the suite.
helpers.PGCLUSTER = "env -u LD_PRELOAD bash " .. q(ROOT .. "/spec/support/pgcluster.sh")

--- Run SQL on the test database as the superuser (psql -qAtX); returns ok, output.
function helpers.psql(sql)
  return helpers.run(helpers.PGCLUSTER .. " psql " .. q(helpers.pg_dir()) .. " -c " .. q(sql))
end

--- A SQL string literal (for the tests' own generated names and values only).
function helpers.sql_literal(s)
  return "'" .. tostring(s):gsub("'", "''") .. "'"
end

--- What is stored, as text to compare before and after an operation that must store nothing:
-- the file's bytes (nil when absent), or the store's rows read straight from the database.
function helpers.snapshot(where)
  if where.backend == "file" then return helpers.read(where.path) end
  local ok, out = helpers.psql("SELECT sid || ' ' || status || ' ' || live || ' ' || body " ..
    "FROM pairstore_sessions WHERE store = " .. helpers.sql_literal(where.store) .. " ORDER BY sid")
  assert(ok, out)
  return out
end

--- The sessions as stored (decoded, in list_all order: createdAtMs, then sid), read from the
-- file or straight from the database (not through the store under test). A row that pruning
-- marked expired keeps its body as it was (the schema's rule: status and changed_at say it):
-- the session is then its body with that status and lastStatusChangeAtMs.
function helpers.stored_sessions(where)
  if where.backend == "file" then
    local text = helpers.read(where.path)
    if not text then return {} end
    return cjson.decode(text).sessions
  end
  local ok, out = helpers.psql("SELECT status, changed_at, body FROM pairstore_sessions WHERE store = " ..
    helpers.sql_literal(where.store) .. " ORDER BY created_at, sid")
  assert(ok, out)
  local list = {}
  for line in out:gmatch("[^\n]+") do
    local status, changed, body = line:match("^([^|]*)|([^|]*)|(.*)$")
    local s = cjson.decode(body)
    if s.status ~= status then
      assert(status == "expired", "row status " .. status .. " but body says " .. tostring(s.status))
      s.status = status
      s.lastStatusChangeAtMs = compat.tointeger(tonumber(changed)) or tonumber(changed)
    end
    list[#list + 1] = s
  end
  return list
end

--- The text a PostgreSQL store holds for sid (its row's body column), or nil.
function helpers.stored_body(where, sid)
  local ok, out = helpers.psql("SELECT body FROM pairstore_sessions WHERE store = " ..
    helpers.sql_literal(where.store) .. " AND sid = " .. helpers.sql_literal(sid))
  assert(ok, out)
  return out:match("^(.-)\n?$") ~= "" and out:match("^(.-)\n?$") or nil
end

--- The stored session sid (decoded), or nil.
function helpers.stored(where, sid)
  for _, s in ipairs(helpers.stored_sessions(where)) do
    if s.sid == sid then return s end
  end
end

return helpers
