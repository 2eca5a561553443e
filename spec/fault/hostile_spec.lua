-- Hostile files and a hostile file system (issue 3, item 7; issue 11, section 3): every nasty
-- sessions file is either loaded (invalid entries dropped, with an event) or corrupt: reads
-- fail with code "corrupt" and leave it exactly as it was, and the first write moves it to
-- <path>.corrupt-<ms> (the original bytes, mode kept, a "corrupt" event); a file of another
-- format version is never moved (code "unsupported_version"); never a crash, a hang or a
-- secret in a message;
-- symlinks, FIFOs and directories planted at the sessions path, the sentinel path and the temp
-- prefixes give clean errors (or are left alone) and a victim file outside is never written;
-- umask 0000 and 0277 change no mode; a pre-existing 0644 file comes back 0600.
-- PAIRSTORE_HOSTILE_BIG_MB sets the size of the oversized file (default 50; the sanitizer runs
-- use a smaller one).
local pairstore = require "pairstore"
local H = require "fault.harness"

local json = H.json
local T0 = 1764300000000
local BIG_MB = tonumber(os.getenv("PAIRSTORE_HOSTILE_BIG_MB")) or 50
-- The runtime under test (`make test LUA=...`), against its build.
local compat = require "pairstore.compat"
local LUA = os.getenv("PAIRSTORE_TEST_LUA") or compat.runtime
local LUA_ENV = string.format("LUA_PATH=%s LUA_CPATH=%s",
  H.q(os.getenv("LUA_PATH") or "lua/?.lua;lua/?/init.lua;;"), H.q(os.getenv("LUA_CPATH") or "build/" .. LUA .. "/?.so;;"))

-- A session as the reference writes it, with the canary key and code in it.
local function session(over)
  local s = {
    sid = "0123456789abcdef0123456789abcdef", skGatewayB64 = H.CANARY_KEY_B64,
    pkGatewayB64 = "aciViA89s8Wv1GD7HqJJoEO7h4vnbm3DN4LcqZoEvTY", createdAtMs = T0,
    expiresAtMs = T0 + 900000, secondaryCode = H.CANARY_CODE, secondaryCodeAttempts = 0,
    operatorContext = { channel = "cli" }, mode = "generate", status = "awaiting_scan",
    lastStatusChangeAtMs = T0,
  }
  for k, v in pairs(over or {}) do s[k] = v end
  return s
end

local KEYS = { "sid", "skGatewayB64", "pkGatewayB64", "createdAtMs", "expiresAtMs", "secondaryCode",
  "secondaryCodeAttempts", "operatorContext", "mode", "status", "lastStatusChangeAtMs" }

