-- http_handler.lua: the HTTP side of a gateway, minus the HTTP server. Three handlers take
-- the decoded request and return status, body-table, mapping pairstore's outcomes to the
-- status codes of the reference gateway:
--
--   handler.start(store, { sid = ..., c = ... })          GET  /start?sid=&c=   (code check)
--   handler.respond(store, body, { on_payload = fn })     POST /respond {v,sid,pk_d,nonce,ct}
--   handler.status(store, { sid = ... })                   GET  /status?sid=
--
-- Use it from any server: require "http_handler" with examples/ on package.path (what
-- examples/nginx does: one copy of the mapping for both), or
-- local h = dofile("examples/http_handler.lua"). The server's log is handler.log(message):
-- io.stderr by default, replace it (examples/nginx sets ngx.log). Run as a script
-- (lua5.4 examples/http_handler.lua) it runs a self-test against a temp store and exits 0.
-- The handlers and the self-test run on Lua 5.1 and LuaJIT too (examples/nginx uses them there).

-- Run as a script from a source tree (after `make`): use the tree's lua/ and build/
-- (examples/lib). Embedded (nginx has no arg), the host's package paths are used as they are.
if type(arg) == "table" and type(arg[0]) == "string" then
  local here = arg[0]:match("^(.*)/[^/]*$") or "."
  local tree = loadfile(here .. "/lib/source_tree.lua")
  if tree then tree(here .. "/..") end
end

local pairstore = require "pairstore"

local handler = {}

--- Where the server's messages go (never to the phone): a function(message).
function handler.log(msg)
  io.stderr:write(msg, "\n")
end

-- A store failure (lock timeout, database away, I/O, ...) is the server's problem, never the
-- phone's; the message goes to the server log only. What may pass by itself (a lock or a
-- connection that was not had in time, a database that is away or failing over) is 503,
-- to be tried again later; the rest 500.
local TRY_LATER = { timeout = true, unavailable = true, busy = true }
local function store_failure(msg, code)
  handler.log("pairstore: " .. tostring(code) .. ": " .. tostring(msg))
  if TRY_LATER[code] then return 503, { error = "busy" } end
  return 500, { error = "internal" }
end
handler.store_failure = store_failure

local function is_sid(v) return type(v) == "string" and #v == 32 and v:match("^[0-9a-f]+$") ~= nil end

-- Code check (GET /start?sid=&c=).
local START = {
  bad_code = 400,            -- not 6 digits: no attempt counted
  not_found = 404,
  expired = 410, rejected = 410, already_consumed = 410, -- ended
  wrong_code = 403, attempts_exhausted = 403,             -- the 5th wrong code rejects it
  illegal_transition = 409,  -- a status this gateway does not know
}

function handler.start(store, query)
  if type(query) ~= "table" or not is_sid(query.sid) then return 400, { error = "bad_request" } end
  local code = query.c
  if type(code) ~= "string" or not code:match("^%d%d%d%d%d%d$") then return 400, { error = "bad_code" } end
  local s, msg, reason = store:verify_code(query.sid, code)
  if s then return 200, { status = s.status, mode = s.mode } end
  if START[reason] then return START[reason], { error = reason } end
  return store_failure(msg, reason)
end

-- The phone's response (POST /respond).
local RESPOND = {
  bad_request = 400,
  not_found = 404,
  expired = 410, rejected = 410,
  already_consumed = 409,
  not_device_connected = 409, -- the code was never checked: the session is now rejected
  decrypt_failed = 400,       -- the session is now rejected
}

-- opts.on_payload(plaintext, session) --> true | nil, message: the gateway's own work (for
-- instance importing the mnemonic). On success the session is marked completed; on failure
-- it is rejected, so the same payload cannot be replayed.
function handler.respond(store, body, opts)
  opts = opts or {}
  local sid = type(body) == "table" and body.sid
  if not is_sid(sid) then return 400, { error = "bad_request" } end
  local plaintext, s, reason = store:respond(sid, body, { aead = opts.aead })
  if not plaintext then
    if RESPOND[s] then return RESPOND[s], { error = s } end
    if s == "unsupported" then return 500, { error = "unsupported" } end
    return store_failure(s, reason)
  end
  local ok, why = true, nil
  if opts.on_payload then ok, why = opts.on_payload(plaintext, s) end
  plaintext = nil -- luacheck: ignore (drop our reference to the secret)
  if not ok then
    store:reject(sid)
    handler.log("pairstore: the gateway could not use the payload: " .. tostring(why))
    return 500, { error = "internal" }
  end
  local done, msg, code = store:transition(sid, "completed")
  if not done then return store_failure(msg, code) end
  return 200, { status = done.status }
end

-- The longest long-poll (GET /status?sid=&wait=SECONDS) a client may ask for.
handler.MAX_WAIT_S = 30

-- What the phone (or a web page) may poll (GET /status?sid=): no secrets, no code. With
-- wait=SECONDS (1 to MAX_WAIT_S) and since=STATUS (what the client last saw), it answers
-- once the status differs from since, or when the wait ends (the status as it is then).
function handler.status(store, query)
  if type(query) ~= "table" or not is_sid(query.sid) then return 400, { error = "bad_request" } end
  local wait = query.wait
  if wait ~= nil then
    wait = type(wait) == "string" and wait:match("^%d+$") and tonumber(wait)
    if not wait or wait < 1 or wait > handler.MAX_WAIT_S then return 400, { error = "bad_request" } end
  end
  local s, msg, reason = store:get(query.sid)
  local seen = s and (query.since or s.status)
  if s and wait and s.status == seen and not pairstore.is_terminal(s.status) then
    local deadline = pairstore.mono_ms() + wait * 1000
    repeat
      local left = deadline - pairstore.mono_ms()
      if left <= 0 then break end
      local now, wmsg, wreason = store:wait(query.sid, { timeout_ms = left, since = s })
      if now then
        s = now -- (a change that leaves the status as it was: wait on)
      elseif wreason ~= "timeout" then
        s, msg, reason = nil, wmsg, wreason
      else
        break
      end
    until not s or s.status ~= seen
  end
  if not s then
    if reason == "not_found" then return 404, { error = "not_found" } end
    return store_failure(msg, reason)
  end
  local left = math.max(0, s.expiresAtMs - store:now())
  return 200, { status = s.status, mode = s.mode, expires_in_ms = pairstore.is_terminal(s.status) and 0 or left }
