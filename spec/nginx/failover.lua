-- failover.lua: make test-nginx's failover (issue 12 through nginx), against a running nginx
-- serving examples/nginx with 4 workers on the multi-host target
-- host=PRIMARY,STANDBY&target_session_attrs=read-write (a primary and its synchronous
-- standby, spec/support/pgcluster.sh pair), started by spec/nginx/run.sh, which runs this
-- as the caller (it stops and promotes the clusters). NGX_HA_PRIMARY, NGX_HA_STANDBY: their
-- directories.
--
-- FAILOVER_CLIENTS (4) HTTP clients (failover_client.lua) pair over the example's routes,
-- logging every answer; probes poll the static page and a route without the store
-- (common.lua's probes) the whole time. Mid-run the primary is killed (pg_ctl stop -m
-- immediate) and, FAILOVER_DOWN_S (1) later, the standby promoted; nginx is not touched.
-- Errors are allowed from the kill until FAILOVER_GRACE_S (6: the breaker's longest
-- back-off, 5 s, and 1 s) after the promotion. Then spec/ha/check.lua (the checks of make
-- test-ha) compares the logs with the promoted server's rows: nothing acknowledged lost,
-- nothing that failed half-applied. Also: the page answered throughout, within
-- PAGE_BOUND_MS (1000) each; the first pairing request that succeeded after the promotion
-- and how long after; then every worker answers; the same workers throughout; /metrics
-- counts the failover (pairstore_events_total{event="failover"}); no crash in error.log.
-- Bounded: about 25 s. Ends with "N passed, N failed"; exits non-zero on any failure.
package.path = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local H = require "common"
local core = require "pairstore.core"
local pairstore = require "pairstore"

local fmt, check, note, q, sh, sleep, read = H.fmt, H.check, H.note, H.q, H.sh, H.sleep, H.read
local TREE, WORK = H.TREE, H.WORK
local PRIMARY, STANDBY = H.env("NGX_HA_PRIMARY"), H.env("NGX_HA_STANDBY")
local PGCLUSTER = TREE .. "/spec/support/pgcluster.sh"
local CLIENTS = tonumber(os.getenv("FAILOVER_CLIENTS") or "4")
local BEFORE_S = tonumber(os.getenv("FAILOVER_BEFORE_S") or "3")
local DOWN_S = tonumber(os.getenv("FAILOVER_DOWN_S") or "1")
local GRACE_S = tonumber(os.getenv("FAILOVER_GRACE_S") or "6")
local AFTER_S = tonumber(os.getenv("FAILOVER_AFTER_S") or "3")
local PAGE_BOUND_MS = tonumber(os.getenv("PAGE_BOUND_MS") or "1000") -- generous: a 2-core machine shared with others
local mono = core.mono_ms

local function touch(name) H.write(WORK .. "/" .. name, "") end
local function ctl(dir, args)
  return select(3, os.execute(fmt("bash %s ctl %s %s >/dev/null 2>&1", q(PGCLUSTER), q(dir), args))) == 0
end

local function events_total(text, name)
  return tonumber((text or ""):match('\npairstore_events_total{event="' .. name .. '"} (%d+)\n'))
end