-- Compact JSON in the reference's key order; `raw` replaces the value text of some keys.
local function session_json(over, raw)
  local s = session(over)
  local parts = {}
  for _, k in ipairs(KEYS) do
    local v = raw and raw[k] or (s[k] ~= nil and json.encode(s[k]) or nil)
    if v then parts[#parts + 1] = '"' .. k .. '":' .. v end
  end
  for k, v in pairs(raw or {}) do
    local known = false
    for _, kk in ipairs(KEYS) do if kk == k then known = true end end
    if not known then parts[#parts + 1] = '"' .. k .. '":' .. v end
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

local GOOD_SID = "fedcba9876543210fedcba9876543210"
local function file_with(entry_json)
  -- one good session plus the entry under test
  return '{"version":1,"sessions":[' .. session_json({ sid = GOOD_SID }) .. "," .. entry_json .. "]}"
end

local function nested(depth, inner)
  return string.rep("[", depth) .. (inner or "1") .. string.rep("]", depth)
end

-- outcome: "refused" (not moved: it does not begin like a JSON object), "loaded" (both
-- sessions), "dropped" (the entry dropped, the good one kept, an
-- invalid_dropped event), "quarantined" (reads fail with "corrupt", the first write moves it
-- aside), "unsupported" (another format version: reads and writes fail, nothing moved), or
-- "either" (loaded or quarantined, checked for consistency).
local CASES = {
  { "empty file", "", "quarantined" },
  { "only whitespace", "  \n\t ", "quarantined" },
  { "not JSON", "hello " .. H.CANARY_KEY_B64, "refused" },
  { "truncated after the secret", file_with(session_json()):sub(1, 200), "quarantined" },
  { "BOM before the JSON", "\239\187\191" .. file_with(session_json()), "refused" },
  { "NUL byte after the JSON", file_with(session_json()) .. "\0", "quarantined" },
  { "NUL byte inside a string", file_with(session_json(nil, { status = '"awaiting\0scan"' })), "either" },
  { "escaped NUL inside a string", file_with(session_json(nil, { extra = '"a\\u0000b"' })), "loaded" },
  { "invalid UTF-8 in a string", file_with(session_json(nil, { operatorContext = '{"channel":"\255\254\128"}' })), "either" },
  { "overlong UTF-8 in a key", file_with(session_json(nil, { ["\192\175x"] = "1" })), "either" },
  { "lone surrogate escape", file_with(session_json(nil, { extra = '"\\ud800"' })), "loaded" },
  { "deep nesting at top level", nested(100000), "refused" },
  { "deep nesting inside sessions", '{"version":1,"sessions":' .. nested(5000) .. "}", "quarantined" },
  { "nesting 40 deep inside an extra field", file_with(session_json(nil, { extra = nested(40) })), "loaded" },
  { "nesting beyond the bound inside an extra field", file_with(session_json(nil, { extra = nested(600) })), "quarantined" },
  { "1e999 as a timestamp", file_with(session_json(nil, { createdAtMs = "1e999" })), "quarantined" },
  { "-1e999 in an extra field", file_with(session_json(nil, { extra = "-1e999" })), "quarantined" },
  { "NaN as a timestamp", file_with(session_json(nil, { expiresAtMs = "NaN" })), "quarantined" },
  { "Infinity as attempts", file_with(session_json(nil, { secondaryCodeAttempts = "Infinity" })), "quarantined" },
  { "hex number", file_with(session_json(nil, { secondaryCodeAttempts = "0x10" })), "quarantined" },
  -- Any finite number where the reference's validator wants a number (it accepts them too).
  { "huge integer timestamp", file_with(session_json(nil, { createdAtMs = "123456789012345678901234567890" })), "loaded" },
  { "2^63 as attempts", file_with(session_json(nil, { secondaryCodeAttempts = "9223372036854775808" })), "loaded" },
  { "2^63-1 as expiry", file_with(session_json(nil, { expiresAtMs = "9223372036854775807" })), "loaded" },
  { "fractional timestamp", file_with(session_json(nil, { createdAtMs = "1764300000000.5" })), "loaded" },
  { "1e15 timestamp (integral float)", file_with(session_json(nil, { createdAtMs = "1.7643e12" })), "loaded" },
  { "duplicate keys in a session", file_with(session_json(nil, { status = '"rejected","status":"awaiting_scan"' })), "loaded" },
  { "duplicate version key", '{"version":2,"version":1,"sessions":[' .. session_json() .. "]}", "either" },
  { "version 2 (a newer format)", '{"version":2,"sessions":[]}', "unsupported" },
  { "version 2 with another shape", '{"version":2,"data":{"sessions":"elsewhere"}}', "unsupported" },
  { "version 1.5", '{"version":1.5,"sessions":[]}', "unsupported" },
  { "duplicate sids", '{"version":1,"sessions":[' .. session_json() .. "," .. session_json() .. "]}", "either" },
  { "version as a string", '{"version":"1","sessions":[]}', "quarantined" },
  { "sessions an object", '{"version":1,"sessions":{"a":1}}', "quarantined" },
  { "sessions null", '{"version":1,"sessions":null}', "quarantined" },
  { "sessions sparse array with null", '{"version":1,"sessions":[null,' .. session_json() .. "]}", "either" },
  { "top level an array", "[" .. session_json() .. "]", "refused" },
  { "top level a string", '"' .. H.CANARY_KEY_B64 .. '"', "refused" },
  { "a session that is a string", file_with('"' .. H.CANARY_KEY_B64 .. '"'), "dropped" },
  { "secondaryCode 5 digits", file_with(session_json({ secondaryCode = "42424" })), "dropped" },
  { "mode unknown", file_with(session_json({ mode = "steal" })), "dropped" },
  { "status unknown (kept, non-terminal)", file_with(session_json({ status = "future_status" })), "loaded" },
  { "empty sid", file_with(session_json({ sid = "" })), "dropped" },
  { "unknown extra fields", file_with(session_json(nil, { zzz = '{"a":[1,2,{"b":null}]}' })), "loaded" },
  { "absent operatorContext", file_with(session_json(nil, { operatorContext = "" }):gsub(',"operatorContext":', "")), "dropped" },
}

-- Wrong type in each field: each wrong value makes the entry invalid.
local WRONG = { '"string"', "42", "true", "null", "[]", "{}" }
local VALID_TYPE = {
  sid = "string", skGatewayB64 = "string", pkGatewayB64 = "string", createdAtMs = "number",
  expiresAtMs = "number", secondaryCode = "string", secondaryCodeAttempts = "number",
  operatorContext = "object", mode = "string", status = "string", lastStatusChangeAtMs = "number",
}
local WRONG_TYPE = { ['"string"'] = "string", ["42"] = "number", ["true"] = "boolean", ["null"] = "null",
  ["[]"] = "array", ["{}"] = "object" }
for _, k in ipairs(KEYS) do
  for _, w in ipairs(WRONG) do
    local t = WRONG_TYPE[w]
    -- an empty JSON array decodes to the same Lua table as an object
    local ok_type = t == VALID_TYPE[k] or (VALID_TYPE[k] == "object" and t == "array")
    if not ok_type then
      CASES[#CASES + 1] = { "wrong type in " .. k .. ": " .. w, file_with(session_json(nil, { [k] = w })), "dropped" }
    end
  end
end

local function no_secret(what, text)
  local leak = H.leak(text or "")
  assert.is_nil(leak, what .. " leaks: " .. tostring(text))
end

describe("hostile sessions files", function()
  local dir, path, events, store

  local function open()
    events = {}
    store = pairstore.open(path, {
      now = function() return T0 + 1000 end,
      rng = H.canary_rng(),
      durable = false,
      on_event = function(name, info) events[#events + 1] = { name = name, info = info } end,
    })
  end

  local function corrupt_files()
    local t = {}
    for _, n in ipairs(H.ls(dir)) do
      if n:match("^pair%-sessions%.json%.corrupt%-%d+") then t[#t + 1] = n end
    end
    return t
  end

  local function event(name)
    for _, e in ipairs(events) do if e.name == name then return e end end
  end

  local function check_events()
    for _, e in ipairs(events) do
      for k, v in pairs(e.info) do no_secret("event " .. e.name .. "." .. k, tostring(v)) end
    end
  end

  before_each(function()
    dir = H.tmpdir("hostile")
    path = dir .. "/pair-sessions.json"
  end)
  after_each(function() H.rmrf(dir) end)

  for _, case in ipairs(CASES) do
    local name, content, outcome = case[1], case[2], case[3]
    it(name .. ": " .. outcome, function()
      H.write(path, content)
      os.execute("chmod 0600 " .. H.q(path)) -- as both implementations write it: plausibly ours
      open()
      local t0 = os.time()
      local list, msg, code = store:list_all()
      no_secret("list_all error", msg)
      local got
      if list == nil then
        -- A read never moves, chmods or rewrites what it cannot parse.
        assert.is_truthy(code == "corrupt" or code == "unsupported_version", tostring(code) .. " " .. tostring(msg))
        assert.matches(path:gsub("%p", "%%%0"), msg)
        assert.are.equal(content, H.read(path), "a read changed the file")
        assert.are.equal("600", H.mode(path))
        assert.are.same({}, corrupt_files())
        assert.is_nil(event("corrupt"))
        local g, gmsg, gcode = store:get(GOOD_SID)
        no_secret("get", gmsg)
        assert.is_nil(g)
        assert.are.equal(code, gcode)
        assert.are.equal(content, H.read(path), "get changed the file")
        -- A write moves a corrupt file aside; a file of another version stays, writes fail.
        local created, cmsg, ccode = store:create { operator = { channel = "hostile" } }
        no_secret("create error", cmsg)
        if code == "corrupt" and ccode == "corrupt" then
          -- not plausibly a sessions file (it does not begin like a JSON object): never moved
          got = "refused"
          assert.is_nil(created)
          assert.matches("does not begin like one", cmsg)
          assert.are.equal(content, H.read(path), "a write moved or changed a file that is not ours")
          assert.are.same({}, corrupt_files())
        elseif code == "unsupported_version" then
          got = "unsupported"
          assert.is_nil(created)
          assert.are.equal("unsupported_version", ccode)
          assert.are.equal(content, H.read(path), "a write moved or changed a file of another version")
          assert.are.same({}, corrupt_files())
        else
          got = "quarantined"
          assert.is_table(created, "create after a corrupt file failed: " .. tostring(cmsg))
          local q = corrupt_files()
          assert.are.equal(1, #q, "one quarantine file")
          local ev = event("corrupt")
          assert.is_table(ev, "quarantined without a corrupt event")
          assert.are.equal(dir .. "/" .. q[1], ev.info.path)
          assert.are.equal(content, H.read(dir .. "/" .. q[1]), "quarantine must move the bytes as they were")
          assert.are.equal("600", H.mode(dir .. "/" .. q[1]))
          assert.are.equal(1, #store:list_all())
        end
      else
        assert.are.same({}, corrupt_files(), "several quarantine files")
        assert.is_nil(event("corrupt"))
        local sids = {}
        for _, s in ipairs(list) do sids[s.sid] = true end
        if #list == 1 and sids[GOOD_SID] then
          got = "dropped"
          assert.is_table(event("invalid_dropped"), "an entry was dropped without an event")
        elseif #list >= 1 then
          got = "loaded"
        else
          got = "emptied"
        end
        -- Every entry that was kept has the shape of a session.
        for _, s in ipairs(list) do
          assert.are.equal("string", type(s.sid))
          assert.are.equal("number", type(s.createdAtMs))
          assert.are.equal("number", type(s.secondaryCodeAttempts))
        end
        -- get and a mutation work afterwards, and write a file that loads back.
        local _, gmsg = store:get(GOOD_SID)
        no_secret("get", gmsg)
        local created, cmsg = store:create { operator = { channel = "hostile" } }
        no_secret("create error", cmsg)
        assert.is_table(created, "create after a hostile file failed: " .. tostring(cmsg))
        local back = store:list_all()
        assert.is_table(back)
        assert.are.equal(#list + 1, #back)
      end
      if os.getenv("HOSTILE_VERBOSE") then print(name .. " -> " .. got) end
      if outcome == "either" then
        assert.is_truthy(got == "loaded" or got == "quarantined" or got == "dropped", got)
      else
        assert.are.equal(outcome, got)
      end
      assert.is_true(os.time() - t0 < 20, "took too long")
      check_events()
      store:close()
      if got ~= "unsupported" and got ~= "refused" then
        -- The rewritten file loads back whole (pairstore reads what JSON.parse reads).
        local again = pairstore.open(path, { now = function() return T0 + 1000 end })
        local reread, rmsg = again:list_all()
        again:close()
        assert.is_table(reread, "the rewritten file does not load: " .. tostring(rmsg))
      end
    end)
  end

  it("a " .. BIG_MB .. " MB file is refused by reads and writes alike (limit), without being read or moved", function()
    os.execute(string.format("head -c %d /dev/zero | tr '\\0' ' ' > %s", BIG_MB * 1024 * 1024, H.q(path)))
    os.execute("chmod 0600 " .. H.q(path))
    open()
    local t0 = os.clock()
    local list, msg, code = store:list_all()
    assert.is_nil(list)
    assert.are.equal("limit", code)
    assert.matches("larger than max_file_bytes", msg)
    assert.is_true(os.clock() - t0 < 1.0, "the size cap must apply before reading")
    t0 = os.clock()
    local r, _, code2 = store:prune()
    assert.is_nil(r)
    assert.are.equal("limit", code2)
    assert.are.equal(0, #corrupt_files())
    assert.is_nil(event("corrupt"))
    assert.is_true(os.clock() - t0 < 1.0, "the size cap must apply before reading")
    check_events()
  end)

  it("a file just over max_file_bytes is refused (another store may allow it), one at the cap is read", function()
    local content = file_with(session_json())
    H.write(path, content)
    os.execute("chmod 0600 " .. H.q(path))
    events = {}
    local s = pairstore.open(path, { max_file_bytes = #content, now = function() return T0 end,
      on_event = function(n, i) events[#events + 1] = { name = n, info = i } end })
    assert.are.equal(2, #s:list_all())
    H.write(path, content .. " ")
    local _, _, code = s:list_all()
    assert.are.equal("limit", code)
    local _, _, code2 = s:create {}
    assert.are.equal("limit", code2)
    assert.are.equal(0, #corrupt_files())
    assert.are.equal(content .. " ", H.read(path))
  end)
end)

describe("a hostile file system", function()
  local dir, path, victim, victim_content
  before_each(function()
    dir = H.tmpdir("hostilefs")
    os.execute("mkdir -p " .. H.q(dir .. "/d"))
    path = dir .. "/d/pair-sessions.json"
    victim = dir .. "/victim"
    victim_content = "victim content, must never change\n"
    H.write(victim, victim_content)
    os.execute("chmod 0644 " .. H.q(victim))
  end)
  after_each(function()
    assert.are.equal(victim_content, H.read(victim), "the victim outside the directory was written")
    assert.are.equal("644", H.mode(victim))
    H.rmrf(dir)
  end)

  local function store(opts)
    opts = opts or {}
    opts.lock_wait_ms = opts.lock_wait_ms or 1500
    opts.rng = H.canary_rng()
    return pairstore.open(path, opts)
  end

  local function expect_clean_error(fn, what)
    local t0 = os.time()
    local r, msg, code = fn()
    assert.is_nil(r, what .. " must fail")
    assert.are.equal("string", type(msg))
    assert.are.equal("io", code, what .. ": " .. tostring(msg))
    no_secret(what, msg)
    assert.is_true(os.time() - t0 <= 3, what .. " hung")
    return msg
  end

  local PLANTS = {
    symlink = function(p) os.execute("ln -s " .. H.q(victim) .. " " .. H.q(p)) end,
    ["dangling symlink"] = function(p) os.execute("ln -s " .. H.q(dir .. "/nowhere") .. " " .. H.q(p)) end,
    fifo = function(p) os.execute("mkfifo " .. H.q(p)) end,
    directory = function(p) os.execute("mkdir " .. H.q(p)) end,
  }

  for kind, plant in pairs(PLANTS) do
    it(kind .. " at the sessions path: clean error, nothing followed", function()
      plant(path)
      local s = store()
      expect_clean_error(function() return s:list_all() end, "list_all")
      expect_clean_error(function() return s:create {} end, "create")
      s:close()
      assert.are.same({ "pair-sessions.json" }, H.ls(dir .. "/d"))
    end)

    it(kind .. " at the sentinel path: clean error, no hang, not removed", function()
      plant(path .. ".lock")
      local s = store({ lock_stale_ms = 1 })
      expect_clean_error(function() return s:create {} end, "create")
      assert.are.same({ "pair-sessions.json.lock" }, H.ls(dir .. "/d"))
    end)

    it(kind .. " at the temp, candidate, parked and break prefixes: left alone, writes still work", function()
      local names = { "pair-sessions.json.tmp-1-0000000000000000", "pair-sessions.json.tmp-",
        "pair-sessions.json.lock.new-0000000000000000", "pair-sessions.json.lock.break-0000000000000000",
        "pair-sessions.json.lock.idle-0000000000000000" }
      for _, n in ipairs(names) do plant(dir .. "/d/" .. n) end
      local s = store()
      local created, msg = s:create {}
      assert.is_table(created, msg)
      assert.is_table(s:get(created.sid))
      local want = { "pair-sessions.json" }
      for _, n in ipairs(names) do want[#want + 1] = n end
      table.sort(want)
      s:close()
      assert.are.same(want, H.ls(dir .. "/d"))
      assert.are.equal("600", H.mode(path))
    end)
  end

  it("a symlinked sentinel pointing at the victim is never truncated or broken", function()
    os.execute("ln -s " .. H.q(victim) .. " " .. H.q(path .. ".lock"))
    os.execute("touch -h -d '2 hours ago' " .. H.q(path .. ".lock"))
    local s = store({ lock_stale_ms = 1 })
    expect_clean_error(function() return s:create {} end, "create")
    assert.is_true(compat.execute("test -L " .. H.q(path .. ".lock")) == true)
  end)

  it("a hard link of the victim as the sessions file is neither moved nor written through", function()
    os.execute("ln " .. H.q(victim) .. " " .. H.q(path))
    -- not JSON, but not plausibly ours (0644, two links): nothing moved, nothing written
    local s = store()
    local created, msg, code = s:create {}
    assert.is_nil(created)
    assert.are.equal("corrupt", code)
    assert.matches("left as it is", msg)
    s:close()
    assert.are.same({ "pair-sessions.json" }, H.ls(dir .. "/d"))
    assert.are.equal(victim_content, H.read(path))
    -- even at 0600 (on a copy: after_each checks the victim's mode)
    local v2 = dir .. "/victim600"
    H.write(v2, "not json\n")
    os.execute("chmod 0600 " .. H.q(v2) .. " && rm -f " .. H.q(path) .. " && ln " .. H.q(v2) .. " " .. H.q(path))
    s = store()
    created, msg, code = s:create {}
    assert.is_nil(created)
    assert.are.equal("corrupt", code)
    assert.matches("2 hard links", msg)
    assert.are.equal("not json\n", H.read(path))
    s:close()
  end)

  it("a pre-existing 0644 file comes back 0600 after a write", function()
    local s = store()
    assert.is_table(s:create {})
    os.execute("chmod 0644 " .. H.q(path))
    assert.are.equal("644", H.mode(path))
    assert.is_table(s:create {})
    assert.are.equal("600", H.mode(path))
  end)

  local function umask_run(mask, user)
    local d = dir .. "/u" .. mask .. "/a/b"
    local p = d .. "/pair-sessions.json"
    local cmd = string.format("umask %s; %s %s spec/fault/one_op.lua %s seed && %s %s spec/fault/one_op.lua %s incr && %s %s spec/fault/one_op.lua %s list",
      mask, LUA_ENV, LUA, H.q(p), LUA_ENV, LUA, H.q(p), LUA_ENV, LUA, H.q(p))
    if user then
      -- from a copy of the tree the user may read (the clone may sit in a 0700 directory)
      local helpers = require "helpers"
      finally(helpers.cleanup)
      local tree, env = helpers.readable_tree()
      cmd = string.format("cd %s && umask %s; %s %s spec/fault/one_op.lua %s seed && %s %s spec/fault/one_op.lua %s incr && %s %s spec/fault/one_op.lua %s list",
        H.q(tree), mask, env, LUA, H.q(p), env, LUA, H.q(p), env, LUA, H.q(p))
      os.execute("mkdir -p " .. H.q(dir .. "/u" .. mask) .. " && chown " .. user .. " " .. H.q(dir .. "/u" .. mask))
      os.execute("chmod 0755 " .. H.q(dir))
      cmd = "setpriv --reuid=" .. user .. " --regid=" .. user .. " --clear-groups -- sh -c " .. H.q(cmd)
    end
    local ok, out = H.sh(cmd)
    assert.is_true(ok, out)
    assert.are.equal("ok 1", out:match("ok %d+\n*$") and out:match("(ok %d+)\n[^\n]*$") or out:match("ok 1"))
    assert.are.equal("600", H.mode(p))
    assert.are.equal("700", H.mode(dir .. "/u" .. mask .. "/a"))
    assert.are.equal("700", H.mode(d))
    assert.are.same({ "pair-sessions.json" }, H.ls(d))
  end

  it("umask 0000 changes no mode (file 0600, new directories 0700)", function() umask_run("0000") end)
  it("umask 0277 changes no mode and does not lock the store out", function() umask_run("0277") end)
  it("umask 0277 as an unprivileged user (permissions really apply)", function()
    if not H.sh("test $(id -u) = 0 && command -v setpriv") then
      pending("needs root and setpriv to switch to an unprivileged user")
      return
    end
    umask_run("0277", "65534")
  end)
end)
