-- Specs for the operator CLI: the real bin/pairstore run in child processes, against a temp
-- sessions file and against a PostgreSQL store (the same specs, parameterised; a store name of
-- its own per test in the database of $PAIRSTORE_TEST_PG, which `make test` starts: without it
-- the PostgreSQL specs fail, they never skip). Every run is checked for leaked secrets: no
-- output may contain a gateway secret key, and only `create` may print a 6-digit code.
local pairstore = require "pairstore"
local crypto = require "pairstore.crypto"
local helpers = require "helpers"
local q = helpers.sh_quote
local json = helpers.json

local BIN = helpers.ROOT .. "/bin/pairstore"
local BASE_URL = "https://gw.example/pair"
local LUA = helpers.LUA_ENV .. " timeout 60 " .. helpers.LUA .. " " .. q(BIN)
-- Without `timeout`, which would move the CLI into a process group of its own (the live
-- view specs signal the group, as a terminal does); those specs bound their waits instead.
local LUA_FG = "PAIRSTORE_URL=" .. BASE_URL .. " " .. helpers.LUA_ENV .. " " .. helpers.LUA .. " " .. q(BIN)
local AEAD = crypto.aead_available("aes-256-gcm") and "aes-256-gcm" or "chacha20-poly1305"

local function unhex(s)
  return (s:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end

-- The test database's target and store names: the shared helpers' (without
-- $PAIRSTORE_TEST_PG, which `make test` sets, the PostgreSQL specs fail; they never skip).
local pg_target = helpers.pg_target
local unique_name = helpers.store_name

local function lines(s)
  local t = {}
  for l in (s .. "\n"):gmatch("([^\n]*)\n") do t[#t + 1] = l end
  if t[#t] == "" then t[#t] = nil end
  return t
end

for _, backend in ipairs(helpers.backends()) do
local PG = backend == "postgresql"

describe("bin/pairstore (" .. backend .. " store)", function()
  local dir, file
  local pg_name -- the PostgreSQL store's name
  local keys, codes -- every secret key and code seen in the store during the test
  local where -- the test's store (helpers.open_store)
  local collector -- the store collect() reads

  -- The arguments that name the test's store.
  local function target_argv()
    if PG then return { "--store", where.target, "--store-name", where.store } end
    return { "--file", where.path }
  end
  local function target_args()
    local argv = target_argv()
    for i = 1, #argv do argv[i] = q(argv[i]) end
    return table.concat(argv, " ")
  end

  -- Another store object on the test's store (closed by helpers.cleanup).
  local function store(extra)
    local o = { durable = false }
    for k, v in pairs(extra or {}) do o[k] = v end
    return helpers.reopen(where, o)
  end

  local function collect()
    local sessions
    if PG then
      collector = collector or store() -- one connection for the whole test
      sessions = collector:list_all() or {}
    else
      local text = helpers.read(file)
      if not text then return end
      local ok, doc = pcall(json.decode, text)
      if not ok or type(doc) ~= "table" or type(doc.sessions) ~= "table" then return end
      sessions = doc.sessions
    end
    for _, s in ipairs(sessions) do
      if type(s.skGatewayB64) == "string" then keys[s.skGatewayB64] = true end
      if type(s.secondaryCode) == "string" then codes[s.secondaryCode] = true end
    end
  end

  -- A spec of what a file holds that the store never writes (bytes a person put in by hand).
  local function file_only(what, fn)
    if not PG then it(what, fn) end
  end

  -- Nothing was stored (a refused command created no session, nor a file).
  local function assert_nothing_stored(what)
    if PG then
      assert.are.same({}, assert(store():list_all()), what)
    else
      assert.is_nil(helpers.read(file), what)
    end
  end

  local function assert_no_secrets(text, is_create)
    for sk in pairs(keys) do
      assert.is_nil(text:find(sk, 1, true), "a secret key was printed")
    end
    if not is_create then
      for code in pairs(codes) do
        assert.is_nil(text:find("%f[%d]" .. code .. "%f[%D]"), "a code was printed outside create")
      end
    end
  end

  -- Runs the CLI; returns exit code, stdout, stderr. opts.nofile: no --file/--store;
  -- opts.env: prefix (after PAIRSTORE_URL=BASE_URL, which `env -u PAIRSTORE_URL` undoes).
  local function cli(args, opts)
    opts = opts or {}
    collect()
    local cmd = "PAIRSTORE_URL=" .. BASE_URL .. " " .. (opts.env or "") .. " " .. LUA
    if not opts.nofile then cmd = cmd .. " " .. target_args() end
    local _, out, err, rc = helpers.run_split(cmd .. " " .. args .. " </dev/null")
    collect()
    local is_create = (" " .. args .. " "):match(" create ") ~= nil
    assert_no_secrets(out, is_create)
    assert_no_secrets(err, is_create)
    return rc, out, err
  end

  before_each(function()
    local _
    _, where = helpers.open_store(backend, { durable = false })
    dir = where.dir or helpers.tmpdir()
    file = dir .. "/pair-sessions.json"
    pg_name = where.store
    keys, codes, collector = {}, {}, nil
  end)
  after_each(function()
    helpers.cleanup()
  end)

  describe("create", function()
    it("prints the sid, the code, the pairing URL and a half-block QR code", function()
      local rc, out, err = cli("create")
      assert.are.equal(0, rc)
      assert.are.equal("", err)
      local sid = out:match("sid:%s+(%x+)")
      local code = out:match("code:%s+(%d+)")
      local url = out:match("url:%s+(%S+)")
      local s = assert(store():get(sid))
      assert.are.equal(32, #sid)
      assert.are.equal(s.secondaryCode, code)
      assert.are.equal(pairstore.pairing_url(BASE_URL, s), url)
      assert.are.equal("generate", s.mode)
      assert.are.equal("cli", s.operatorContext.channel)
      assert.are.equal(pairstore.DEFAULT_TTL_MS, s.expiresAtMs - s.createdAtMs)
      assert.matches("\226\150\136\226\150\136\226\150\136\226\150\136", out)
      local qr_lines = 0
      for _, l in ipairs(lines(out)) do
        if l:match("^\226\150\136") or l:match("^\226\150\128") then qr_lines = qr_lines + 1 end
      end
      local width = assert(require("pairstore.qr").matrix(url)).width
      assert.are.equal(math.floor((width + 4 + 1) / 2), qr_lines)
    end)

    it("takes --mode, --channel, --ttl and --url, and draws ASCII with --ascii", function()
      local rc, out = cli("create --mode import --channel telegram --ttl 600 --url https://gw.example/p --ascii")
      assert.are.equal(0, rc)
      local sid = out:match("sid:%s+(%x+)")
      local s = assert(store():get(sid))
      assert.are.equal("import", s.mode)
      assert.are.equal("telegram", s.operatorContext.channel)
      assert.are.equal(600000, s.expiresAtMs - s.createdAtMs)
      assert.matches("url:%s+https://gw%.example/p%?sid=" .. sid .. "#pk=", out)
      assert.matches("\n    ##############", out)
      assert.is_nil(out:find("\226\150\136", 1, true))
    end)

    it("clamps --ttl to the allowed range and says so on stderr", function()
      local rc, out, err = cli("create --ttl 10")
      assert.are.equal(0, rc)
      assert.matches("note: %-%-ttl 10 is outside 300%.%.3600 seconds; using 300", err)
      local s = assert(store():get(out:match("sid:%s+(%x+)")))
      assert.are.equal(300000, s.expiresAtMs - s.createdAtMs)
    end)

    it("rejects bad option values in one line on stderr with exit code 2", function()
      for _, args in ipairs { "create --ttl abc", "create --ttl -5", "create --ttl 0", "create --ttl 1e3",
        "create --mode other", "create --bogus" } do
        local rc, out, err = cli(args)
        assert.are.equal(2, rc, args)
        assert.are.equal("", out, args)
        assert.matches("^pairstore create: [^\n]+ %(see `pairstore create %-%-help`%)\n$", err)
      end
      assert_nothing_stored()
    end)
  end)

  if not PG then -- (a file's own behaviour)
  describe("a corrupt sessions file", function()
    it("is left alone by list, and reported on stderr when a write moves it aside", function()
      helpers.write(file, "{not json")
      os.execute("chmod 0600 " .. helpers.sh_quote(file))
      local rc, out, err = cli("list --all")
      assert.are.equal(2, rc)
      assert.are.equal("", out)
      assert.matches("not a valid sessions file", err, 1, true)
      assert.are.equal("{not json", helpers.read(file))
      rc, out, err = cli("prune")
      assert.are.equal(0, rc)
      assert.matches("pruned 0", out)
      assert.matches("pairstore: note: the sessions file was corrupt; moved aside to " ..
        file:gsub("%p", "%%%0") .. "%.corrupt%-%d+", err)
    end)

    it("never moves a file that is not a sessions file of ours (--file /etc/passwd)", function()
      local passwd = dir .. "/passwd"
      os.execute("cp /etc/passwd " .. helpers.sh_quote(passwd) .. " && chmod 0644 " .. helpers.sh_quote(passwd))
      local before = helpers.read(passwd)
      for _, args in ipairs { "list", "list --all", "prune", "create --channel x --url https://gw.example/p" } do
        local rc, _, err = cli("--file " .. helpers.sh_quote(passwd) .. " " .. args, { nofile = true })
        assert.are.equal(2, rc, args)
        assert.matches("not a valid sessions file", err, 1, true)
        assert.are.equal(before, helpers.read(passwd), args)
        assert.are.equal("644", helpers.mode(passwd), args)
      end
      for _, n in ipairs(helpers.ls(dir)) do assert.is_nil(n:match("corrupt"), n) end
    end)
  end)
  end

  describe("list", function()
    it("prints a redacted table of the active sessions", function()
      local st = store()
      local a = assert(st:create { operator = { channel = "telegram" } })
      local b = assert(st:create { mode = "import", operator = { channel = "web" } })
      assert(st:verify_code(b.sid, b.secondaryCode))
      local c = assert(st:create {})
      assert(st:reject(c.sid))
      local rc, out, err = cli("list")
      assert.are.equal(0, rc)
      assert.are.equal("", err)
      local l = lines(out)
      assert.are.equal(3, #l)
      assert.matches("^SID%s+STATUS%s+MODE%s+CHANNEL%s+CREATED%s+EXPIRES IN%s+ATTEMPTS$", l[1])
      local body = table.concat(l, "\n", 2)
      assert.matches(a.sid:sub(1, 8) .. "%s+awaiting_scan%s+generate%s+telegram%s+%d%d%d%d%-%d%d%-%d%d %d%d:%d%d:%d%d%s+1[45]m%d%ds%s+0", body)
      assert.matches(b.sid:sub(1, 8) .. "%s+device_connected%s+import%s+web", body)
      assert.is_nil(out:find(a.sid, 1, true), "only the short sid is listed")
      assert.is_nil(out:find(c.sid:sub(1, 8), 1, true))
    end)

    it("lists ended sessions too with --all", function()
      local st = store()
      local c = assert(st:create {})
      assert(st:reject(c.sid))
      local rc, out = cli("list --all")
      assert.are.equal(0, rc)
      assert.matches(c.sid:sub(1, 8) .. "%s+rejected%s+generate%s+unknown%s+[%d: -]+%s+%-%s+0", out)
    end)

    it("prints redacted JSON with --json", function()
      local st = store()
      local a = assert(st:create {})
      local c = assert(st:create {})
      assert(st:reject(c.sid))
      local rc, out = cli("list --json")
      assert.are.equal(0, rc)
      local arr = json.decode(out)
      assert.are.equal(1, #arr)
      assert.are.equal(a.sid, arr[1].sid)
      assert.are.equal("[redacted]", arr[1].skGatewayB64)
      assert.are.equal("[redacted]", arr[1].secondaryCode)
      assert.are.equal(a.pkGatewayB64, arr[1].pkGatewayB64)
      rc, out = cli("list --all --json")
      assert.are.equal(0, rc)
      assert.are.equal(2, #json.decode(out))
    end)

    it("says so when there is nothing to list, and --json gives []", function()
      local rc, out = cli("list")
      assert.are.equal(0, rc)
      assert.matches("^no active sessions", out)
      rc, out = cli("list --json")
      assert.are.equal(0, rc)
      assert.are.equal("[]\n", out)
      rc, out = cli("list --all")
      assert.are.equal(0, rc)
      assert.are.equal("no sessions\n", out)
    end)
  end)

  describe("show", function()
    it("shows one session, redacted, by a unique prefix", function()
      local a = assert(store():create { operator = { channel = "telegram", senderId = "u1" } })
      local rc, out, err = cli("show " .. a.sid:sub(1, 6))
      assert.are.equal(0, rc)
      assert.are.equal("", err)
      assert.matches("sid:%s+" .. a.sid, out)
      assert.matches("status:%s+awaiting_scan", out)
      assert.matches("skGatewayB64:%s+%[redacted%]", out)
      assert.matches("secondaryCode:%s+%[redacted%]", out)
      assert.matches("pkGatewayB64:%s+" .. a.pkGatewayB64:gsub("%p", "%%%0"), out)
      assert.matches('"senderId":"u1"', out, 1, true)
      assert.matches("expiresIn:%s+1[45]m%d%ds", out)
    end)

    it("refuses an ambiguous prefix, an unknown sid and a malformed one", function()
      local n = 0
      local st = store { rng = { sid = function()
        n = n + 1
        return unhex(n == 1 and "abcd0000000000000000000000000000" or "abcd1111111111111111111111111111")
      end } }
      assert(st:create {})
      assert(st:create {})
      local rc, out, err = cli("show abcd")
      assert.are.equal(2, rc)
      assert.are.equal("", out)
      assert.matches("abcd is ambiguous: it matches 2 sessions", err, 1, true)
      rc, out = cli("show abcd1")
      assert.are.equal(0, rc)
      assert.matches("sid:%s+abcd1111", out)
      rc, out, err = cli("show ffff")
      assert.are.equal(2, rc)
      assert.are.equal("", out)
      assert.are.equal("pairstore: no session matches ffff\n", err)
      rc, out, err = cli("show ABCD")
      assert.are.equal(2, rc)
      assert.are.equal("", out)
      assert.matches("invalid SID", err, 1, true)
      st:close()
      -- no run, failed or not, left its lock sentinel parked behind
      if not PG then assert.are.same({ "pair-sessions.json" }, helpers.ls(dir)) end
    end)
  end)

  describe("reject", function()
    it("rejects a session", function()
      local a = assert(store():create {})
      local rc, out = cli("reject " .. a.sid:sub(1, 10))
      assert.are.equal(0, rc)
      assert.are.equal("rejected " .. a.sid .. "\n", out)
      assert.are.equal("rejected", store():get(a.sid).status)
    end)

    it("refuses to reject a completed session", function()
      local st = store()
      local a = assert(st:create {})
      assert(st:verify_code(a.sid, a.secondaryCode))
      assert(st:consume(a.sid))
      assert(st:transition(a.sid, "completed"))
      local rc, out, err = cli("reject " .. a.sid)
      assert.are.equal(2, rc)
      assert.are.equal("", out)
      assert.matches("cannot reject " .. a.sid .. ": the session is already completed", err, 1, true)
      assert.are.equal("completed", st:get(a.sid).status)
    end)
  end)

  describe("prune", function()
    it("deletes ended sessions past the retention hour", function()
      -- (Every operation prunes: the live session is made first, the old one last.)
      local b = assert(store():create {})
      local wall = require("pairstore.core").now_ms()
      local old = store { now = function() return wall - 2 * 3600 * 1000 end }
      local a = assert(old:create {})
      assert(old:reject(a.sid))
      local rc, out = cli("prune")
      assert.are.equal(0, rc)
      assert.are.equal("pruned 1 session\n", out)
      assert.is_nil(store():get(a.sid))
      assert(store():get(b.sid))
      rc, out = cli("prune")
      assert.are.equal(0, rc)
      assert.are.equal("pruned 0 sessions\n", out)
    end)
  end)

  if not PG then -- (a file's own behaviour)
  describe("the sessions file", function()
    it("is --file, else $PAIRSTORE_FILE, else ~/.pairstore/pair-sessions.json", function()
      local other = dir .. "/env.json"
      local rc = cli("create", { nofile = true, env = "PAIRSTORE_FILE=" .. q(other) })
      assert.are.equal(0, rc)
      assert.are.equal(1, #helpers.read_json(other).sessions)
      rc = cli("create", { env = "PAIRSTORE_FILE=" .. q(other) }) -- --file wins
      assert.are.equal(0, rc)
      assert.are.equal(1, #helpers.read_json(other).sessions)
      assert.are.equal(1, #helpers.read_json(file).sessions)
      rc = cli("create", { nofile = true, env = "env -u PAIRSTORE_FILE HOME=" .. q(dir) })
      assert.are.equal(0, rc)
      assert.are.equal(1, #helpers.read_json(dir .. "/.pairstore/pair-sessions.json").sessions)
      assert.are.equal("700", helpers.mode(dir .. "/.pairstore"))
    end)
  end)
  end

  describe("--help", function()
    it("is available for the program and for each command", function()
      local rc, out = cli("--help")
      assert.are.equal(0, rc)
      assert.matches("Usage: pairstore", out, 1, true)
      for _, c in ipairs { "list", "show", "reject", "prune", "create", "watch" } do
        assert.matches("\n   " .. c .. " ", out, 1, true)
        local crc, cout, cerr = cli(c .. " --help")
        assert.are.equal(0, crc, c)
        assert.are.equal("", cerr, c)
        assert.matches("Usage: pairstore " .. c, cout, 1, true)
      end
    end)
  end)

  describe("errors", function()
    it("go to stderr in one line with exit code 2", function()
      for _, args in ipairs { "", "bogus", "show", "reject", "list --nope", "watch", "corrupt --nope" } do
        local rc, out, err = cli(args)
        assert.are.equal(2, rc, args)
        assert.are.equal("", out, args)
        assert.matches("^pairstore[ %w]*: [^\n]+\n$", err)
      end
      local rc, out, err = cli("reject " .. ("0"):rep(32))
      assert.are.equal(2, rc)
      assert.are.equal("", out)
      assert.matches("no session matches", err, 1, true)
    end)

    it("reports an unusable sessions file", function()
      helpers.write(dir .. "/notadir", "")
      local rc, out, err = cli("list", { nofile = true, env = "PAIRSTORE_FILE=" .. q(dir .. "/notadir/x.json") })
      assert.are.equal(2, rc)
      assert.are.equal("", out)
      assert.matches("^pairstore: cannot list the sessions: ", err)
    end)

    if PG then
      it("reports a server that cannot be reached as unavailable, in one line, nothing changed", function()
        local gone = "postgresql:///pairstore?host=" .. dir .. "/nosuchdir&user=pairstore&connect_timeout=5"
        for _, args in ipairs { "list", "create", "prune" } do
          local rc, out, err = cli("--store " .. q(gone) .. " " .. args, { nofile = true })
          assert.are.equal(2, rc, args)
          assert.are.equal("", out, args)
          assert.matches("^pairstore: [^\n]+%[unavailable%]; the store could not be reached; nothing was changed\n$", err)
        end
      end)
    end
  end)

  describe("watch", function()
    it("exits 0 for a completed session, 1 for a rejected or expired one", function()
      local st = store()
      local a = assert(st:create {})
      assert(st:verify_code(a.sid, a.secondaryCode))
      assert(st:consume(a.sid))
      assert(st:transition(a.sid, "completed"))
      local rc, out = cli("watch " .. a.sid)
      assert.are.equal(0, rc)
      assert.are.equal("status: completed\n", out)

      local b = assert(st:create {})
      assert(st:reject(b.sid))
      rc, out = cli("watch " .. b.sid:sub(1, 8))
      assert.are.equal(1, rc)
      assert.are.equal("status: rejected\n", out)

      local wall = require("pairstore.core").now_ms()
      local old = store { now = function() return wall - 20 * 60000 end }
      local c = assert(old:create {})
      rc, out = cli("watch " .. c.sid)
      assert.are.equal(1, rc)
      assert.are.equal("status: expired\n", out)
    end)
  end)

  describe("the live view", function()
    local out, err, rcfile, pgid
    before_each(function()
      out, err, rcfile = dir .. "/out", dir .. "/err", dir .. "/rc"
      pgid = nil
    end)
    after_each(function()
      if pgid and not helpers.exists(rcfile) then os.execute("kill -KILL -" .. pgid .. " 2>/dev/null") end
    end)

    local function start(args)
      pgid = helpers.spawn_group(LUA_FG .. " " .. target_args() .. " " .. args, out, err, rcfile)
      assert.is_number(pgid)
    end
    local function output_has(pattern)
      return helpers.wait_file(out, function(c) return c:find(pattern) ~= nil end, 20)
    end
    local function exit_code()
      local rc = helpers.wait_file(rcfile, nil, 20)
      return tonumber(rc)
    end

    it("create --wait without a terminal prints one line per change and exits 0 when completed", function()
      start("create --wait")
      local text = assert(output_has("\nstatus: awaiting_scan"))
      local sid = text:match("sid:%s+(%x+)")
      local code = text:match("code:%s+(%d+)")
      local st = store()
      local s = assert(st:verify_code(sid, code))
      assert(output_has("\nstatus: device_connected"))
      local box = assert(crypto.seal { pk_gateway = s.pkGatewayB64, sid = sid, plaintext = "w1 w2 w3", aead = AEAD })
      local pt = st:respond(sid, { v = 1, sid = sid, pk_d = box.pk_d, nonce = box.nonce, ct = box.ct }, { aead = AEAD })
      assert.are.equal("w1 w2 w3", pt)
      assert(output_has("\nstatus: consumed"))
      assert(st:transition(sid, "completed"))
      assert.are.equal(0, exit_code())
      local statuses = {}
      for _, l in ipairs(lines(helpers.read(out))) do
        local st_name = l:match("^status: ([%w_]+)")
        if st_name then statuses[#statuses + 1] = st_name end
      end
      assert.are.same({ "awaiting_scan", "device_connected", "consumed", "completed" }, statuses)
      assert.is_nil(helpers.read(out):find("\r", 1, true), "no carriage returns without a terminal")
      assert.are.equal("", helpers.read(err))
      collect()
      assert_no_secrets(helpers.read(out), true)
    end)

    it("create --wait exits 1 when the session is rejected", function()
      start("create --wait")
      local text = assert(output_has("\nstatus: awaiting_scan"))
      assert(store():reject(text:match("sid:%s+(%x+)")))
      assert.are.equal(1, exit_code())
      assert.matches("\nstatus: rejected\n$", helpers.read(out))
    end)

    it("create --wait: SIGINT to the process group (Ctrl+C) rejects the session and exits 130", function()
      -- A terminal sends SIGINT to its whole foreground process group.
      start("create --wait")
      local text = assert(output_has("\nstatus: awaiting_scan"))
      local sid = text:match("sid:%s+(%x+)")
      os.execute("kill -INT -" .. pgid)
      assert.are.equal(130, exit_code())
      assert.are.equal("rejected", store():get(sid).status)
      assert.matches("interrupted; session " .. sid .. " rejected", helpers.read(err), 1, true)
    end)

    it("watch: SIGINT exits 130 and leaves the session alone", function()
      local a = assert(store():create {})
      start("watch " .. a.sid)
      assert(output_has("status: awaiting_scan"))
      os.execute("kill -INT -" .. pgid)
      assert.are.equal(130, exit_code())
      assert.are.equal("awaiting_scan", store():get(a.sid).status)
      assert.matches("left as it is", helpers.read(err), 1, true)
    end)

    it("on a terminal redraws one status line, and Ctrl+C rejects the session (under script(1))", function()
      if not helpers.have("script") then return end -- util-linux script: Debian's bsdutils
      -- Type Ctrl+C into the pseudo terminal once the status line is up.
      local feeder = string.format(
        "i=0; until grep -q 'status: awaiting_scan' %s 2>/dev/null || [ $i -ge 200 ]; do sleep 0.1; i=$((i+1)); done;"
          .. " printf '\\003'; sleep 2", q(out))
      local cmd = string.format("(%s) | timeout 60 script -qfec %s /dev/null >%s 2>&1; echo $? >%s",
        feeder, q(LUA_FG .. " " .. target_args() .. " create --wait"), q(out), q(rcfile))
      os.execute(cmd)
      assert.are.equal(130, tonumber(helpers.read(rcfile)))
      local text = helpers.read(out)
      local sid = text:match("sid:%s+(%x+)")
      assert.matches("\r\27[K", text, 1, true)
      assert.matches("status: awaiting_scan, 1[45]m%d%ds left", text)
      assert.matches("interrupted; session " .. sid .. " rejected", text, 1, true)
      assert.are.equal("rejected", store():get(sid).status)
      collect()
      assert_no_secrets(text, true)
    end)

    -- Pids whose parent is ppid, from /proc (pgrep deadlocks with the ASan runtime preloaded,
    -- as make test-sanitize runs the suite).
    local function children_of(ppid)
      local found = {}
      for _, name in ipairs(helpers.ls("/proc")) do
        if name:match("^%d+$") then
          local f = io.open("/proc/" .. name .. "/stat")
          local stat = f and f:read("*a")
          if f then f:close() end
          if stat and tonumber(stat:match("^%d+ %b() %a (%d+)")) == ppid then found[#found + 1] = tonumber(name) end
        end
      end
      return found
    end
    -- The Lua process running the CLI (the child of the group's shell).
    local function cli_pid()
      local pid
      helpers.wait_for(function()
        pid = children_of(pgid)[1]
        return pid
      end, 20)
      return assert(pid, "no " .. helpers.LUA .. " child")
    end
    -- SIGHUP, SIGINT and SIGTERM blocked: the CLI holds them while it follows a session.
    local function holds_signals(pid)
      local f = io.open("/proc/" .. pid .. "/status")
      if not f then return false end
      local blk = f:read("*a"):match("SigBlk:%s*(%x+)")
      f:close()
      return blk ~= nil and helpers.compat.band(tonumber(blk, 16), 0x4003) == 0x4003
    end

    for sig, want in pairs { INT = 130, TERM = 143, HUP = 129 } do
      it("create --wait: SIG" .. sig .. " to the CLI's pid alone rejects the session and exits " .. want, function()
        start("create --wait")
        local text = assert(output_has("\nstatus: awaiting_scan"))
        local sid = text:match("sid:%s+(%x+)")
        local pid = cli_pid()
        assert.is_true(holds_signals(pid))
        helpers.kill(pid, sig)
        assert.are.equal(want, exit_code())
        assert.are.equal("rejected", store():get(sid).status)
        assert.matches("; session " .. sid .. " rejected", helpers.read(err), 1, true)
      end)
    end

    it("watch: SIGTERM and SIGHUP exit 143 and 129 and leave the session alone", function()
      local a = assert(store():create {})
      for sig, want in pairs { TERM = 143, HUP = 129 } do
        os.remove(rcfile)
        os.remove(out)
        start("watch " .. a.sid)
        assert(output_has("status: awaiting_scan"))
        local pid = cli_pid()
        assert.is_true(helpers.wait_for(function() return holds_signals(pid) end, 20))
        helpers.kill(pid, sig)
        assert.are.equal(want, exit_code())
        assert.matches("got SIG" .. sig .. "; session " .. a.sid .. " left as it is", helpers.read(err), 1, true)
      end
      assert.are.equal("awaiting_scan", store():get(a.sid).status)
    end)

    it("sleeps on the file instead of polling: no child processes, woken at once by a change", function()
      start("create --wait")
      local text = assert(output_has("\nstatus: awaiting_scan"))
      local sid = text:match("sid:%s+(%x+)")
      local code = text:match("code:%s+(%d+)")
      local pid = cli_pid()
      -- a poll with `sleep` keeps a child running most of the time; a wait has none
      for _ = 1, 10 do
        assert.are.same({}, children_of(pid), "the CLI runs a child while it waits")
        helpers.sleep(0.05)
      end
      local t0 = helpers.mono()
      assert(store():verify_code(sid, code))
      assert(output_has("\nstatus: device_connected"))
      local took = helpers.mono() - t0
      assert.is_true(took < 2, "saw the change after " .. took .. " s")
      assert(store():reject(sid))
      assert.are.equal(1, exit_code())
    end)

    if not PG then
      it("create --wait tries to reject its session before it gives up on an error", function()
        start("create --wait")
        local text = assert(output_has("\nstatus: awaiting_scan"))
        local sid = text:match("sid:%s+(%x+)")
        -- the sessions file replaced by a FIFO: every read and write of the store fails (io)
        assert(helpers.run("mkfifo " .. q(dir .. "/fifo") .. " && mv " .. q(dir .. "/fifo") .. " " .. q(file)))
        assert.are.equal(2, exit_code())
        assert.matches("^pairstore: cannot read " .. sid .. ": [^\n]+; could not reject " .. sid .. ": [^\n]+\n$",
          helpers.read(err))
      end)
    end

    if PG then
      it("create --wait rides out a server that is down for a moment, then sees the session complete", function()
        local function ctl(a) return helpers.run(helpers.PGCLUSTER .. " ctl " .. q(helpers.pg_dir()) .. " " .. a) end
        finally(function()
          if not ctl("status >/dev/null") then assert(ctl("start -w -t 60")) end
        end)
        start("create --wait")
        local text = assert(output_has("\nstatus: awaiting_scan"))
        local sid = text:match("sid:%s+(%x+)")
        local code = text:match("code:%s+(%d+)")
        assert(ctl("stop -m fast -w -t 60"))
        assert(helpers.wait_file(err, function(c) return c:find("trying again", 1, true) ~= nil end, 20),
          "no note of the outage")
        helpers.sleep(1.5)
        assert.is_false(helpers.exists(rcfile), "create --wait gave up while the session could still complete")
        assert(ctl("start -w -t 60"))
        local st = store()
        local s = assert(helpers.wait_for(function() return st:verify_code(sid, code) end, 20))
        local box = assert(crypto.seal { pk_gateway = s.pkGatewayB64, sid = sid, plaintext = "w1 w2", aead = AEAD })
        assert.are.equal("w1 w2", (st:respond(sid, { v = 1, sid = sid, pk_d = box.pk_d, nonce = box.nonce, ct = box.ct }, { aead = AEAD })))
        assert(st:transition(sid, "completed"))
        assert.are.equal(0, exit_code())
        assert.matches("\nstatus: completed\n$", helpers.read(out))
        local e = helpers.read(err)
        assert.matches("^pairstore: note: cannot read " .. sid .. ": [^\n]+%[unavailable%]; trying again while the session"
          .. " can still complete\npairstore: note: the store answers again\n$", e)
      end)
    end

    it("watch exits 1 when the session vanishes", function()
      local a = assert(store():create {})
      start("watch " .. a.sid)
      assert(output_has("status: awaiting_scan"))
      assert.is_false(store():update(a.sid, function() return false end))
      assert.are.equal(1, exit_code())
      assert.matches("session " .. a.sid .. " no longer exists\n$", helpers.read(out))
    end)
  end)

  describe("fields from the file", function()
    local NASTY = "\27]0;owned\7\27[31mred\r\nline2\t\255\254\194\155csi\226\128\174rtl\\"

    local function assert_terminal_safe(text)
      assert.is_truthy(helpers.compat.utf8.len(text), "output is valid UTF-8")
      assert.is_nil(text:find("[%z\1-\9\11-\31\127]"), "a control byte reached the terminal")
      for _, cp in helpers.compat.utf8.codes(text) do
        assert.is_false(cp >= 0x80 and cp <= 0x9f, "a C1 control reached the terminal")
        assert.is_false(cp >= 0x202a and cp <= 0x202e, "a bidi control reached the terminal")
      end
    end

    -- A JSON string of any bytes, as a hand-edited file may hold them (invalid UTF-8 kept raw).
    local function raw_json(v)
      return '"' .. v:gsub('[%c"\\]', function(ch)
        local e = ({ ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" })[ch]
        return e or string.format("\\u%04x", ch:byte())
      end) .. '"'
    end

    -- The store writes only valid UTF-8; the hostile bytes come from a hand-edited file.
    local function nasty_session()
      local st = store()
      local a = assert(st:create { operator = { channel = "@CHANNEL@", senderId = "\27[2J" } })
      assert(st:update(a.sid, function(c)
        c.note = "x\27]52;c;AAAA\7y"
        c.tags = { "\27[1m", { deep = "@DEEP@" } }
        c["key\27[7m"] = "\240\159\152\128 ok" -- an emoji is printable: kept as it is
      end))
      st:close()
      local text = helpers.read(file)
      text = text:gsub('"@CHANNEL@"', function() return raw_json(NASTY) end)
      text = text:gsub('"@DEEP@"', function() return raw_json("\155") end)
      helpers.write(file, text)
      return a
    end

    file_only("are printed by list with every unprintable byte as a visible escape, one line per session", function()
      nasty_session()
      local rc, out, err = cli("list")
      assert.are.equal(0, rc)
      assert.are.equal("", err)
      assert_terminal_safe(out)
      local l = lines(out)
      assert.are.equal(2, #l)
      assert.matches("\\e]0;owned\\x07\\e[31mred\\r\\nline2\\t\\xff\\xfe\\u{009b}csi\\u{202e}rtl\\\\", l[2], 1, true)
    end)

    file_only("are printed by show the same way, tables as JSON-like text (never table: 0x...)", function()
      local a = nasty_session()
      local rc, out = cli("show " .. a.sid)
      assert.are.equal(0, rc)
      assert_terminal_safe(out)
      assert.is_nil(out:find("table: 0x", 1, true))
      assert.matches('operatorContext:%s+{"channel":"\\e]0;owned', out)
      assert.matches('"senderId":"\\e[2J"}', out, 1, true)
      assert.matches('\ntags:%s+%["\\e%[1m",{"deep":"\\x9b"}%]\n', out)
      assert.matches("\nnote:%s+x\\e]52;c;AAAA\\x07y\n", out)
      assert.matches("\nkey\\e%[7m:%s+\240\159\152\128 ok\n", out)
    end)

    it("a hand-edited status is escaped too, in list and in the live view", function()
      local st = store()
      local a = assert(st:create {})
      assert(st:update(a.sid, function(c) c.status = "pau\27[2Jsed" end))
      local rc, out = cli("list --all")
      assert.are.equal(0, rc)
      assert.matches(a.sid:sub(1, 8) .. "  pau\\e%[2Jsed  ", out)
      -- watch follows it (not a status that ends) until timeout(1) stops it
      out = select(2, cli("watch " .. a.sid, { env = "timeout 2 env" }))
      assert.matches("^status: pau\\e%[2Jsed, 1[45]m%d%ds left\n$", out)
    end)

    it("a table or a number as channel is shown as its value", function()
      local st = store()
      local a = assert(st:create {})
      local b = assert(st:create {})
      assert(st:update(a.sid, function(c) c.operatorContext.channel = { x = 1 } end))
      assert(st:update(b.sid, function(c) c.operatorContext.channel = 42 end))
      local rc, out = cli("list")
      assert.are.equal(0, rc)
      assert.is_nil(out:find("table: 0x", 1, true))
      assert.matches(a.sid:sub(1, 8) .. "%s+awaiting_scan%s+generate%s+{\"x\":1}%s", out)
      assert.matches(b.sid:sub(1, 8) .. "%s+awaiting_scan%s+generate%s+42%s", out)
    end)

    file_only("list --json is always valid UTF-8 JSON: invalid bytes become U+FFFD, hidden characters \\u escapes", function()
      local a = nasty_session()
      local rc, out, err = cli("list --json")
      assert.are.equal(0, rc)
      assert.are.equal("", err)
      assert_terminal_safe(out)
      local arr = json.decode(out)
      assert.are.equal(a.sid, arr[1].sid)
      assert.are.equal("\27]0;owned\7\27[31mred\r\nline2\t\239\191\189\239\191\189\194\155csi\226\128\174rtl\\", arr[1].operatorContext.channel)
      assert.are.equal("\240\159\152\128 ok", arr[1]["key\27[7m"])
      assert.are.equal("\239\191\189", arr[1].tags[2].deep)
      assert.matches("\\u202e", out, 1, true)
    end)

    it("list --json writes numbers in full, as the store does", function()
      local st = store()
      local a = assert(st:create { operator = { channel = "c" } })
      assert(st:update(a.sid, function(c) c.ratio = 0.1 + 0.2; c.big = 1152921504606846977 end))
      st:close()
      local rc, out = cli("list --json")
      assert.are.equal(0, rc)
      -- (5.1 and LuaJIT: numbers are doubles, and the nearest one to 2^60 + 1 is 2^60)
      local big = helpers.compat.has_integers and "1152921504606846977" or "1152921504606846976"
      assert.matches('"big":' .. big, out, 1, true)
      assert.matches('"ratio":0.30000000000000004', out, 1, true)
    end)
  end)

  describe("a reader that stops early (a closed pipe)", function()
    -- More rows than a pipe holds: `head -1` has gone long before the last is written.
    local function many_sessions(n)
      local now = require("pairstore.core").now_ms()
      local texts = {}
      for i = 1, n do
        texts[i] = helpers.session_text { sid = string.format('"%032x"', i), createdAtMs = tostring(now),
          expiresAtMs = tostring(now + 900000), lastStatusChangeAtMs = tostring(now) }
      end
      assert.are.equal(n, (assert(store():import(texts))))
    end

    it("ends list quietly with exit code 0 once its output began", function()
      many_sessions(2000)
      local outf, errf = dir .. "/head.out", dir .. "/list.err"
      local script = "PAIRSTORE_URL=" .. BASE_URL .. " " .. LUA .. " " .. target_args() .. " list 2>" .. q(errf)
        .. " | head -1 >" .. q(outf) .. "; echo \"rc=${PIPESTATUS[0]}\""
      local _, res = helpers.run("bash -c " .. q(script))
      assert.are.equal("rc=0\n", res)
      assert.are.equal("", helpers.read(errf))
      assert.matches("^SID +STATUS +MODE +CHANNEL +CREATED +EXPIRES IN +ATTEMPTS\n$", helpers.read(outf))
      -- and the JSON, one long line
      script = "PAIRSTORE_URL=" .. BASE_URL .. " " .. LUA .. " " .. target_args() .. " list --json 2>" .. q(errf)
        .. " | head -c 100 >" .. q(outf) .. "; echo \"rc=${PIPESTATUS[0]}\""
      _, res = helpers.run("bash -c " .. q(script))
      assert.are.equal("rc=0\n", res)
      assert.are.equal("", helpers.read(errf))
      assert.are.equal(100, #helpers.read(outf))
    end)
  end)

  describe("output that cannot be written", function()
    it("makes create exit 2 and reject the session whose code it could not show", function()
      local rc, _, err = cli("create >/dev/full")
      assert.are.equal(2, rc)
      local sid = err:match("session (%x+) rejected")
      assert.matches("^pairstore: cannot write the output %(No space left on device%): session %x+ rejected", err)
      assert.are.equal("rejected", store():get(sid).status)
      assert.are.equal(1, #store():list_all())
    end)

    it("is not missed when stdio reports a write as done (line-buffered stdout, a file size limit)", function()
      -- stdbuf -oL makes stdout line-buffered, as a terminal is; ulimit -f lets the first KiB
      -- through, then each write fails with EFBIG. glibc then reports the failed write of a
      -- whole line as done and drops its buffer, after which a flush succeeds: only the
      -- stream's error flag remembers.
      local function limited(args)
        local outf = dir .. "/out"
        local script = "trap '' XFSZ; ulimit -f 1; PAIRSTORE_URL=" .. BASE_URL .. " " .. helpers.LUA_ENV
          .. " exec stdbuf -oL timeout 60 " .. helpers.LUA .. " " .. q(BIN) .. " " .. target_args() .. " " .. args
          .. " >" .. q(outf) .. " </dev/null"
        local _, out, err, rc = helpers.run_split("bash -c " .. q(script))
        assert.are.equal("", out)
        return rc, err, helpers.read(outf)
      end
      local rc, err = limited("create")
      assert.are.equal(2, rc)
      local sid = assert(err:match("^pairstore: cannot write the output %([^)]+%): session (%x+) rejected"), err)
      assert.are.equal("rejected", store():get(sid).status)
      local st = store()
      for _ = 1, 30 do assert(st:create {}) end
      local text
      rc, err, text = limited("list")
      assert.are.equal(2, rc)
      assert.matches("^pairstore: cannot write the output: [^\n]+\n$", err)
      assert.is_true(#text <= 1024)
    end)

    it("makes every command exit 2", function()
      local a = assert(store():create {})
      local b = assert(store():create {})
      helpers.write(file .. ".corrupt-1", "x")
      for _, args in ipairs { "list", "list --json", "show " .. a.sid, "reject " .. b.sid, "prune", "corrupt", "--help", "watch " .. b.sid } do
        local rc, _, err = cli(args .. " >/dev/full")
        assert.are.equal(2, rc, args)
        assert.matches("cannot write the output", err, 1, true)
      end
    end)

    it("a closed stdout is refused before anything is opened (a file would get its descriptor)", function()
      local rc, _, err = cli("create >&-")
      assert.are.equal(2, rc)
      assert.are.equal("pairstore: cannot write the output: stdout is closed\n", err)
      assert_nothing_stored()
      -- a closed stdin or stderr is filled with /dev/null: the store's files never get them
      assert(store():create {})
      rc = cli("list <&- 2>&-")
      assert.are.equal(0, rc)
      if not PG then assert.are.same({ "pair-sessions.json" }, helpers.ls_live(dir)) end
    end)
  end)

  describe("create's arguments", function()
    it("are all checked before anything is created: one line, exit 2, no traceback", function()
      local cases = {
        { "create --channel ''", "--channel must not be empty" },
        { "create --channel " .. q("a\27[31mb"), "--channel must be printable UTF-8" },
        { "create --url ''", "--url must not be empty" },
        { "create --url ftp://x.example/p", "--url must be an http:// or https:// URL" },
        { "create --url " .. q("https://x.example/p?a=1"), "must not have a query or fragment" },
        { "create --url " .. q("https://x.example/ p"), "printable ASCII without spaces" },
        { "create", "no pairing URL: pass --url BASE or set $PAIRSTORE_URL", "env -u PAIRSTORE_URL" },
        { "create", "$PAIRSTORE_URL must not be empty", "PAIRSTORE_URL=" },
        { "create --wait --url ''", "--url must not be empty" },
      }
      for _, c in ipairs(cases) do
        local rc, out, err = cli(c[1], { env = c[3] })
        assert.are.equal(2, rc, c[1])
        assert.are.equal("", out, c[1])
        assert.matches(c[2], err, 1, true)
        assert.matches("^[^\n]+\n$", err)
        assert.is_nil(err:find("traceback", 1, true), c[1])
        assert_nothing_stored(c[1] .. " created a session")
      end
    end)

    it("--url wins over $PAIRSTORE_URL", function()
      local rc, out = cli("create --url https://other.example/x")
      assert.are.equal(0, rc)
      assert.matches("url:%s+https://other%.example/x%?sid=", out)
    end)

    it("--ttl beyond any integer is clamped to 3600 with a note, never a silent default", function()
      for _, ttl in ipairs { "9223372036854775807", "99999999999999999999999", "3601" } do
        local rc, out, err = cli("create --ttl " .. ttl)
        assert.are.equal(0, rc, ttl)
        assert.are.equal("pairstore: note: --ttl " .. ttl .. " is outside 300..3600 seconds; using 3600\n", err)
        local s = assert(store():get(out:match("sid:%s+(%x+)")))
        assert.are.equal(3600000, s.expiresAtMs - s.createdAtMs, ttl)
      end
    end)
  end)

  if not PG then -- (a file's own behaviour)
  describe("corrupt", function()
    it("lists the quarantined files with size, mode and age (the file's mtime), and says they hold secrets", function()
      -- the age is the file's: a name is only a name (this one says 2023, the file is new; a
      -- hand-named .corrupt-1 is 5 hours old)
      helpers.write(file .. ".corrupt-1700000000000", "{not json")
      helpers.write(file .. ".corrupt-1", "x")
      helpers.write(dir .. "/unrelated.corrupt-1", "x")
      os.execute("chmod 644 " .. q(file .. ".corrupt-1700000000000"))
      os.execute("chmod 600 " .. q(file .. ".corrupt-1"))
      os.execute("touch -d @" .. (os.time() - 5 * 3600) .. " " .. q(file .. ".corrupt-1"))
      local rc, out, err = cli("corrupt")
      assert.are.equal(0, rc)
      assert.are.equal("", err)
      assert.matches("private keys and codes", out, 1, true)
      assert.matches("\npair%-sessions%.json%.corrupt%-1%s+1%s+0600%s+5h00m%d%ds\n", out)
      assert.matches("\npair%-sessions%.json%.corrupt%-1700000000000%s+9%s+0644%s+%ds%s+readable by others\n", out)
      assert.is_nil(out:find("unrelated", 1, true))
      rc, out = cli("corrupt", { nofile = true, env = "PAIRSTORE_FILE=" .. q(dir .. "/none.json") })
      assert.are.equal(0, rc)
      assert.matches("^no corrupt files beside ", out)
    end)

    it("--remove deletes regular files we own, never a symlink's target nor another user's file", function()
      local target = dir .. "/precious"
      helpers.write(target, "keep me")
      helpers.write(file .. ".corrupt-1", "a")
      helpers.write(file .. ".corrupt-2", "b")
      os.execute("ln -s " .. q(target) .. " " .. q(file .. ".corrupt-3"))
      local others = helpers.is_root()
      if others then
        helpers.write(file .. ".corrupt-4", "c")
        os.execute("chown nobody " .. q(file .. ".corrupt-4"))
      end
      local rc, out, err = cli("corrupt --remove")
      assert.are.equal(2, rc)
      assert.matches("removed pair%-sessions%.json%.corrupt%-1\nremoved pair%-sessions%.json%.corrupt%-2\n", out)
      assert.matches("not removed: pair-sessions.json.corrupt-3: a symlink", err, 1, true)
      assert.are.equal("keep me", helpers.read(target))
      assert.is_true(helpers.exists(file .. ".corrupt-3"))
      if others then
        assert.matches("not removed: pair-sessions.json.corrupt-4: owned by uid", err, 1, true)
        assert.is_true(helpers.exists(file .. ".corrupt-4"))
      end
      assert.is_false(helpers.exists(file .. ".corrupt-1"))
      os.remove(file .. ".corrupt-3")
      os.remove(file .. ".corrupt-4")
      rc = cli("corrupt --remove")
      assert.are.equal(0, rc)
    end)

    it("finds the file a corrupt store was moved to", function()
      helpers.write(file, "{not json")
      os.execute("chmod 600 " .. helpers.sh_quote(file)) -- plausibly ours: a write moves it aside
      local rc, _, err = cli("prune")
      assert.are.equal(0, rc)
      assert.matches("holds secrets: see `pairstore corrupt`", err, 1, true)
      local rc2, out = cli("corrupt --remove")
      assert.are.equal(0, rc2)
      assert.matches("^removed pair%-sessions%.json%.corrupt%-%d+\n$", out)
    end)
  end)
  end

  describe("--help", function()
    it("documents the environment, the URL rule, --invert, the default channel and every exit code", function()
      local _, out = cli("--help")
      for _, s in ipairs { "PAIRSTORE_FILE", "PAIRSTORE_URL", "PAIRSTORE_DEV", "vanished", "130, 143, 129",
        "corrupt" } do
        assert.matches(s, out, 1, true)
      end
      local _, cout = cli("create --help")
      for _, s in ipairs { "--invert", "default: cli", "$PAIRSTORE_URL", "refuses", "rejected" } do
        assert.matches(s, cout, 1, true)
      end
    end)

    it("documents the store targets, the store name, their variables and migrate", function()
      local _, out = cli("--help")
      for _, s in ipairs { "--store TARGET", "--store-name NAME", "PAIRSTORE_STORE", "PAIRSTORE_STORE_NAME",
        "postgresql://", "postgres://", "pg:", "password", "unavailable", "outcome_unknown", "migrate",
        "schema" } do
        assert.matches(s, out, 1, true)
      end
      local _, mout = cli("migrate --help")
      for _, s in ipairs { "FROM", "TO", "--from-store-name", "--to-store-name", "byte for byte", "conflict",
        "again" } do
        assert.matches(s, mout, 1, true)
      end
    end)
  end)

  describe("schema", function()
    it("prints the PostgreSQL schema's DDL, what sql/pairstore.sql holds, and touches no store", function()
      local rc, out, err = cli("schema")
      assert.are.equal(0, rc)
      assert.are.equal("", err)
      assert.are.equal(helpers.read(helpers.ROOT .. "/sql/pairstore.sql"), out)
      assert.are.equal(pairstore.pg_schema_sql(), out)
      assert_nothing_stored()
      rc, out, err = cli("schema >/dev/full")
      assert.are.equal(2, rc)
      assert.are.equal("", out)
      assert.matches("cannot write the output", err, 1, true)
    end)
  end)

  describe("the store's target", function()
    if not PG then
      it("--store PATH is a file as --file is; --store and --file together are refused", function()
        local rc, out = cli("--store " .. q(file) .. " create", { nofile = true })
        assert.are.equal(0, rc)
        assert(store():get(out:match("sid:%s+(%x+)")))
        local err
        rc, out, err = cli("--store " .. q(file) .. " --file " .. q(file) .. " list", { nofile = true })
        assert.are.equal(2, rc)
        assert.are.equal("", out)
        assert.matches("^pairstore: [^\n]+\n$", err)
      end)

      it("$PAIRSTORE_STORE wins over $PAIRSTORE_FILE; --store-name is refused for a file, the variable ignored", function()
        local other = dir .. "/other.json"
        local rc = cli("create", { nofile = true, env = "PAIRSTORE_STORE=" .. q(other) .. " PAIRSTORE_FILE=" .. q(file) })
        assert.are.equal(0, rc)
        assert.are.equal(1, #helpers.read_json(other).sessions)
        assert.is_nil(helpers.read(file))
        local out, err
        rc, out, err = cli("--store-name x list")
        assert.are.equal(2, rc)
        assert.are.equal("", out)
        assert.matches("--store-name is for a PostgreSQL store; " .. file .. " is a file", err, 1, true)
        rc, out = cli("list", { nofile = true, env = "PAIRSTORE_STORE=" .. q(other) .. " PAIRSTORE_STORE_NAME=x" })
        assert.are.equal(0, rc)
        assert.matches("awaiting_scan", out, 1, true)
      end)
    else
      it("--store-name keeps stores of one database apart; the variables name them too", function()
        local rc, out = cli("create")
        assert.are.equal(0, rc)
        local sid = out:match("sid:%s+(%x+)")
        local other = unique_name("cli-other")
        rc, out = cli("--store " .. q(pg_target()) .. " --store-name " .. q(other) .. " list --all", { nofile = true })
        assert.are.equal(0, rc)
        assert.are.equal("no sessions\n", out)
        rc, out = cli("list", { nofile = true,
          env = "PAIRSTORE_STORE=" .. q(pg_target()) .. " PAIRSTORE_STORE_NAME=" .. q(pg_name) .. " PAIRSTORE_FILE=" .. q(file) })
        assert.are.equal(0, rc)
        assert.matches(sid:sub(1, 8) .. "%s+awaiting_scan", out)
        assert.is_nil(helpers.read(file))
        -- --store-name wins over the variable
        rc, out = cli("--store-name " .. q(other) .. " list --all", { nofile = true,
          env = "PAIRSTORE_STORE=" .. q(pg_target()) .. " PAIRSTORE_STORE_NAME=" .. q(pg_name) })
        assert.are.equal(0, rc)
        assert.are.equal("no sessions\n", out)
      end)

      it("corrupt says a PostgreSQL store has no corrupt files", function()
        local rc, out, err = cli("corrupt")
        assert.are.equal(0, rc)
        assert.are.equal("", err)
        assert.matches("^no corrupt files: [^\n]+ is not a file store\n$", out)
        rc = cli("corrupt --remove")
        assert.are.equal(0, rc)
      end)

      it("never prints a password given in the target (URI userinfo, URI query, conninfo), nor in errors", function()
        local host = assert(pg_target():match("[?&]host=([^&]+)"))
        local PW = "Sekr3t-" .. pg_name:sub(-8)
        local targets = {
          { "postgresql://pairstore:" .. PW .. "u@/pairstore?host=" .. host, "/pairstore%?", "/nosuchdb?" },
          { "postgres:///pairstore?host=" .. host .. "&user=pairstore&password=" .. PW .. "q", "/pairstore%?", "/nosuchdb?" },
          { "pg:host=" .. host .. " dbname=pairstore user=pairstore password='" .. PW .. " c'", "dbname=pairstore", "dbname=nosuchdb" },
        }
        local fstore = pairstore.open(file, { durable = false })
        assert(fstore:create {})
        fstore:close()
        for _, t in ipairs(targets) do
          local target, bad = t[1], (t[1]:gsub(t[2], t[3]))
          local base = "--store " .. q(target) .. " --store-name " .. q(pg_name) .. " "
          local seen = {}
          local function run(args, want)
            local rc, out, err = cli(args, { nofile = true })
            assert.are.equal(want, rc, args .. "\n" .. out .. err)
            seen[#seen + 1] = out .. err
            return out, err
          end
          local out = run(base .. "create", 0)
          local sid = out:match("sid:%s+(%x+)")
          run(base .. "list --all", 0)
          run(base .. "show " .. sid, 0)
          run(base .. "reject " .. sid, 0)
          run(base .. "corrupt", 0)
          run("--store " .. q(bad) .. " list", 2)
          run("--store " .. q(bad) .. " create", 2)
          run(q(target) .. " list", 2) -- a target typed where the command goes
          run("--store=" .. q(target) .. " bogus", 2)
          out = run("migrate " .. q(file) .. " " .. q(target) .. " --to-store-name " .. q(pg_name), 0)
          assert.matches("\nto:   [^\n]* %(store " .. pg_name:gsub("%p", "%%%0") .. "%) %(postgresql%)\n", out)
          run("migrate " .. q(bad) .. " " .. q(file), 2)
          run("migrate " .. q(file) .. " " .. q(bad), 2)
          for _, text in ipairs(seen) do
            assert.is_nil(text:find("Sekr3t", 1, true), "a password was printed: " .. text)
          end
          assert.is_nil(pairstore.open(target, { store = pg_name }).path:find("Sekr3t", 1, true))
        end
      end)

      it("never prints a password hidden in a value of the target (a URI or conninfo as dbname)", function()
        local host = assert(pg_target():match("[?&]host=([^&]+)"))
        for _, target in ipairs {
          "pg:dbname=postgresql://pairstore:Sekr3t1@/pairstore?host=" .. host,
          "postgresql:///postgresql%3A%2F%2Fpairstore%3ASekr3t2%40%2Fpairstore?host=" .. host,
          "pg:dbname='host=" .. host .. " user=pairstore password=Sekr3t3 dbname=pairstore'",
        } do
          for _, args in ipairs { "--store " .. q(target) .. " list", "migrate " .. q(target) .. " " .. q(file), q(target) } do
            local rc, out, err = cli(args, { nofile = true })
            assert.are.equal(2, rc, args)
            assert.is_nil((out .. err):find("Sekr3t", 1, true), "a password was printed: " .. out .. err)
          end
        end
      end)
    end
  end)

  -- The same commands called in-process (pairstore.cli.run), with buffers for stdout and stderr.
  describe("pairstore.cli.run (in-process)", function()
    local cli_mod = require "pairstore.cli"

    -- A stream that keeps what is written; fail: the error a write gives (message, errno).
    local function sink(fail)
      local b = { parts = {} }
      function b.write(self, ...)
        if fail then return nil, fail[1], fail[2] end
        for i = 1, select("#", ...) do self.parts[#self.parts + 1] = tostring((select(i, ...))) end
        return self
      end
      function b.flush(self)
        if fail then return nil, fail[1], fail[2] end
        return self
      end
      function b.text(self) return table.concat(self.parts) end
      return b
    end

    -- Runs argv (after the test's store arguments unless opts.bare); returns rc, stdout, stderr.
    local function run(argv, opts)
      opts = opts or {}
      local full = opts.bare and {} or target_argv()
      for _, a in ipairs(argv) do full[#full + 1] = a end
      local o, e = opts.stdout or sink(), sink()
      local rc = cli_mod.run(full, { stdout = o, stderr = e, getenv = opts.env or { PAIRSTORE_URL = BASE_URL } })
      return rc, o.text and o:text() or "", e:text()
    end

    it("list, show and reject give the exit codes and output the executable gives", function()
      local rc, out, err = run { "list" }
      assert.are.same({ 0, "no active sessions (use --all to see ended ones)\n", "" }, { rc, out, err })
      local a = assert(store():create { operator = { channel = "cli" } })
      rc, out, err = run { "list" }
      assert.are.equal(0, rc)
      assert.are.equal("", err)
      assert.matches("^SID +STATUS +MODE +CHANNEL +CREATED +EXPIRES IN +ATTEMPTS\n" .. a.sid:sub(1, 8) .. "  awaiting_scan  generate  cli ", out)
      rc, out = run { "show", a.sid:sub(1, 6) }
      assert.are.equal(0, rc)
      assert.matches("\nskGatewayB64: +%[redacted%]\n", out)
      assert.is_nil(out:find(a.skGatewayB64, 1, true))
      rc, out = run { "reject", a.sid }
      assert.are.same({ 0, "rejected " .. a.sid .. "\n" }, { rc, out })
      assert.are.equal("rejected", store():get(a.sid).status)
      rc, out, err = run { "show", ("0"):rep(32) }
      assert.are.same({ 2, "", "pairstore: no session matches " .. ("0"):rep(32) .. "\n" }, { rc, out, err })
    end)

    it("a usage error is one line on stderr and exit code 2; --help goes to stdout", function()
      local rc, out, err = run({ "bogus" }, { bare = true })
      assert.are.same({ 2, "", "pairstore: unknown command 'bogus' (see `pairstore --help`)\n" }, { rc, out, err })
      rc, out, err = run({ "--help" }, { bare = true })
      assert.are.equal(0, rc)
      assert.are.equal("", err)
      for _, name in ipairs(require("pairstore.cli.commands").NAMES) do
        assert.matches("\n   " .. name .. " ", out, 1, true)
      end
    end)

    it("output that cannot be written is exit code 2; a closed pipe ends a read quietly", function()
      assert(store():create {})
      local rc, _, err = run({ "list" }, { stdout = sink { "No space left on device", 28 } })
      assert.are.same({ 2, "pairstore: cannot write the output: No space left on device\n" }, { rc, err })
      rc, _, err = run({ "list" }, { stdout = sink { "Broken pipe", 32 } })
      assert.are.same({ 0, "" }, { rc, err })
      -- create cannot tell whether its code was seen: the session is rejected
      rc, _, err = run({ "create" }, { stdout = sink { "Broken pipe", 32 } })
      assert.are.equal(2, rc)
      local sid = err:match("session (%x+) rejected")
      assert.are.equal("rejected", store():get(sid).status)
    end)

    it("a library error is escaped on stderr like any outside text", function()
      helpers.write(dir .. "/notadir", "")
      local rc, out, err = run({ "--store", dir .. "/notadir/\27]0;owned\7\27[2J\r/x.json", "list" }, { bare = true })
      assert.are.equal(2, rc)
      assert.are.equal("", out)
      assert.is_nil(err:find("[%z\1-\9\11-\31]"), err)
      assert.matches("^pairstore: cannot list the sessions: [^\n]*notadir/\\e%]0;owned\\x07\\e%[2J\\r: Not a directory[^\n]*\n$", err)
    end)
  end)
end)
end

-- migrate: copies between a file and PostgreSQL ----------------------------------------------

describe("pairstore migrate", function()
  local dir, name, opened

  before_each(function()
    dir, opened = helpers.tmpdir(), {}
    pg_target()
    name = unique_name("migrate")
  end)
  after_each(function()
    for _, st in ipairs(opened) do st:close() end
    helpers.cleanup()
  end)

  local function keep(st)
    opened[#opened + 1] = st
    return st
  end
  local function pg() return keep(pairstore.open(pg_target(), { store = name, durable = false })) end
  local function fstore(path) return keep(pairstore.open(path, { durable = false })) end

  local secret_keys = {}
  local function run(args)
    local _, out, err, rc = helpers.run_split(LUA .. " " .. args .. " </dev/null")
    for sk in pairs(secret_keys) do
      assert.is_nil((out .. err):find(sk, 1, true), "a secret key was printed")
    end
    return rc, out, err
  end

  local PGT = function() return q(pg_target()) end

  -- A sessions file as the reference writes it (spec/fixtures/reference-store.json, its
  -- times moved to now so that nothing is pruned), plus sessions a file may also hold: unknown
  -- fields, number texts JSON.stringify would not write (1.0, 2.50, -0.0, 1E3, 1e+21, a float
  -- expiry, an integer beyond 2^64), keys in another order, escapes and a lone surrogate.
  -- Returns the texts of its sessions, as written.
  local function write_fixture(path)
    local text = assert(helpers.read(helpers.FIXTURES .. "/reference-store.json"))
    local base = require("pairstore.core").now_ms() - 120000
    text = text:gsub("176430(%d%d%d%d%d%d%d)", function(d) return tostring(base + tonumber(d)) end)
    local sk1, pk1 = crypto.keypair()
    local sk2, pk2 = crypto.keypair()
    local odd = {
      string.format('{"status":"awaiting_scan","sid":"%s","mode":"generate","createdAtMs":%d.0,'
        .. '"expiresAtMs":%d.5,"lastStatusChangeAtMs":%d,"secondaryCode":"123456","secondaryCodeAttempts":0,'
        .. '"skGatewayB64":"%s","pkGatewayB64":"%s","operatorContext":{"senderId":"u\\u00e9","channel":"cli","accountId":"a"},'
        .. '"x-extra":{"z":[1.0,2.50,-0.0,1E3,1e+21,0.30000000000000004,12345678901234567890,1.5e-7],"a":{"y":null,"b":[],"c":{}}},'
        .. '"note":"\\ud83d tail \\u2028 \\/ \\"q\\""}',
        ("c0ffee"):rep(5) .. "01", base + 5000, base + 905000, base + 5000, sk1, pk1),
      string.format('{"sid":"%s","skGatewayB64":"%s","pkGatewayB64":"%s","createdAtMs":%d,"expiresAtMs":%d,'
        .. '"secondaryCode":"000001","secondaryCodeAttempts":2,"operatorContext":{"channel":"web","accountId":"\\u0041cc"},'
        .. '"mode":"import","status":"device_connected","lastStatusChangeAtMs":%d,"zeta":1,"alpha":[{"b":1,"a":2}]}',
        ("0badf00d"):rep(4), sk2, pk2, base + 6000, base + 1806000, base + 7000),
    }
    local sessions = text:match('^{"version":1,"sessions":%[(.*)%]}$')
    local texts = {}
    for t in sessions:gmatch("%b{}") do texts[#texts + 1] = t end
    for _, t in ipairs(odd) do texts[#texts + 1] = t end
    helpers.write(path, '{"version":1,"sessions":[' .. table.concat(texts, ",") .. "]}")
    os.execute("chmod 0600 " .. q(path))
    for _, t in ipairs(texts) do secret_keys[t:match('"skGatewayB64":"([^"]+)"')] = true end
    return texts
  end

  local function sorted(list)
    local c = {}
    for i, v in ipairs(list) do c[i] = v end
    table.sort(c)
    return c
  end

  local function summary(from, from_kind, n, added, same)
    return "^from: " .. from:gsub("%p", "%%%0") .. " %(" .. from_kind .. "%)\nto:   [^\n]+\n"
      .. string.format("%d sessions: %d added, %d same\n$", n, added, same)
  end

  it("copies a reference file into PostgreSQL and back, each session's text byte for byte", function()
    local f1, f2 = dir .. "/from.json", dir .. "/back/to.json"
    local written = write_fixture(f1)
    assert.are.equal(6, #written)
    local texts = assert(fstore(f1):export())
    assert.are.same(sorted(written), sorted(texts)) -- the file store exports what the file holds

    local rc, out, err = run("migrate " .. q(f1) .. " " .. PGT() .. " --to-store-name " .. q(name))
    assert.are.equal(0, rc, err)
    assert.are.equal("", err)
    assert.matches(summary(f1, "file", 6, 6, 0), out)
    assert.matches("\nto:   [^\n]+ %(postgresql%)\n", out)
    assert.are.same(texts, assert(pg():export()))

    rc, out, err = run("migrate " .. PGT() .. " " .. q(f2) .. " --from-store-name " .. q(name))
    assert.are.equal(0, rc, err)
    assert.are.equal("", err)
    assert.matches("%(postgresql%)\nto:   " .. f2:gsub("%p", "%%%0") .. " %(file%)\n6 sessions: 6 added, 0 same\n$", out)
    assert.are.same(texts, assert(fstore(f2):export()))
    local raw = assert(helpers.read(f2))
    for _, t in ipairs(texts) do assert.is_truthy(raw:find(t, 1, true), "not on disk as it was: " .. t) end
    -- and the API reads the same sessions from all three
    local all1 = assert(fstore(f1):list_all())
    assert.are.same(all1, assert(pg():list_all()))
    assert.are.same(all1, assert(fstore(f2):list_all()))
  end)

  it("is safe to run twice: the second run adds nothing and changes nothing", function()
    local f1, f2 = dir .. "/from.json", dir .. "/to.json"
    write_fixture(f1)
    local texts = assert(fstore(f1):export())
    assert.are.equal(0, (run("migrate " .. q(f1) .. " " .. PGT() .. " --to-store-name " .. q(name))))
    assert.are.equal(0, (run("migrate " .. PGT() .. " " .. q(f2) .. " --from-store-name " .. q(name))))
    local raw2 = helpers.read(f2)
    local rc, out, err = run("migrate " .. q(f1) .. " " .. PGT() .. " --to-store-name " .. q(name))
    assert.are.equal(0, rc, err)
    assert.matches(summary(f1, "file", 6, 0, 6), out)
    rc, out, err = run("migrate " .. PGT() .. " " .. q(f2) .. " --from-store-name " .. q(name))
    assert.are.equal(0, rc, err)
    assert.matches("\n6 sessions: 0 added, 6 same\n$", out)
    assert.are.same(texts, assert(pg():export()))
    assert.are.same(texts, assert(fstore(f2):export()))
    assert.are.equal(raw2, helpers.read(f2))
  end)

  it("refuses a conflict with a clear message and copies nothing, both ways", function()
    local f1 = dir .. "/from.json"
    write_fixture(f1)
    assert.are.equal(0, (run("migrate " .. q(f1) .. " " .. PGT() .. " --to-store-name " .. q(name))))
    local sid = ("0badf00d"):rep(4)
    assert(pg():update(sid, function(c) c.note = "changed in PostgreSQL" end))
    local fresh = assert(fstore(f1):create { operator = { channel = "new" } })
    secret_keys[fresh.skGatewayB64] = true
    local pg_before, f1_before = assert(pg():export()), helpers.read(f1)

    local rc, out, err = run("migrate " .. q(f1) .. " " .. PGT() .. " --to-store-name " .. q(name))
    assert.are.equal(2, rc)
    assert.are.equal("", out)
    assert.matches("^pairstore: cannot migrate: [^\n]+ %(postgresql%) holds sessions " .. sid
      .. " with another text than [^\n]+ %(file%); nothing was copied %[conflict%]\n$", err)
    assert.are.same(pg_before, assert(pg():export()))
    assert.are.same({ nil, "not_found", "not_found" }, { pg():get(fresh.sid) })

    rc, out, err = run("migrate " .. PGT() .. " " .. q(f1) .. " --from-store-name " .. q(name))
    assert.are.equal(2, rc)
    assert.are.equal("", out)
    assert.matches("holds sessions " .. sid .. " with another text", err, 1, true)
    assert.are.equal(f1_before, helpers.read(f1))
  end)

  it("refuses a store name for a file, --store with migrate, and reports a store it cannot reach", function()
    local f1 = dir .. "/from.json"
    write_fixture(f1)
    local rc, out, err = run("migrate " .. q(f1) .. " " .. q(dir .. "/to.json") .. " --to-store-name x")
    assert.are.equal(2, rc)
    assert.are.equal("", out)
    assert.matches("--to-store-name is for a PostgreSQL store", err, 1, true)
    rc, out, err = run("--store " .. q(f1) .. " migrate " .. q(f1) .. " " .. PGT())
    assert.are.equal(2, rc)
    assert.are.equal("", out)
    assert.matches("^pairstore: migrate takes its stores as FROM and TO", err)
    local gone = "postgresql:///pairstore?host=" .. dir .. "/nosuchdir&user=pairstore"
    rc, out, err = run("migrate " .. q(gone) .. " " .. q(f1))
    assert.are.equal(2, rc)
    assert.are.equal("", out)
    assert.matches("^pairstore: cannot read the sessions of [^\n]+%[unavailable%]", err)
    rc, out, err = run("migrate " .. q(f1) .. " " .. q(gone))
    assert.are.equal(2, rc)
    assert.are.equal("", out)
    assert.matches("^pairstore: cannot migrate into [^\n]+%[unavailable%]", err)
  end)

  it("names the sessions a file holds with bytes that are not UTF-8, which PostgreSQL cannot store", function()
    local f1 = dir .. "/from.json"
    local texts = write_fixture(f1)
    local raw = helpers.read(f1)
    local sid = ("c0ffee"):rep(5) .. "01"
    helpers.write(f1, (raw:gsub('"note":"', '"note":"\255\254', 1))) -- a hand edit: the store never writes these
    local rc, out, err = run("migrate " .. q(f1) .. " " .. PGT() .. " --to-store-name " .. q(name))
    assert.are.equal(2, rc)
    assert.are.equal("", out)
    assert.matches("^pairstore: cannot migrate into [^\n]+ %(postgresql%): sessions " .. sid
      .. " of [^\n]+ %(file%) hold bytes that are not UTF%-8, which PostgreSQL cannot store %([^\n]+%);"
      .. " nothing was copied %[%a+%]\n$", err)
    assert.are.same({}, assert(pg():export()))
    assert.are.equal(#texts, #assert(fstore(f1):export()))
  end)

  it("names FROM or TO when a target cannot be parsed, and creates nothing", function()
    local bad = "postgresql://gw@[::1/ps"
    local rc, out, err = run("migrate " .. q(bad) .. " " .. q(dir .. "/to.json"))
    assert.are.same({ 2, "" }, { rc, out })
    assert.matches("^pairstore: FROM: [^\n]*invalid PostgreSQL target", err)
    rc, out, err = run("migrate " .. q(dir .. "/from.json") .. " " .. q(bad))
    assert.are.same({ 2, "" }, { rc, out })
    assert.matches("^pairstore: TO: [^\n]*invalid PostgreSQL target", err)
    assert.are.same({}, helpers.ls(dir))
  end)

  it("says so when FROM holds no sessions", function()
    local rc, out, err = run("migrate " .. q(dir .. "/none.json") .. " " .. PGT() .. " --to-store-name " .. q(name))
    assert.are.equal(0, rc)
    assert.matches("holds no sessions", err, 1, true)
    assert.matches("\n0 sessions: 0 added, 0 same\n$", out)
  end)
end)

-- Outside text on the operator's terminal ----------------------------------------------------

describe("bin/pairstore without its modules", function()
  it("says where they are looked for and how to run it from a tree (not a traceback)", function()
    local ok, out, rc = helpers.run("env -u PAIRSTORE_DEV LUA_PATH='/nonexistent/?.lua' LUA_CPATH='/nonexistent/?.so' "
      .. helpers.LUA .. " " .. q(BIN) .. " list")
    assert.is_false(ok)
    assert.are.equal(2, rc)
    assert.matches("^pairstore: the pairstore Lua modules are not installed where this Lua looks", out)
    assert.matches("PAIRSTORE_DEV=1 bin/pairstore", out, 1, true)
    assert.is_nil(out:find("traceback", 1, true), out)
  end)
end)

describe("bin/pairstore: outside text reaches stderr only escaped", function()
  after_each(helpers.cleanup)

  -- What a terminal would act on: C0 controls (but the line's end), DEL, C1 controls (UTF-8
  -- and raw), bidi embeddings, overrides and isolates, and bytes that are not UTF-8.
  local function assert_inert(text)
    assert.is_nil(text:gsub("\n$", ""):find("[%z\1-\31\127]"), "a control character: " .. text)
    assert.is_nil(text:find("\194[\128-\159]"), "a C1 control: " .. text)
    assert.is_nil(text:find("\226\128[\170-\174]"), "a bidi override: " .. text)
    assert.is_nil(text:find("\226\129[\166-\169]"), "a bidi isolate: " .. text)
    assert.is_not_nil(helpers.compat.utf8.len(text), "not UTF-8: " .. text)
  end

  local function hex(s)
    return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end))
  end

  it("a PostgreSQL server's error message (ESC ] 0 ; ... BEL, ESC [ 2J, CR, C1, bidi, bad UTF-8)", function()
    local dir = helpers.tmpdir()
    local message = 'role "gw\27]0;owned\7\27[2J\rx\194\155y\226\128\174z\226\129\168w\255" does not exist'
    -- (it accepts the connection and fails every query with that message)
    local p = io.popen("node " .. q(helpers.ROOT .. "/spec/support/fake_pg.mjs") .. " " .. q(dir) .. " " .. hex(message)
      .. " query >/dev/null 2>&1 & echo $!")
    local pid = tonumber(p:read("*l"))
    p:close()
    finally(function() helpers.kill(pid, "TERM") end)
    assert(helpers.wait_file(dir .. "/ready", nil, 20), "the fake server did not start")
    local target = "postgresql:///pairstore?host=" .. dir .. "&user=gw"
    for _, args in ipairs { "--store " .. q(target) .. " list", "--store " .. q(target) .. " create --url https://gw.example/p",
      "migrate " .. q(target) .. " " .. q(dir .. "/to.json") } do
      local _, out, err, rc = helpers.run_split(LUA .. " " .. args .. " </dev/null")
      assert.are.equal(2, rc, args)
      assert.are.equal("", out, args)
      assert_inert(err)
      assert.matches('role "gw\\e]0;owned\\x07\\e[2J\\rx\\u{009b}y\\u{202e}z\\u{2068}w\\xff" does not exist', err, 1, true)
    end
  end)

  it("a file path in an event (a corrupt file moved aside) and in an error", function()
    local dir = helpers.tmpdir() .. "/\27[2Jd\r\226\128\174"
    assert(helpers.run("mkdir " .. q(dir)))
    local file = dir .. "/s.json"
    helpers.write(file, "{not json")
    os.execute("chmod 600 " .. q(file))
    local _, out, err, rc = helpers.run_split(LUA .. " --file " .. q(file) .. " prune </dev/null")
    assert.are.equal(0, rc)
    assert.are.equal("pruned 0 sessions\n", out)
    assert_inert(err)
    assert.matches("moved aside to [^\n]*/\\e%[2Jd\\r\\u{202e}/s%.json%.corrupt%-%d+ %(it holds secrets", err)
    helpers.write(dir .. "/f", "")
    _, out, err, rc = helpers.run_split(LUA .. " --file " .. q(dir .. "/f/s.json") .. " list </dev/null")
    assert.are.equal(2, rc)
    assert.are.equal("", out)
    assert_inert(err)
    assert.matches("/\\e[2Jd\\r\\u{202e}/f", err, 1, true)
  end)
end)

describe("pairstore.cli.output.visible", function()
  local visible = require("pairstore.cli.output").visible

  it("escapes every C0 and C1 control, DEL, bidi embedding, override and isolate, and bad UTF-8", function()
    for b = 0, 31 do
      local v = visible(string.char(b))
      assert.matches("^\\", v)
      assert.is_nil(v:find("[%z\1-\31]"), b)
    end
    assert.are.equal("\\e]0;t\\x07\\e[2J\\r\\n\\t\\x7f", visible("\27]0;t\7\27[2J\r\n\t\127"))
    for cp = 0x80, 0x9f do
      assert.are.equal(string.format("\\u{%04x}", cp), visible(helpers.compat.utf8.char(cp)))
    end
    for _, cp in ipairs { 0x202a, 0x202b, 0x202c, 0x202d, 0x202e, 0x2066, 0x2067, 0x2068, 0x2069, 0x200e, 0x200f, 0x061c } do
      assert.are.equal(string.format("\\u{%04x}", cp), visible(helpers.compat.utf8.char(cp)))
    end
    -- bytes that are not UTF-8: stray continuation, truncated sequence, overlong, surrogate
    assert.are.equal("a\\x80b\\xe2\\x82c\\xc0\\xafd\\xed\\xa0\\x80", visible("a\128b\226\130c\192\175d\237\160\128"))
    -- printable text stays as it is; a backslash is doubled so that no escape is ambiguous
    assert.are.equal("café ✓ 日本 \\\\e", visible("café ✓ 日本 \\e"))
  end)
end)