local t0 = mono()
local function say(s) note(fmt("[%.1f s] %s", (mono() - t0) / 1000, s)) end
local elog = #(read(H.PREFIX .. "/error.log") or "")
local workers_before = H.workers_of_master()
local before_metrics = select(5, H.http("GET", "/metrics")) -- (the operator's server)

-- The schema, made once before the clients start (its concurrent creation is not what this is about).
do
  local s = pairstore.open(H.TARGET)
  local all, msg = s:list_all()
  s:close()
  assert(all, "the first operation through the multi-host target failed: " .. tostring(msg))
end

assert(os.execute("mkdir -p " .. q(WORK .. "/logs")))
touch("running") -- (the clients stop when it goes: run.sh removes everything on any exit)
local pids = {}
for i = 1, CLIENTS do
  local pid = sh(fmt("timeout 150 lua5.4 %s %d %s > %s 2>&1 & echo $!", q(TREE .. "/spec/nginx/failover_client.lua"), i,
    q(WORK), q(fmt("%s/client-%d.out", WORK, i))))
  pids[i] = tonumber(pid:match("%d+"))
end
local probe = H.probes(("0"):rep(32))

local function acked(i)
  local n = 0
  for _ in (read(fmt("%s/logs/%d", WORK, i)) or ""):gmatch("\tok\t") do n = n + 1 end
  return n
end
local started = H.wait_for(function()
  for i = 1, CLIENTS do if acked(i) < 5 then return nil end end
  return true
end, 20)
local promoted_at, first_ok_ms, pre_sid
local ok, err = xpcall(function()
  assert(started, "the clients did not start working")
  pre_sid = assert((read(WORK .. "/logs/1") or ""):match("^pre\tcreate\t(%x+)\tok\t"), "no create in client 1's log")
  sleep(BEFORE_S)
  say("killing the primary (pg_ctl stop -m immediate)")
  touch("killed")
  assert(ctl(PRIMARY, "stop -m immediate -w"), "pg_ctl stop -m immediate failed")
  sleep(DOWN_S)
  say("promoting the standby")
  assert(ctl(STANDBY, "promote -w -t 30"), "pg_ctl promote failed")
  promoted_at = mono()
  touch("promoted")
  -- the first pairing request that succeeds after the promotion: a status poll of a
  -- session made before the kill, every 50 ms (a create would make a session no client logged)
  first_ok_ms = H.wait_for(function()
    local c = H.http("GET", "/pair/status?sid=" .. pre_sid, { max_time = 10 })
    return c == 200 and mono() - promoted_at
  end, GRACE_S)
  local left = GRACE_S - (mono() - promoted_at) / 1000
  if left > 0 then sleep(left) end
  say("settled: from now on every request must succeed")
  touch("settled")
  sleep(AFTER_S)
  touch("stop")
  say("stopping the clients")
end, debug.traceback)
if not ok then
  touch("stop")
  check(false, "failover: ran", err)
end

local clients_ok = true
for i = 1, CLIENTS do
  if not H.wait_for(function() return read(fmt("%s/done-%d", WORK, i)) end, 30) then
    note(fmt("client %d did not stop within 30 s (killed)", i))
    clients_ok = false
    if pids[i] then os.execute("kill -KILL " .. pids[i] .. " 2>/dev/null") end
  end
  local out = read(fmt("%s/client-%d.out", WORK, i)) or ""
  if out ~= "" then
    clients_ok = false
    note(fmt("client %d said: %s", i, out:sub(1, 600)))
  end
end

-- The page and the route without the store, throughout.
do
  local rs = probe.stop()
  local ms, bad, slowest, by = {}, 0, nil, {}
  for _, r in ipairs(rs) do
    ms[#ms + 1] = r.ms
    if r.code ~= 200 and r.code ~= 400 then bad = bad + 1 end
    if r.worker then by[r.worker] = (by[r.worker] or 0) + 1 end
    if not slowest or r.ms > slowest.ms then slowest = r end
  end
  local st = H.stats(ms)
  note(fmt("%d probes of the page and a Lua route from before the kill to the end: median %.1f ms, p99 %.1f ms, "
    .. "max %.1f ms (worker %s); by workers %s", st.n, st.median, st.p99, st.max,
    slowest and tostring(slowest.worker) or "-", H.show(by)))
  check(st.n >= 100 and bad == 0, "failover: the page and a route without the store answered throughout",
    fmt("%d probes, %d not 200/400", st.n, bad))
  check(st.n > 0 and st.max < PAGE_BOUND_MS, fmt("failover: the page's max latency %.1f ms < %d ms", st.max, PAGE_BOUND_MS))
end

check(first_ok_ms ~= nil, fmt("failover: a pairing request succeeded again after the promotion (nginx not restarted)%s",
  first_ok_ms and fmt(", %.0f ms after it", first_ok_ms) or ""), first_ok_ms and nil or fmt("none within %d s", GRACE_S))

-- After it, every worker serves pairing requests (40 polls of sessions the clients made).
do
  local sids = {}
  for line in (read(WORK .. "/logs/1") or ""):gmatch("[^\n]+") do
    local ph, op, sid, res = line:match("^(%S+)\t(%S+)\t(%x+)\t(%S+)")
    if ph == "post" and op == "create" and res == "ok" then sids[#sids + 1] = sid end
  end
  local urls = {}
  for i = 1, 40 do urls[i] = "/pair/status?sid=" .. (sids[(i - 1) % math.max(#sids, 1) + 1] or ("0"):rep(32)) end
  local rs = H.results((H.parallel("GET", urls, { max = 20 })))
  local t, by = H.tally(rs)
  local good = 0
  for k, v in pairs(t) do if k:match("^200 ") then good = good + v end end
  check(#sids > 0 and good == 40 and H.count(by) == #workers_before,
    "failover: then 40 parallel status polls all 200, from every worker", H.show(t) .. "; workers " .. H.show(by))
end
do
  local now = H.workers_of_master()
  table.sort(now)
  table.sort(workers_before)
  check(#workers_before > 0 and table.concat(workers_before, " ") == table.concat(now, " "),
    "failover: the same workers throughout (nginx neither restarted nor reloaded)",
    table.concat(workers_before, " ") .. " -> " .. table.concat(now, " "))
end

-- What was acknowledged is on the promoted server: spec/ha/check.lua, each of its checks one of ours.
do
  local direct = "postgresql:///pairstore?host=" .. STANDBY .. "&user=pairstore"
  local out = sh(fmt("cd %s && lua5.4 spec/ha/check.lua %s %d %s %s %s consumed,completed 2>&1", q(TREE), q(WORK), CLIENTS,
    q(direct), q(STANDBY), clients_ok and "1" or "0"))
  local n = 0
  for line in out:gmatch("[^\n]+") do
    local verdict, rest = line:match("^(ok  ) (.*)$")
    if not verdict then verdict, rest = line:match("^(FAIL) (.*)$") end
    if verdict then
      n = n + 1
      check(verdict == "ok  ", "failover: " .. rest)
    elseif not line:match("^%d+ passed, %d+ failed$") then
      note("check.lua: " .. line)
    end
  end
  check(n >= 12, "failover: spec/ha/check.lua ran its checks", n .. " checks")
end

-- /metrics (the operator's server) counts the failover.
do
  local c, _, _, _, text = H.http("GET", "/metrics")
  local fo, re = events_total(text, "failover"), events_total(text, "reconnected")
  local fo0 = events_total(before_metrics, "failover") or 0
  note(fmt("/metrics: pairstore_events_total failover %s, reconnected %s (one per pooled connection that moved)",
    tostring(fo), tostring(re)))
  check(c == 200 and fo and fo > fo0 and re and re > 0,
    "failover: /metrics counts it (pairstore_events_total{event=\"failover\"} grew; reconnected too)")
end

do
  local bad_lines = H.crashes((read(H.PREFIX .. "/error.log") or ""):sub(elog + 1))
  for k = 1, math.min(5, #bad_lines) do note("error.log: " .. bad_lines[k]) end
  check(#bad_lines == 0, "failover: error.log: no crash, no Lua error", #bad_lines .. " lines")
end
note(fmt("failover: %.1f s", (mono() - t0) / 1000))
os.exit(H.summary() and 0 or 1)
