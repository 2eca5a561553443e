-- Specs for pairstore.stats and `pairstore stats` (issue 21): the snapshot of a store (sessions
-- by status, the oldest live one's age; a file's size, lock holder and age, corrupt files
-- moved aside; PostgreSQL's server, primary or not, and rows), as rows, JSON and a text
-- exposition that promtool accepts; no secret in any of them. Both backends, from one source.
local stats = require "pairstore.stats"
local pairstore = require "pairstore"
local helpers = require "helpers"
local q = helpers.sh_quote

local CLI = helpers.LUA_ENV .. " timeout 60 " .. helpers.LUA .. " " .. q(helpers.ROOT .. "/bin/pairstore")

local function promtool(text)
  local dir = helpers.tmpdir()
  helpers.write(dir .. "/s.prom", text)
  return helpers.run("promtool check metrics < " .. q(dir .. "/s.prom"))
end

local function samples(text)
  local t = {}
  for line in text:gmatch("[^\n]+") do
    if not line:find("^#") then
      local k, v = line:match("^(.*) (%S+)$")
      t[k] = tonumber(v)
    end
  end
  return t
end

describe("pairstore.stats", function()
  after_each(helpers.cleanup)

  it("raises on bad arguments", function()
    assert.has_error(function() stats.snapshot({}) end, "pairstore.stats.snapshot: store must be a pairstore store")
    local st = helpers.open_store("file")
    assert.has_error(function() stats.snapshot(st, 1) end, "pairstore.stats.snapshot: opts must be a table")
    assert.has_error(function() stats.snapshot(st, { bogus = 1 }) end, 'pairstore.stats.snapshot: unknown option "bogus"')
    assert.has_error(function() stats.snapshot(st, { timeout_ms = "1" }) end,
      "pairstore.stats.snapshot: option timeout_ms must be a number")
    assert.has_error(function() stats.prometheus({}) end,
      "pairstore.stats.prometheus: snap must be a stats.snapshot() or stats.down()")
    assert.has_error(function() stats.down({}) end, "pairstore.stats.down: store must be a pairstore store")
  end)

  it("writes no control or bidi character of a server's text into an exposition", function()
    local hostile = "15.0 \27]0;PWNED\7\27[2J\226\128\174x\\\"y\n"
    local text = stats.prometheus { backend = "postgresql", sessions = { total = 0, live = 0, by_status = {} },
      server = { reached = "h:1", host = "h", port = "1", primary = true, version = hostile }, rows = 0 }
    assert.is_nil(text:find("[%z\1-\9\11-\31\127]"), text) -- (only the lines' newlines)
    assert.is_nil(text:find("\226\128\174", 1, true), text)
    assert.matches('version="15.0 \\\\e]0;PWNED\\\\x07\\\\e[2J\\\\u{202e}x\\\\\\"y\\n"', text, 1, true)
    local ok, out = promtool(text)
    assert.is_true(ok, out)
  end)

  it("says durations for people", function()
    assert.are.same({ "850 ms", "42 s", "14m52s", "3h05m", "2d04h" },
      { stats.duration(850), stats.duration(42000), stats.duration(892000), stats.duration(11100000),
        stats.duration(187200000) })
  end)
end)

for _, backend in ipairs(helpers.backends()) do
  describe("[" .. backend .. "]", function()
    describe("pairstore.stats.snapshot", function()
      local st, where, clock

      before_each(function()
        clock = helpers.clock(os.time() * 1000)
        st, where = helpers.open_store(backend, { durable = false, now = clock.now })
      end)
      after_each(helpers.cleanup)

      -- The secrets of every session stored: none may be in out.
      local function assert_no_secrets(out)
        for _, s in ipairs(assert(st:list_all())) do
          for _, secret in ipairs { s.sid, s.secondaryCode, s.skGatewayB64, s.pkGatewayB64, "sender-x", "account-y" } do
            assert.is_nil(out:find(secret, 1, true), "found " .. secret)
          end
        end
      end

      local function opts()
        if backend == "file" then return nil end
        return { timeout_ms = 5000 }
      end

      it("counts the sessions by status and ages the oldest live one", function()
        local a = assert(st:create { operator = { channel = "web", senderId = "sender-x", accountId = "account-y" } })
        clock.advance(60000)
        local b = assert(st:create {})
        assert(st:verify_code(b.sid, b.secondaryCode))
        local c = assert(st:create {})
        assert(st:reject(c.sid))
        clock.advance(90000)
        local snap = assert(stats.snapshot(st, opts()))
        assert.are.equal(backend, snap.backend)
        assert.are.equal(st.path, snap.store)
        assert.are.same({ awaiting_scan = 1, device_connected = 1, rejected = 1, completed = 0, consumed = 0,
          expired = 0, other = 0 }, snap.sessions.by_status)
        assert.are.equal(3, snap.sessions.total)
        assert.are.equal(2, snap.sessions.live)
        assert.are.equal(150000, snap.sessions.oldest_live_age_ms) -- a's age on the store's clock
        local text = stats.prometheus(snap)
        local ok, out = promtool(text)
        assert.is_true(ok, out)
        local s = samples(text)
        assert.are.equal(1, s['pairstore_sessions{status="awaiting_scan"}'])
        assert.are.equal(1, s['pairstore_sessions{status="rejected"}'])
        assert.are.equal(2, s.pairstore_live_sessions)
        assert.are.equal(150, s.pairstore_oldest_live_session_age_seconds)
        local rows = {}
        for _, r in ipairs(stats.rows(snap)) do rows[r[1]] = r[2] end
        assert.are.equal("2m30s", rows["oldest live"])
        assert.matches("^3 %(2 live%): awaiting_scan 1, device_connected 1", rows.sessions)
        assert_no_secrets(text .. helpers.json.encode(snap) .. helpers.json.encode(rows))
        assert.is_table(a)
        if backend == "file" then
          assert.are.equal(#helpers.read(where.path), snap.file.size)
          assert.are.equal(#helpers.read(where.path), s.pairstore_file_bytes)
          assert.is_false(snap.lock)
          assert.are.equal(0, s.pairstore_lock_held)
          assert.are.same({ count = 0 }, snap.corrupt)
        else
          assert.are.equal(3, snap.rows)
          assert.are.equal(3, s.pairstore_rows)
          assert.is_true(snap.server.primary)
          assert.are.equal(1, s.pairstore_pg_primary)
          assert.matches("^%d+", snap.server.version)
          -- the server as it says (the test cluster: over a unix socket), and as libpq
          -- reached it (the socket's directory and the port)
          assert.are.equal("local", snap.server.host)
          assert.are.equal("", snap.server.port)
          assert.matches("^/.+:%d+$", snap.server.reached)
          assert.are.equal(1, s[('pairstore_pg_server_info{reached="%s",host="%s",port="%s",version="%s"}'):format(
            snap.server.reached, snap.server.host, snap.server.port, snap.server.version)])
        end
      end)

      if backend == "file" then
        it("names the lock's holder and its age, as they were when it was called", function()
          local s = assert(st:create {})
          -- another process holds the lock (inside its mutator) when the snapshot is taken
          local dir = helpers.tmpdir()
          local pid = helpers.spawn_lua(string.format([[
            local st = %s
            assert(st:update(%q, function()
              local f = io.open(%q, "w"); f:close()
              os.execute("sleep 1")
            end))
          ]], helpers.open_expr(where, "durable = false"), s.sid, dir .. "/held"), dir .. "/holder.out")
          assert(helpers.wait_file(dir .. "/held", nil, 20), "the holder never took the lock")
          local snap = assert(stats.snapshot(st)) -- (its own read then waits for the holder)
          helpers.wait_exit(pid, 20)
          assert.are.equal(pid, snap.lock.pid)
          assert.is_true(snap.lock.alive)
          assert.is_true(snap.lock.age_ms >= 0 and snap.lock.age_ms < 10000, snap.lock.age_ms)
          local rows = {}
          for _, r in ipairs(stats.rows(snap)) do rows[r[1]] = r[2] end
          assert.matches("^held by pid " .. pid .. " for %d+ m?s$", rows.lock) -- (its mtime: up to 1 s before it was published)
          local t = samples(stats.prometheus(snap))
          assert.are.equal(1, t.pairstore_lock_held)
          -- and once it is gone
          snap = assert(stats.snapshot(st))
          assert.is_false(snap.lock)
        end)

        it("reads the sentinel of a holder as it is, and never blocks on a FIFO there", function()
          assert(st:create {})
          helpers.write(where.path .. ".lock", "4242\n")
          os.execute("touch -d '-90 seconds' " .. q(where.path .. ".lock"))
          helpers.write(where.path .. ".corrupt-1000", "{x")
          helpers.write(where.path .. ".corrupt-2000", "{xyz")
          helpers.write(where.dir .. "/other.json.corrupt-3000", "{")
          -- the newest is the one moved aside last, by its mtime, whatever its name says
          -- (a hand-named copy, a clock that was wrong)
          os.execute("touch -d '-60 seconds' " .. q(where.path .. ".corrupt-1000"))
          os.execute("touch -d '-600 seconds' " .. q(where.path .. ".corrupt-2000"))
          -- the store's read would wait for that (foreign, fresh enough) sentinel: the reads
          -- beside the file are what is checked here
          local f = assert(require("pairstore.core").files_beside(where.path))
          assert.are.equal(4242, f.lock.pid)
          assert.is_true(math.abs(require("pairstore.core").now_ms() - f.lock.mtime_ms - 90000) < 5000)
          assert.are.same({ count = 2, newest = "pair-sessions.json.corrupt-1000", newest_size = 2 },
            { count = f.corrupt.count, newest = f.corrupt.newest, newest_size = f.corrupt.newest_size })
          assert.is_true(math.abs(require("pairstore.core").now_ms() - f.corrupt.newest_ms - 60000) < 5000)
          assert.are.equal("file", f.file.kind)
          os.remove(where.path .. ".lock")
          assert(os.execute("mkfifo " .. q(where.path .. ".lock")))
          local t0 = os.time()
          f = assert(require("pairstore.core").files_beside(where.path))
          assert.is_true(os.time() - t0 < 5)
          assert.are.equal("fifo", f.lock.kind)
          assert.is_nil(f.lock.pid)
          os.remove(where.path .. ".lock")
        end)
      else
        it("asks the server on the store's own connection, and says when it cannot, without the password", function()
          -- (one connection: the store's; the snapshot opens none of its own)
          local srv = assert(st._core:server(5000))
          assert.is_true(srv.primary)
          local down = pairstore.open("postgresql://u:s3cretpw@127.0.0.1:1/db", { connect_timeout_ms = 2000 })
          local snap, msg, code = stats.snapshot(down, { timeout_ms = 2000 })
          assert.is_nil(snap)
          assert.are.equal("unavailable", code)
          assert.is_nil(msg:find("s3cretpw", 1, true), msg)
          assert.matches("postgresql://u@127.0.0.1:1/db", msg, 1, true)
          local _, smsg, scode = down._core:server(2000)
          assert.are.equal("unavailable", scode)
          assert.is_nil(smsg:find("s3cretpw", 1, true), smsg)
          -- a snapshot whose server part fails still renders (pairstore_pg_up 0)
          local text = stats.prometheus { backend = "postgresql", sessions = { total = 0, live = 0, by_status = {} },
            server = { error = smsg } }
          assert.are.equal(0, samples(text).pairstore_pg_up)
          local ok, out = promtool(text)
          assert.is_true(ok, out)
        end)
      end

      it("--prometheus says the store is down when it cannot be read (exit 0: the exposition is the product)", function()
        local bad = backend == "file" and helpers.tmpdir() .. "/pair-sessions.json"
          or "postgresql://gateway:s3cretPW@127.0.0.1:1/pairstore"
        if backend == "file" then helpers.write(bad, "{bad") end
        local arg = backend == "file" and ("--file " .. q(bad)) or ("--store " .. q(bad))
        local ok, out = helpers.run("(" .. CLI .. " " .. arg .. " stats --prometheus 2>/dev/null)")
        assert.is_true(ok, out)
        local s = samples(out)
        assert.are.equal(0, s.pairstore_store_up, out)
        assert.is_nil(s['pairstore_sessions{status="awaiting_scan"}'])
        if backend == "postgresql" then assert.are.equal(0, s.pairstore_pg_up, out) end
        local okt, tout = promtool(out)
        assert.is_true(okt, tout)
        -- the reason on stderr, without the password; the table and --json still fail
        local okr, rout, rc = helpers.run(CLI .. " " .. arg .. " stats")
        assert.is_false(okr)
        assert.are.equal(2, rc)
        assert.matches("cannot read the store", rout, 1, true)
        assert.is_nil(rout:find("s3cretPW", 1, true), rout)
      end)

      it("is what `pairstore stats` prints, as a table, --json and --prometheus", function()
        assert(st:create { operator = { channel = "web", senderId = "sender-x", accountId = "account-y" } })
        local args = backend == "file" and ("--file " .. q(where.path))
          or ("--store " .. q(where.target) .. " --store-name " .. q(where.store))
        local ok, out = helpers.run(CLI .. " " .. args .. " stats")
        assert.is_true(ok, out)
        assert.matches("sessions +1 %(1 live%): awaiting_scan 1", out)
        assert.matches("oldest live", out, 1, true)
        assert.matches(backend == "file" and "lock +free" or "server .*primary", out)
        local okj, js = helpers.run(CLI .. " " .. args .. " stats --json")
        assert.is_true(okj, js)
        local snap = helpers.json.decode(js)
        assert.are.equal(1, snap.sessions.by_status.awaiting_scan)
        assert.are.equal(backend, snap.backend)
        local okp, prom = helpers.run(CLI .. " " .. args .. " stats --prometheus")
        assert.is_true(okp, prom)
        local okt, tout = promtool(prom)
        assert.is_true(okt, tout)
        assert.are.equal(1, samples(prom)['pairstore_sessions{status="awaiting_scan"}'])
        local okm, mout = helpers.run(CLI .. " " .. args .. " stats --json --prometheus")
        assert.is_false(okm)
        assert.matches("can not be used together", mout, 1, true)
        assert_no_secrets(out .. js .. prom)
      end)
    end)
  end)
end
