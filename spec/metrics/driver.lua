-- spec/metrics/driver.lua: the checks of `make test-metrics` (issue 21) against the nginx
-- example (spec/nginx/run.sh started it; spec/metrics/driver.sh started Prometheus, which
-- scrapes the operator server's /metrics every second). Every request is real HTTP through
-- curl, bounded in time. Prints one line per check and ends with "N passed, N failed".
--
--   1. a scripted flow through the 4 workers: N creates, M wrong codes with one lockout, K
--      completed pairings, an expiry; Prometheus's query API then returns exactly those
--      counts (summed over the workers' shared counts) and the sessions by status;
--   2. 1 000 status polls, 50 at a time over the 4 workers: every one counted, exactly;
--   3. `nginx -s reload` (asked of spec/metrics/run.sh): no count lost or reset, and the
--      next requests counted exactly; Prometheus sees no counter reset;
--   4. every exposition passes `promtool check metrics`, and none (nor any series Prometheus
--      stored) holds a sid, a code or a key of the sessions made.
package.path = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/../nginx/?.lua;" .. package.path
local H = require "common" -- (the environment, check/note, files, shell, HTTP through curl)
local pairstore = require "pairstore"
local crypto = require "pairstore.crypto"
local core = require "pairstore.core"
local cjson = require "cjson"

local fmt, env, q, sh, read, write, sleep = H.fmt, H.env, H.q, H.sh, H.read, H.write, H.sleep
local check, note, count, workers_of_master, wrong = H.check, H.note, H.count, H.workers_of_master, H.wrong
local tmp = H.tmpname

local BACKEND, PREFIX, MASTER, TARGET = H.BACKEND, H.PREFIX, H.MASTER, H.TARGET
local CTL = env("METRICS_CTL")
local PROM = env("PROM_URL")
local PUBLIC, OPERATOR = H.BASE, H.OPERATOR

-- One request: status, body text, worker pid (X-Pairstore-Worker).
local function http(method, url, opts)
  local code, _, _, worker, raw = H.http(method, url, opts)
  return code, raw, worker
end

local function json(s)
  local ok, v = pcall(cjson.decode, s)
  return ok and v or nil
end

-- Expositions: every one fetched is kept (secrets are searched in all of them) and checked
-- by promtool.
local expositions = {}
local function promtool_ok(text)
  local f = tmp("prom")
  write(f, text)
  local out = sh("promtool check metrics < " .. q(f) .. " 2>&1; echo rc=$?")
  os.remove(f)
  return out:match("rc=0%s*$") ~= nil, out
end

local function parse(text)
  local t = {}
  for line in text:gmatch("[^\n]+") do
    if not line:find("^#") then
      local k, v = line:match("^(.*) (%S+)$")
      if k then t[k] = tonumber(v) end
    end
  end
  return t
end

local promtool_bad = 0
local function scrape()
  local code, text = http("GET", OPERATOR .. "/metrics")
  assert(code == 200, "GET /metrics: " .. code)
  expositions[#expositions + 1] = text
  local ok, out = promtool_ok(text)
  if not ok then
    promtool_bad = promtool_bad + 1
    note("promtool: " .. out)
  end
  return parse(text), text
end

local function ops(s, op, result)
  return s[fmt('pairstore_operations_total{op="%s",result="%s"}', op, result)] or 0
end

-- Prometheus's HTTP API: the value of an instant query's single result (nil: none).
local function prom_query(expr)
  local body = sh(fmt("curl -s --max-time 10 --get --data-urlencode %s %s", q("query=" .. expr), q(PROM .. "/api/v1/query")))
  local r = json(body)
  if not r or r.status ~= "success" then return nil, body end
  local res = r.data.result
  if #res == 0 then return nil, "no result" end
  return tonumber(res[1].value[2]), res
end

-- Waits until Prometheus has scraped at least once after now (its last scrape of the
-- target is newer), so its values are those of the counts as they are now.
local function prom_caught_up(timeout_s)
  local t0 = tonumber(sh("date +%s.%N"))
  local deadline = core.mono_ms() + timeout_s * 1000
  repeat
    local v = prom_query('timestamp(up{job="pairstore"})')
    if v and v > t0 + 0.2 then return true end
    sleep(0.3)
  until core.mono_ms() > deadline
  return false
end

-- The flow's pieces -------------------------------------------------------------------------

local made = {} -- every session the test made: { sid, code, pk }
local workers_seen = {}

local function new_session()
  local code, body, worker = http("POST", OPERATOR .. "/pair/new")
  local s = json(body)
  assert(code == 201 and s and s.sid, "POST /pair/new: " .. code .. " " .. body)
  s.pk = s.url:match("#pk=([%w_-]+)$")
  made[#made + 1] = s
  if worker then workers_seen[worker] = true end
  return s
end

local function start(s, c)
  local code, body, worker = http("GET", PUBLIC .. "/pair/start?sid=" .. s.sid .. "&c=" .. c)
  if worker then workers_seen[worker] = true end
  local b = json(body) or {}
  return code, b.error or b.status
end

local function respond(s, plaintext)
  local box = assert(crypto.seal { pk_gateway = s.pk, sid = s.sid, plaintext = plaintext, aead = "aes-256-gcm" })
  local code, body, worker = http("POST", PUBLIC .. "/pair/respond",
    { body = cjson.encode { v = 1, sid = s.sid, pk_d = box.pk_d, nonce = box.nonce, ct = box.ct } })
  if worker then workers_seen[worker] = true end
  local b = json(body) or {}
  return code, b.error or b.status
end

-- n copies of url, `at_once` in parallel (curl --parallel): their status codes and workers.
local function parallel(url, n, at_once)
  local urls = {}
  for i = 1, n do urls[i] = url end
  local text, outs = H.parallel("GET", urls, { max = at_once, max_time = 120 })
  for _, f in ipairs(outs) do os.remove(f) end
  local codes, workers = {}, {}
  for code, worker in text:gmatch("(%d+) [%d.]+ (%d*) [^\n]*\n") do
    codes[code] = (codes[code] or 0) + 1
    if worker ~= "" then workers[worker] = (workers[worker] or 0) + 1 end
  end
  return codes, workers
end

local function show(t)
  local ks = {}
  for k, v in pairs(t) do ks[#ks + 1] = k .. "×" .. v end
  table.sort(ks)
  return table.concat(ks, " ")
end

-- The checks ----------------------------------------------------------------------------------

local N, K = 6, 3

local function check_endpoint()
  local code = http("GET", PUBLIC .. "/metrics")
  check(code == 404, "GET /metrics on the public server: 404 (the operator's server only)", code)
  code = http("GET", OPERATOR .. "/metrics", { curl = "--interface 127.0.0.2" })
  check(code == 403, "GET /metrics from another address (127.0.0.2): 403", code)
  local ctype = sh(fmt("curl -s --max-time 10 -o /dev/null -w '%%{content_type}' %s", q(OPERATOR .. "/metrics")))
  check(ctype == "text/plain; version=0.0.4; charset=utf-8", "Content-Type of the text format 0.0.4", ctype)
  prom_caught_up(30)
  local up = prom_query('up{job="pairstore"}')
  check(up == 1, "Prometheus scrapes the operator server's /metrics (up == 1)", tostring(up))
end

local expected -- what the flow adds, by "op|result"

local function check_flow()
  local before = scrape()
  local sessions = {}
  for i = 1, N do sessions[i] = new_session() end
  -- one lockout: 5 wrong codes on the first session
  local a = sessions[1]
  local got = {}
  for _ = 1, 5 do
    local code, what = start(a, wrong(a.code))
    got[#got + 1] = code .. " " .. tostring(what)
  end
  check(table.concat(got, ",") == "403 wrong_code,403 wrong_code,403 wrong_code,403 wrong_code,403 attempts_exhausted",
    "5 wrong codes: 4× wrong_code, then attempts_exhausted (the lockout)", table.concat(got, ","))
  -- two more wrong codes on a session that then completes
  local b = sessions[2]
  local c1, w1 = start(b, wrong(b.code))
  local c2, w2 = start(b, wrong(b.code))
  check(c1 == 403 and w1 == "wrong_code" and c2 == 403 and w2 == "wrong_code", "2 wrong codes on another session")
  -- K completed pairings
  local ok = 0
  for i = 2, K + 1 do
    local s = sessions[i]
    local cc, cw = start(s, s.code)
    local rc, rw = respond(s, "legal winner thank year wave sausage worth useful legal winner thank yellow")
    if cc == 200 and cw == "device_connected" and rc == 200 and rw == "completed" then ok = ok + 1 end
  end
  check(ok == K, fmt("%d pairings completed (code, then the sealed payload)", K), ok)
  -- an expiry: a session made by another process with a clock 400 s behind (the shortest
  -- TTL is 300 s), so it is past its expiry when the gateway sees it
  local st = pairstore.open(TARGET, { now = function() return os.time() * 1000 - 400000 end })
  local e = assert(st:create { operator = { channel = "cli" }, ttl_ms = pairstore.MIN_TTL_MS })
  st:close()
  made[#made + 1] = { sid = e.sid, code = e.secondaryCode, pk = e.pkGatewayB64 }
  local ec, ew = start({ sid = e.sid }, e.secondaryCode)
  check(ec == 410 and ew == "expired", "the code check of an expired session: 410 expired", ec .. " " .. tostring(ew))
  check(count(workers_seen) >= 2, "the flow was answered by several workers", count(workers_seen))

  expected = {
    ["create|ok"] = N, ["verify_code|wrong_code"] = 6, ["verify_code|attempts_exhausted"] = 1,
    ["verify_code|ok"] = K, ["verify_code|expired"] = 1, ["respond|ok"] = K, ["transition|ok"] = K,
  }
  local after = scrape()
  local bad = {}
  for k, n in pairs(expected) do
    local op, result = k:match("^(.-)|(.*)$")
    local d = ops(after, op, result) - ops(before, op, result)
    if d ~= n then bad[#bad + 1] = fmt("%s: %d, not %d", k, d, n) end
  end
  check(#bad == 0, "/metrics: exactly the flow's counts", #bad > 0 and table.concat(bad, "; ") or nil)

  -- Prometheus, through its query API: the same, summed over the workers' series
  check(prom_caught_up(30), "Prometheus scraped after the flow")
  bad = {}
  for k, n in pairs(expected) do
    local op, result = k:match("^(.-)|(.*)$")
    local v = prom_query(fmt('sum(pairstore_operations_total{op="%s",result="%s"})', op, result))
    local want = ops(before, op, result) + n
    if v ~= want then bad[#bad + 1] = fmt("%s: %s, not %d", k, tostring(v), want) end
  end
  check(#bad == 0, fmt("Prometheus: %d creates, 6 wrong codes + 1 lockout, %d pairings, 1 expiry, exactly", N, K),
    #bad > 0 and table.concat(bad, "; ") or nil)
  local lockouts = prom_query('sum(pairstore_operations_total{result="attempts_exhausted"})')
  check(lockouts == 1, "Prometheus: one lockout in all", tostring(lockouts))
  local want_sessions = { awaiting_scan = N - K - 1, device_connected = 0, completed = K, rejected = 1, expired = 1,
    consumed = 0, other = 0 }
  bad = {}
  for status, n in pairs(want_sessions) do
    local v = prom_query(fmt('pairstore_sessions{status="%s"}', status))
    if v ~= n then bad[#bad + 1] = fmt("%s: %s, not %d", status, tostring(v), n) end
  end
  check(#bad == 0, "Prometheus: pairstore_sessions by status, as the store holds them",
    #bad > 0 and table.concat(bad, "; ") or nil)
  local hist = prom_query('sum(pairstore_operation_duration_seconds_count{op="create"})')
  check(hist == ops(before, "create", "ok") + N, "Prometheus: the create histogram's count", tostring(hist))
  return sessions
end

local function check_concurrency(sessions)
  local s = sessions[N]
  local before = scrape()
  local t0 = core.mono_ms()
  local codes, workers = parallel(PUBLIC .. "/pair/status?sid=" .. s.sid, 1000, 50)
  note(fmt("1000 status polls, 50 at once: %s in %d ms; workers %s", show(codes), core.mono_ms() - t0, show(workers)))
  check(codes["200"] == 1000, "1000 parallel status polls: every one 200", show(codes))
  check(count(workers) >= 2, "... answered by several of the 4 workers", count(workers))
  local after = scrape()
  local dg = ops(after, "get", "ok") - ops(before, "get", "ok")
  local dn = ops(after, "now", "ok") - ops(before, "now", "ok")
  local dh = (after['pairstore_operation_duration_seconds_count{op="get"}'] or 0)
    - (before['pairstore_operation_duration_seconds_count{op="get"}'] or 0)
  check(dg == 1000 and dn == 1000 and dh == 1000, "... counted exactly: 1000 gets, 1000 clock reads, 1000 in the histogram",
    fmt("%d, %d, %d", dg, dn, dh))
  check((after.pairstore_metrics_dropped_total or -1) == 0, "nothing dropped", after.pairstore_metrics_dropped_total)
end

-- Asks run.sh (the master's user) for `nginx -s reload`; true once the master has new workers.
local function reload()
  local old = workers_of_master()
  local name = fmt("reload-%d", os.time())
  write(CTL .. "/req/" .. name .. ".tmp", tostring(MASTER))
  os.rename(CTL .. "/req/" .. name .. ".tmp", CTL .. "/req/" .. name)
  local deadline = core.mono_ms() + 10000
  local answer
  repeat
    answer = read(CTL .. "/ans/" .. name)
    if not answer then sleep(0.1) end
  until answer or core.mono_ms() > deadline
  if not answer or not answer:find("sent") then return false, "reload request: " .. tostring(answer) end
  -- the old workers gone, 4 new ones
  deadline = core.mono_ms() + 20000
  repeat
    local now = workers_of_master()
    local renewed = #now == 4
    for _, a in ipairs(now) do
      for _, b in ipairs(old) do if a == b then renewed = false end end
    end
    if renewed then return true, table.concat(old, " ") .. " -> " .. table.concat(now, " ") end
    sleep(0.1)
  until core.mono_ms() > deadline
  return false, "the workers were not replaced"
end

local function check_reload(sessions)
  local before = scrape()
  local ok, how = reload()
  if not check(ok, "nginx -s reload: the master replaced its 4 workers", how) then return end
  local after = scrape()
  local lost = {}
  for k, v in pairs(before) do
    if k:find("^pairstore_operations_total") and not k:find('op="list"', 1, true) and after[k] ~= v then
      lost[#lost + 1] = fmt("%s %s -> %s", k, v, tostring(after[k]))
    end
  end
  check(#lost == 0 and ops(after, "create", "ok") == ops(before, "create", "ok") and ops(after, "create", "ok") >= N,
    "after the reload: every count as it was", #lost > 0 and table.concat(lost, "; ") or nil)
  local s = sessions[N]
  local codes, workers = parallel(PUBLIC .. "/pair/status?sid=" .. s.sid, 200, 20)
  local later = scrape()
  local dg = ops(later, "get", "ok") - ops(after, "get", "ok")
  check(codes["200"] == 200 and dg == 200, "200 status polls after the reload (" .. count(workers) .. " workers): counted exactly",
    fmt("%s; +%d gets", show(codes), dg))
  check(prom_caught_up(30), "Prometheus scraped after the reload")
  local v = prom_query('sum(pairstore_operations_total{op="get",result="ok"})')
  check(v == ops(later, "get", "ok"), "Prometheus: the gets, across the reload", tostring(v) .. " / " .. ops(later, "get", "ok"))
  local resets = prom_query('sum(resets(pairstore_operations_total[10m]))')
  check(resets == 0, "Prometheus: no counter reset", tostring(resets))
end

-- Another process holds the lock a request needs (the file's; on PostgreSQL the session's
-- row) for 1.5 s: the request waits cooperatively (ngx.sleep; on PostgreSQL on the thread
-- pool's path), and that wait is one observation of pairstore_lock_wait_seconds.
local function check_lock_wait()
  local s = new_session()
  if BACKEND ~= "file" then assert(start(s, s.code) == 200) end -- (then the check takes its row lock)
  local dir = tmp("hold")
  assert(os.execute("mkdir " .. q(dir)))
  write(dir .. "/holder.lua", fmt([[
    local st = require("pairstore").open(%q, { lock_wait_ms = 20000 })
    assert(st:update(%q, function()
      local f = io.open(%q, "w"); f:close()
      os.execute("sleep 1.5")
    end))
    st:close()
  ]], TARGET, s.sid, dir .. "/held"))
  local before = scrape()
  os.execute(fmt("timeout 30 lua5.4 %s > %s 2>&1 &", q(dir .. "/holder.lua"), q(dir .. "/out")))
  local deadline = core.mono_ms() + 10000
  while not read(dir .. "/held") and core.mono_ms() < deadline do sleep(0.02) end
  if not check(read(dir .. "/held") ~= nil, "another process holds the lock", read(dir .. "/out")) then return end
  local url = BACKEND == "file" and (PUBLIC .. "/pair/status?sid=" .. s.sid) or (PUBLIC .. "/pair/start?sid=" .. s.sid .. "&c=" .. s.code)
  local t0 = core.mono_ms()
  local code = http("GET", url)
  local waited = core.mono_ms() - t0
  local after = scrape()
  local dc = (after.pairstore_lock_wait_seconds_count or 0) - (before.pairstore_lock_wait_seconds_count or 0)
  local ds = (after.pairstore_lock_wait_seconds_sum or 0) - (before.pairstore_lock_wait_seconds_sum or 0)
  check(code == 200 and waited > 700, "a request that needs the lock waits for the holder", fmt("%d after %d ms", code, waited))
  if BACKEND == "file" then
    -- (the file's lock is the whole store's: the scrapes made meanwhile waited too, each
    -- for less than the hold)
    check(dc >= 1 and ds > 0.7 and ds <= dc * 1.6,
      "pairstore_lock_wait_seconds: the request's wait (and those of the scrapes made meanwhile)", fmt("+%d, +%.3f s", dc, ds))
  else
    check(dc == 1 and ds > 0.7 and ds * 1000 <= waited + 50,
      "pairstore_lock_wait_seconds: one wait, as long as the request waited", fmt("+%d, +%.3f s", dc, ds))
  end
end

local function check_secrets()
  -- the sessions' keys as stored (the test made them all)
  local st = pairstore.open(TARGET)
  local all = assert(st:list_all())
  st:close()
  local long, codes = {}, {}
  for _, s in ipairs(all) do
    long[#long + 1] = s.sid
    long[#long + 1] = s.skGatewayB64
    long[#long + 1] = s.pkGatewayB64
    codes[#codes + 1] = s.secondaryCode
  end
  for _, s in ipairs(made) do
    long[#long + 1] = s.sid
    long[#long + 1] = s.pk
    codes[#codes + 1] = s.code
    codes[#codes + 1] = wrong(s.code)
  end
  -- Prometheus's stored series (every label of every one) count as an exposition too
  local series = sh(fmt("curl -s --max-time 10 --get --data-urlencode %s %s", q('match[]={job="pairstore"}'),
    q(PROM .. "/api/v1/series")))
  local found = {}
  for i, text in ipairs(expositions) do
    -- sids and keys anywhere; a 6-digit code anywhere but in a sample's value (a number the
    -- exposition computed, which may hold any digits)
    local labels = {}
    for line in text:gmatch("[^\n]+") do labels[#labels + 1] = line:match("^(.*) %S+$") or line end
    local nonvalue = table.concat(labels, "\n")
    for _, x in ipairs(long) do if text:find(x, 1, true) then found[#found + 1] = fmt("exposition %d: %s", i, x) end end
    for _, c in ipairs(codes) do if nonvalue:find(c, 1, true) then found[#found + 1] = fmt("exposition %d: code %s", i, c) end end
  end
  for _, x in ipairs(long) do if series:find(x, 1, true) then found[#found + 1] = "Prometheus series: " .. x end end
  for _, c in ipairs(codes) do if series:find(c, 1, true) then found[#found + 1] = "Prometheus series: code " .. c end end
  check(#series > 100 and #expositions >= 6 and #long >= 3 * N,
    fmt("searched %d expositions and Prometheus's %d series bytes for %d sids and keys, %d codes", #expositions, #series,
      #long, #codes))
  check(#found == 0, "no sid, code or key in any exposition or stored series", table.concat(found, "; "))
  check(promtool_bad == 0, fmt("promtool check metrics: every exposition (%d) passes", #expositions), promtool_bad)
end

local function check_log()
  local log = read(PREFIX .. "/error.log") or ""
  local bad = 0
  for line in log:gmatch("[^\n]+") do
    local denied = line:find("access forbidden by rule", 1, true) -- (the check from 127.0.0.2)
    if not denied and (line:find("lua entry thread aborted", 1, true) or line:find("pairing_gateway:", 1, true)
      or line:find("pairstore.metrics:", 1, true) or line:find("[error]", 1, true) or line:find("[emerg]", 1, true)
      or line:find("[alert]", 1, true)) then
      bad = bad + 1
      if bad <= 5 then note("error.log: " .. line) end
    end
  end
  check(bad == 0, "error.log: no Lua errors, no store failures, no dropped counts", bad .. " lines")
end

local sessions
local steps = {
  { "endpoint", check_endpoint },
  { "flow", function() sessions = check_flow() end },
  { "concurrency", function() check_concurrency(sessions) end },
  { "reload", function() check_reload(sessions) end },
  { "lock wait", check_lock_wait },
  { "secrets", check_secrets },
  { "log", check_log },
}
for _, step in ipairs(steps) do
  local ok, err = xpcall(step[2], debug.traceback)
  if not ok then check(false, step[1] .. ": raised", err) end
end
os.exit(H.summary() and 0 or 1)
