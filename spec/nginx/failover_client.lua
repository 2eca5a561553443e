--- spec/nginx/failover_client.lua — one HTTP client of make test-nginx's failover
-- (spec/nginx/failover.lua), the nginx example's routes what spec/ha/client.lua is to the
-- library: its log is the same, so spec/ha/check.lua checks both.
--
--   failover_client.lua ID WORK        (NGX_PORT, NGX_OPERATOR_PORT: the example's servers)
--
-- Loops until WORK/stop appears (or WORK/running goes, or 90 s at most): POST /pair/new (operator), GET
-- /pair/start with a wrong code, then the right one, POST /pair/respond (a sealed payload:
-- consumes the session, then the gateway marks it completed; sent only once the right code
-- was acknowledged, as a phone would: a response before it rejects the session); every third step it also
-- responds to a session another client connected (its log's right code), so that consumes
-- of one sid race across clients. Each answer is logged to WORK/logs/ID as it comes, in
-- client.lua's format (phase op sid ok|err code detail), the HTTP answer mapped to the
-- store's outcome:
--   2xx                  ok
--   4xx                  err, the body's error (wrong_code, already_consumed, ...)
--   503                  err unavailable: the store said unavailable, timeout or busy, which
--                        apply nothing (http_handler.lua)
--   500, no answer       err outcome_unknown (the store's outcome_unknown is a 500); for a
--                        response any 5xx: it is two writes (respond, then the transition to
--                        completed), the first of which may have been applied
-- A create that fails has no sid to log ("-"). After outcome_unknown the client reads the
-- session back (GET /pair/status, until it answers) and logs a `resolve` line.
-- Writes WORK/done-ID when it stops.
local crypto = require "pairstore.crypto"
local cjson = require "cjson"
package.path = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/../ha/?.lua;" .. package.path
local peers = require "peers"

local id, work = arg[1], arg[2]
assert(id and work, "usage: failover_client.lua ID WORK")
local BASE = "http://127.0.0.1:" .. assert(os.getenv("NGX_PORT"), "NGX_PORT")
local OPERATOR = "http://127.0.0.1:" .. assert(os.getenv("NGX_OPERATOR_PORT"), "NGX_OPERATOR_PORT")
local fmt = string.format

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

-- (WORK/running gone: the run was interrupted and its directory removed: stop at once)
local function interrupted() return not exists(work .. "/running") end

local function phase()
  if exists(work .. "/settled") then return "post" end
  if exists(work .. "/killed") then return "switch" end
  return "pre"
end

local tmp = work .. "/c" .. id
assert(os.execute("mkdir -p '" .. tmp .. "'"))
local body_file, req_file = tmp .. "/body", tmp .. "/req"

local function read(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("a")
  f:close()
  return s
end

-- One request: the HTTP status (0: no answer within 15 s) and the decoded body (or {}).
local function http(method, url, body)
  local data = ""
  if body then
    local f = assert(io.open(req_file, "wb"))
    f:write(body)
    f:close()
    data = " -H 'Content-Type: application/json' --data-binary @'" .. req_file .. "'"
  end
  os.remove(body_file)
  local p = io.popen(fmt("curl -s --max-time 15 -X %s%s -o '%s' -w '%%{http_code}' '%s' 2>/dev/null", method, data,
    body_file, url))
  local code = tonumber(p:read("a")) or 0
  p:close()
  local ok, v = pcall(cjson.decode, read(body_file))
  return code, ok and type(v) == "table" and v or {}
end

-- The store's outcome of an answer (see the head); several: a response (two writes).
local function outcome(status, body, several)
  if status >= 200 and status < 300 then return true end
  if status == 503 and not several then return false, "unavailable" end
  if status >= 500 or status == 0 then return false, "outcome_unknown" end
  return false, body.error or ("http_" .. status)
end

local log = assert(io.open(work .. "/logs/" .. id, "w"))
log:setvbuf("line")
local function record(op, sid, ok, code, detail)
  log:write(table.concat({ phase(), op, sid, ok and "ok" or "err", code or "-", detail or "-" }, "\t"), "\n")
end

local function pause() os.execute("sleep 0.05") end

-- Reads a session back after an outcome_unknown answer, until the server answers.
local function resolve(sid)
  for _ = 1, 400 do
    if interrupted() then return nil end
    local status, body = http("GET", BASE .. "/pair/status?sid=" .. sid)
    if status == 200 and body.status then
      record("resolve", sid, true, body.status)
      return body.status
    elseif status == 404 then
      record("resolve", sid, true, "not_found")
      return nil
    end
    record("resolve", sid, false, status == 503 and "unavailable" or ("http_" .. status))
    pause()
  end
  return nil
end

local function sealed(sid, pk, plaintext)
  local box = assert(crypto.seal { pk_gateway = pk, sid = sid, plaintext = plaintext, aead = "aes-256-gcm" })
  return cjson.encode { v = 1, sid = sid, pk_d = box.pk_d, nonce = box.nonce, ct = box.ct }
end

-- One step (op) of a session: logged; tried once more after unavailable; resolved after
-- outcome_unknown. -> whether it succeeded, or the status read back after outcome_unknown
local function step(op, sid, method, url, body, several)
  for _ = 1, 2 do
    local status, b = http(method, url, body)
    local ok, code = outcome(status, b, several)
    record(op, sid, ok, code)
    if ok then return true end
    if code == "outcome_unknown" then return false, resolve(sid) end
    if code ~= "unavailable" then return false end
    pause()
  end
  return false
end

-- Sessions other clients connected (their logs: the create's key, then the right code).
local others, keys = {}, {}
local new_lines = peers(work, id)
local function refresh_others()
  new_lines(function(line)
    local o, sid, res, detail = line:match("^%S+\t(%S+)\t(%x+)\t(%S+)\t%S+\t(.*)$")
    if o == "create" and res == "ok" then keys[sid] = detail:match("pk=(%S+)") end
    if o == "verify_right" and res == "ok" and keys[sid] then others[#others + 1] = sid end
  end)
end

local urandom = assert(io.open("/dev/urandom", "rb"))
local function rand16() local a, b = urandom:read(2):byte(1, 2) return a * 256 + b end

local deadline = os.time() + 90
local n = 0
while not interrupted() and not exists(work .. "/stop") and os.time() < deadline do
  n = n + 1
  local status, b = http("POST", OPERATOR .. "/pair/new")
  local ok, code = outcome(status, b)
  if ok and b.sid and b.code and b.url then
    local sid, pk = b.sid, b.url:match("#pk=([%w_-]+)$")
    record("create", sid, true, "-", fmt("code=%s pk=%s", b.code, pk))
    local bad = b.code == "000000" and "999999" or fmt("%06d", (tonumber(b.code) + 1 + rand16() % 999998) % 1000000)
    step("verify_wrong", sid, "GET", BASE .. "/pair/start?sid=" .. sid .. "&c=" .. bad)
    local right, now = step("verify_right", sid, "GET", BASE .. "/pair/start?sid=" .. sid .. "&c=" .. b.code)
    -- a response to a session whose code was not checked rejects it (the protocol): only
    -- after a code check that succeeded (or was found applied)
    if right or now == "device_connected" then
      step("consume", sid, "POST", BASE .. "/pair/respond", sealed(sid, pk, "failover " .. sid), true)
    end
  else
    record("create", "-", false, ok and "http_no_session" or code)
    if code == "unavailable" then pause() end
  end
  if n % 3 == 0 then
    if n % 30 == 0 or #others == 0 then refresh_others() end
    if #others > 0 then
      local other = others[rand16() % #others + 1]
      step("consume_other", other, "POST", BASE .. "/pair/respond", sealed(other, keys[other], "other " .. id), true)
    end
  end
end
log:close()
os.execute("rm -rf '" .. tmp .. "'")
local done = assert(io.open(work .. "/done-" .. id, "w"))
done:write("done\n")
done:close()