end

-- Self-test ------------------------------------------------------------------------------------

local function self_test()
  local crypto = require "pairstore.crypto"
  local tmp = io.popen("mktemp -d /tmp/pairstore-http.XXXXXX"):read("*l")
  local t = 1764300000000
  local store = pairstore.open(tmp .. "/pair-sessions.json", { now = function() return t end })
  local aead = crypto.aead_available("aes-256-gcm") and "aes-256-gcm" or "chacha20-poly1305"
  local failures = 0

  -- want: the expected body.error, or body.status for a 200.
  local function expect(what, want_status, want, status, body)
    local good = status == want_status and (body.error or body.status) == want
    if not good then failures = failures + 1 end
    print(string.format("%-4s %-58s -> %d %s", good and "ok" or "FAIL", what, status,
      body.error or body.status or ""))
  end

  local function sealed(s, plaintext)
    local box = assert(crypto.seal { pk_gateway = s.pkGatewayB64, sid = s.sid, plaintext = plaintext, aead = aead })
    return { v = 1, sid = s.sid, pk_d = box.pk_d, nonce = box.nonce, ct = box.ct }
  end
  local function wrong(code) return code == "000000" and "999999" or "000000" end

  local run = function()
    -- The happy path.
    local s = assert(store:create { operator = { channel = "web" } })
    expect("start: code not 6 digits", 400, "bad_code", handler.start(store, { sid = s.sid, c = "12ab" }))
    expect("start: unknown sid", 404, "not_found", handler.start(store, { sid = ("0"):rep(32), c = "123456" }))
    expect("start: wrong code", 403, "wrong_code", handler.start(store, { sid = s.sid, c = wrong(s.secondaryCode) }))
    expect("start: right code", 200, "device_connected", handler.start(store, { sid = s.sid, c = s.secondaryCode }))
    expect("status: device_connected", 200, "device_connected", handler.status(store, { sid = s.sid }))
    expect("respond: malformed body", 400, "bad_request", handler.respond(store, { v = 1, sid = s.sid, pk_d = "x" }))
    local got
    local body = sealed(s, "legal winner thank year wave sausage worth useful legal winner thank yellow")
    expect("respond: sealed mnemonic", 200, "completed", handler.respond(store, body, {
      aead = aead, on_payload = function(p) got = p; return true end,
    }))
    assert(got and got:match("^legal winner"), "the payload did not reach on_payload")
    expect("respond: the same body again", 409, "already_consumed", handler.respond(store, body, { aead = aead }))
    expect("start: after completion", 410, "already_consumed", handler.start(store, { sid = s.sid, c = s.secondaryCode }))

    -- Five wrong codes.
    local s2 = assert(store:create {})
    for _ = 1, 4 do handler.start(store, { sid = s2.sid, c = wrong(s2.secondaryCode) }) end
    expect("start: 5th wrong code", 403, "attempts_exhausted", handler.start(store, { sid = s2.sid, c = wrong(s2.secondaryCode) }))
    expect("start: after lockout", 410, "rejected", handler.start(store, { sid = s2.sid, c = s2.secondaryCode }))
    expect("respond: to a rejected session", 410, "rejected", handler.respond(store, sealed(s2, "x y z"), { aead = aead }))

    -- Responding without the code check rejects the session.
    local s3 = assert(store:create {})
    expect("respond: code never checked", 409, "not_device_connected", handler.respond(store, sealed(s3, "a b c"), { aead = aead }))
    expect("status: now rejected", 200, "rejected", handler.status(store, { sid = s3.sid }))

    -- A payload that does not decrypt rejects the session.
    local s4 = assert(store:create {})
    handler.start(store, { sid = s4.sid, c = s4.secondaryCode })
    local other = assert(store:create {})
    local b4 = sealed(other, "sealed for another session")
    b4.sid = s4.sid
    expect("respond: does not decrypt", 400, "decrypt_failed", handler.respond(store, b4, { aead = aead }))

    -- Expiry (the store's clock is ours).
    local s5 = assert(store:create {})
    t = t + pairstore.DEFAULT_TTL_MS + 1
    expect("start: expired session", 410, "expired", handler.start(store, { sid = s5.sid, c = s5.secondaryCode }))
    expect("respond: expired session", 410, "expired", handler.respond(store, sealed(s5, "late"), { aead = aead }))
    expect("status: unknown sid", 404, "not_found", handler.status(store, { sid = ("f"):rep(32) }))
  end

  local ok, err = pcall(run)
  store:close()
  os.execute("rm -rf '" .. tmp .. "'")
  if not ok then
    io.stderr:write("http_handler.lua: ", tostring(err), "\n")
    return false
  end
  print(failures == 0 and "all checks passed" or (failures .. " check(s) failed"))
  return failures == 0
end

-- Required or loaded with dofile: the handlers. Run as a script: the self-test.
if ... ~= "http_handler" and type(arg) == "table" and type(arg[0]) == "string"
  and arg[0]:match("http_handler%.lua$") and not package.loaded["http_handler"] then
  os.exit(self_test() and 0 or 1)
end

return handler
