-- Specs for the operator CLI: the real bin/pairstore run in child processes against a temp
-- sessions file. Every run is checked for leaked secrets: no output may contain a gateway
-- secret key, and only `create` may print a 6-digit code.
local pairstore = require "pairstore"
local crypto = require "pairstore.crypto"
local helpers = require "helpers"
local q = helpers.sh_quote
local json = helpers.json

local BIN = helpers.ROOT .. "/bin/pairstore"
local LUA = helpers.LUA_ENV .. " timeout 60 lua5.4 " .. q(BIN)
-- Without `timeout`, which would move the CLI into a process group of its own (the live
-- view specs signal the group, as a terminal does); those specs bound their waits instead.
local LUA_FG = helpers.LUA_ENV .. " lua5.4 " .. q(BIN)
local AEAD = crypto.aead_available("aes-256-gcm") and "aes-256-gcm" or "chacha20-poly1305"

local function unhex(s)
  return (s:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end

local function lines(s)
  local t = {}
  for l in (s .. "\n"):gmatch("([^\n]*)\n") do t[#t + 1] = l end
  if t[#t] == "" then t[#t] = nil end
  return t
end

describe("bin/pairstore", function()
  local dir, file
  local keys, codes -- every secret key and code seen in the file during the test

  local function collect()
    local text = helpers.read(file)
    if not text then return end
    local ok, doc = pcall(json.decode, text)
    if not ok or type(doc) ~= "table" or type(doc.sessions) ~= "table" then return end
    for _, s in ipairs(doc.sessions) do
      if type(s.skGatewayB64) == "string" then keys[s.skGatewayB64] = true end
      if type(s.secondaryCode) == "string" then codes[s.secondaryCode] = true end
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

  -- Runs the CLI; returns exit code, stdout, stderr. opts.nofile: no --file; opts.env: prefix.
  local function cli(args, opts)
    opts = opts or {}
    collect()
    local cmd = (opts.env or "") .. " " .. LUA
    if not opts.nofile then cmd = cmd .. " --file " .. q(file) end
    local _, out, err, rc = helpers.run_split(cmd .. " " .. args .. " </dev/null")
    collect()
    local is_create = args:match("^create") ~= nil
    assert_no_secrets(out, is_create)
    assert_no_secrets(err, is_create)
    return rc, out, err
  end

  local function store(extra)
    local o = { durable = false }
    for k, v in pairs(extra or {}) do o[k] = v end
    return pairstore.open(file, o)
  end

  before_each(function()
    dir = helpers.tmpdir()
    file = dir .. "/pair-sessions.json"
    keys, codes = {}, {}
  end)
  after_each(helpers.cleanup)

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
      assert.are.equal(pairstore.pairing_url("https://pair.example/pair", s), url)
      assert.are.equal("generate", s.mode)
      assert.are.equal("cli", s.operatorContext.channel)
      assert.are.equal(pairstore.DEFAULT_TTL_MS, s.expiresAtMs - s.createdAtMs)
      assert.matches("\u{2588}\u{2588}\u{2588}\u{2588}", out)
      local qr_lines = 0
      for _, l in ipairs(lines(out)) do
        if l:match("^\u{2588}") or l:match("^\u{2580}") then qr_lines = qr_lines + 1 end
      end
      local width = assert(require("pairstore.qr").matrix(url)).width
      assert.are.equal((width + 4 + 1) // 2, qr_lines)
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
      assert.is_nil(out:find("\u{2588}", 1, true))
    end)

    it("clamps --ttl to the allowed range and says so on stderr", function()
      local rc, out, err = cli("create --ttl 10")
      assert.are.equal(0, rc)
      assert.matches("note: %-%-ttl 10 is outside 300%.%.3600 seconds; using 300", err)
      local s = assert(store():get(out:match("sid:%s+(%x+)")))
      assert.are.equal(300000, s.expiresAtMs - s.createdAtMs)
    end)

    it("rejects bad option values with usage on stderr and exit code 2", function()
      for _, args in ipairs { "create --ttl abc", "create --ttl -5", "create --mode other", "create --bogus" } do
        local rc, out, err = cli(args)
        assert.are.equal(2, rc, args)
        assert.are.equal("", out, args)
        assert.matches("Usage: pairstore create", err, 1, true)
        assert.matches("Error: ", err, 1, true)
      end
      assert.is_nil(helpers.read(file))
    end)
  end)

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
      assert.are.same({ "pair-sessions.json" }, helpers.ls(dir))
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
    it("go to stderr with exit code 2", function()
      for _, args in ipairs { "", "bogus", "show", "reject", "list --nope", "watch" } do
        local rc, out, err = cli(args)
        assert.are.equal(2, rc, args)
        assert.are.equal("", out, args)
        assert.matches("Error: ", err, 1, true)
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
      pgid = helpers.spawn_group(LUA_FG .. " --file " .. q(file) .. " " .. args, out, err, rcfile)
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
      -- A terminal sends SIGINT to its whole foreground process group. That is what works:
      -- during each poll's `sleep` lua5.4 ignores SIGINT (system() does), so a signal to the
      -- lua pid alone is lost; the sleep receiving it is how the CLI notices.
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
        feeder, q(LUA_FG .. " --file " .. q(file) .. " create --wait"), q(out), q(rcfile))
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
  end)
end)
