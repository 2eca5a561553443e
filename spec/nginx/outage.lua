-- outage.lua: what `make test-nginx` checks of the PostgreSQL backend when the database goes
-- wrong (issue 18), against a running nginx serving examples/nginx, started by
-- spec/nginx/run.sh, which runs it as the caller (root in CI: it signals the server's
-- processes and asks pg_stat_activity through spec/support/pgcluster.sh). OUTAGE says which
-- phases (a comma-separated list):
--   frozen     every server process SIGSTOPped while pairing requests are pending on every
--              worker: the page keeps answering in ms, the pending requests answer 503 by
--              their deadline, and after SIGCONT the next requests succeed (nginx not
--              restarted); frozen-cold: the same on an nginx that never connected (run.sh's
--              1 worker), where a probe whose client went away must keep no breaker open
--   blackhole  the target is a loopback listener that never answers (NGX_BLACKHOLE_PORT,
--              held by run.sh): the page answers in ms, pending requests 503 at the connect
--              timeout, then the breaker answers 503 fast
--   aborts     100 requests whose clients go away at random moments, a worker SIGKILLed
--              meanwhile: no connection left idle in a transaction, no row lock, connections
--              within the pool bounds
--   longpoll   200 concurrent long polls on 20 sessions: each answers within 100 ms of its
--              session's change, one LISTEN connection per worker at most; a wait on an
--              unchanged session ends by its deadline
-- Everything it stops it starts again (the server is SIGCONTed whatever happens; run.sh does
-- it too if this script is killed). Ends with "N passed, N failed"; exits non-zero on any
-- failure.
package.path = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local H = require "common"
local core = require "pairstore.core"

local fmt, check, note, q, read, write, sh, sleep = H.fmt, H.check, H.note, H.q, H.read, H.write, H.sh, H.sleep
local http, parallel, tally, show, count = H.http, H.parallel, H.tally, H.show, H.count
local new_session, sealed, wrong, wait_for, tmpname = H.new_session, H.sealed, H.wrong, H.wait_for, H.tmpname
local PORT, PREFIX, TREE = H.PORT, H.PREFIX, H.TREE
local probes, crashes = H.probes, H.crashes

local PGDIR = os.getenv("PAIRSTORE_TEST_PGDIR")
local PGCLUSTER = TREE .. "/spec/support/pgcluster.sh"
-- The example's store (examples/nginx/pairing_gateway.lua) and pool (pairstore's defaults).
local LOCK_WAIT_MS, CONNECT_MS, STATEMENT_MS = 5000, 3000, 5000
local POOL_SIZE = 16
local BACKOFF_MAX_MS = 5000 -- (lua/pairstore/deferred.lua)
local PAGE_BOUND_MS = tonumber(os.getenv("PAGE_BOUND_MS") or "250") -- generous for a 2-core CI machine
local NWORKERS = #H.workers_of_master()
local W = fmt("%d worker%s", NWORKERS, NWORKERS == 1 and "" or "s")

local function mono() return core.mono_ms() end

local function same_set(a, b)
  if #a ~= #b then return false end
  local s = {}
  for _, x in ipairs(a) do s[x] = true end
  for _, x in ipairs(b) do if not s[x] then return false end end
  return true
end

-- SQL on the test cluster, as its superuser (psql -qAtX): the output's text.
local function psql(sql)
  return sh(fmt("bash %s psql %s -c %s 2>&1", q(PGCLUSTER), q(PGDIR), q(sql)))
end

-- The client connections to the pairstore database (other than psql's own), by state, and
-- how many listen.
local function activity()
  local out = psql("SELECT coalesce(state, '?') || '|' || count(*) || '|' || sum(CASE WHEN query LIKE 'LISTEN%' THEN 1 ELSE 0 END) "
    .. "FROM pg_stat_activity WHERE datname = 'pairstore' AND backend_type = 'client backend' "
    .. "AND pid <> pg_backend_pid() GROUP BY state")
  local a = { total = 0, listen = 0, states = {}, idle_in_txn = 0 }
  for state, n, l in out:gmatch("([^|\n]+)|(%d+)|(%d+)") do
    n, l = tonumber(n), tonumber(l)
    a.states[state] = n
    a.total = a.total + n
    a.listen = a.listen + l
    if state:find("^idle in transaction") then a.idle_in_txn = a.idle_in_txn + n end
  end
  a.raw = out
  a.ok = not out:find("psql:", 1, true) and not out:find("FATAL", 1, true) and not out:find("ERROR", 1, true)
  if not a.ok then note("psql: " .. out:gsub("\n", " ")) end
  return a
end

-- The lines nginx's logs got since offset: access.log lines as { method, uri, status, ms
-- (request_time), at (msec, wall ms), worker }.
local function log_size(name) return #(read(PREFIX .. "/" .. name) or "") end
local function access_since(offset)
  local t = {}
  local s = (read(PREFIX .. "/access.log") or ""):sub(offset + 1)
  for line in s:gmatch("[^\n]+") do
    local m, u, st, rt, at, w = line:match('"(%u+) ([^"]*)" (%d+) ([%d.]+) ([%d.]+) worker=(%d+)')
    if m then
      t[#t + 1] = { method = m, uri = u, status = tonumber(st), ms = tonumber(rt) * 1000, at = tonumber(at) * 1000,
        worker = tonumber(w) }
    end
  end
  return t
end
local function errors_since(offset)
  return (read(PREFIX .. "/error.log") or ""):sub(offset + 1)
end
-- The workers holding established connections of our port (ss, as root: every process).
local function busy_workers()
  local busy = {}
  local out = sh(fmt("ss -Htnp state established '( sport = :%s )' 2>/dev/null", PORT))
  for pid in out:gmatch("pid=(%d+)") do busy[tonumber(pid)] = (busy[tonumber(pid)] or 0) + 1 end
  return busy
end

-- Requests in parallel in the background: a handle with :done() (every -w line is in) and
-- :results() (a list of { code, ms, worker, body, i = the url's index }).
local function launch(method, urls, opts)
  opts = opts or {}
  local collect, outs = parallel(method, urls, { max = opts.max or #urls, background = true, max_time = opts.max_time or 30,
    body = opts.body })
  local index = {}
  for i, o in ipairs(outs) do index[o] = i end
  local h = { n = #urls, at = mono() }
  function h.lines() return select(2, collect():gsub("\n", "")) end
  function h.done() return h.lines() >= h.n end
  function h.wait(seconds) return wait_for(h.done, seconds or 40) end
  function h.results()
    local r = {}
    for line in collect():gmatch("[^\n]+") do
      local code, secs, worker, file = line:match("^(%d+) ([%d.]+) (%d*) (.*)$")
      if code then
        local raw = read(file) or ""
        r[#r + 1] = { code = tonumber(code), ms = tonumber(secs) * 1000, worker = tonumber(worker),
          body = H.decode(raw) or raw, i = index[file] }
      end
    end
    return r
  end
  return h
end

local function probe_report(what, rs)
  local ms, bad, by, slowest, failures = {}, 0, {}, nil, {}
  for _, r in ipairs(rs) do
    ms[#ms + 1] = r.ms
    if r.code ~= 200 and r.code ~= 400 then
      bad = bad + 1
      failures[#failures + 1] = fmt("%d (curl exit %d) after %.0f ms", r.code, r.exit, r.ms)
    end
    if r.worker then by[r.worker] = (by[r.worker] or 0) + 1 end
    if not slowest or r.ms > slowest.ms then slowest = r end
  end
  local st = H.stats(ms)
  note(fmt("%s: %d probes of the page and a Lua route: median %.1f ms, p99 %.1f ms, max %.1f ms (worker %s, about %.1f s in); by workers %s",
    what, st.n, st.median, st.p99, st.max, slowest and tostring(slowest.worker) or "-", slowest and slowest.at / 1000 or 0, show(by)))
  if #failures > 0 then note("probes that failed: " .. table.concat(failures, "; ", 1, math.min(5, #failures))) end
  check(st.n >= 20 and bad == 0, fmt("%s (%s): the page and a route without the store answered throughout", what, W),
    fmt("%d probes, %d not 200/400", st.n, bad))
  check(st.max < PAGE_BOUND_MS, fmt("%s (%s): the page's max latency %.1f ms < %d ms", what, W, st.max, PAGE_BOUND_MS))
  check(count(by) == NWORKERS, fmt("%s (%s): probes answered by every worker", what, W), count(by) .. " of " .. NWORKERS)
  return st
end

local function times(rs)
  local ms = {}
  for _, r in ipairs(rs) do ms[#ms + 1] = fmt("%.0f", r.ms) end
  table.sort(ms, function(a, b) return tonumber(a) < tonumber(b) end)
  return table.concat(ms, " ")
end

-- Pairing requests pending on every worker: status polls of sids and creates, in the
-- background, again until every worker holds one (or 3 more batches): the handles.
local function pending(sids)
  local polls, hs = {}, {}
  for i = 1, 16 do polls[i] = "/pair/status?sid=" .. sids[(i - 1) % #sids + 1] end
  hs[#hs + 1] = launch("GET", polls)
  hs[#hs + 1] = launch("POST", { "/pair/new", "/pair/new", "/pair/new", "/pair/new" })
  local busy
  for _ = 1, 4 do
    sleep(0.3)
    busy = busy_workers()
    if count(busy) >= NWORKERS then break end
    local more = {}
    for i = 1, 8 do more[i] = polls[i] end
    hs[#hs + 1] = launch("GET", more)
  end
  local n = 0
  for _, h in ipairs(hs) do n = n + h.n end
  return hs, busy, n
end

local function all_results(hs)
  local rs = {}
  for _, h in ipairs(hs) do for _, r in ipairs(h.results()) do rs[#rs + 1] = r end end
  return rs
end

-- The cluster's server processes: the postmaster, then its children (none is forked once it
-- is stopped).
local function server_pids()
  local pm = tonumber((sh(fmt("bash %s pid %s", q(PGCLUSTER), q(PGDIR))):match("%d+")))
  assert(pm, "no postmaster pid")
  return pm
end
local function freeze()
  local pm = server_pids()
  os.execute("kill -STOP " .. pm)
  local pids = { pm }
  for pid in (read(fmt("/proc/%d/task/%d/children", pm, pm)) or ""):gmatch("%d+") do pids[#pids + 1] = pid end
  os.execute("kill -STOP " .. table.concat(pids, " ", 2) .. " 2>/dev/null")
  return pids
end
local function thaw(pids)
  os.execute("kill -CONT " .. table.concat(pids, " ") .. " 2>/dev/null")
end

-- Phases ---------------------------------------------------------------------------------------

-- cold: nginx has not used the store yet (no link in any pool): every pending request
-- fails to connect, the breakers open, and the request after the longest back-off is a
-- probe; its client goes away while its connect waits: the breaker must not stay open.
-- Otherwise the workers have connections (their round trips time out), on 16 sessions.
local function phase_frozen(cold)
  local sids, want = {}, "200 awaiting_scan"
  if cold then
    for i = 1, 16 do sids[i] = fmt("%032x", 0xf000 + i) end -- (unknown: the store answers 404)
    want = "404 not_found"
  else
    for i = 1, 16 do sids[i] = new_session().sid end
    -- links in every worker's pool
    local warm = {}
    for i = 1, 40 do warm[i] = "/pair/status?sid=" .. sids[(i - 1) % 16 + 1] end
    local wt = tally(H.results((parallel("GET", warm, { max = 20 }))))
    assert(wt[want] == 40, "warm-up: " .. show(wt))
  end
  W = cold and W .. ", cold" or W
  local before = H.workers_of_master()
  local elog = log_size("error.log")

  local pids = freeze()
  local frozen_at = mono()
  note(fmt("froze the PostgreSQL server: %d processes SIGSTOPped", #pids))
  local thawed_at
  local ok, err = xpcall(function()
    local hs, busy, n = pending(sids)
    local p = probes(sids[1])
    check(count(busy) >= NWORKERS, fmt("frozen (%s): pairing requests pending on every worker", W),
      fmt("%d requests; connections by worker %s", n, show(busy)))
    for _, h in ipairs(hs) do h.wait(LOCK_WAIT_MS / 1000 + STATEMENT_MS / 1000 + 10) end
    local rs = all_results(hs)
    local t = tally(rs)
    local bound = LOCK_WAIT_MS + STATEMENT_MS + 1500
    local late = 0
    for _, r in ipairs(rs) do if r.ms > bound then late = late + 1 end end
    note(fmt("the %d pending requests: %s; their times (ms): %s", n, show(t), times(rs)))
    check(#rs == n and t["503 busy"] == n, fmt("frozen (%s): every pending request answered 503", W), show(t))
    check(#rs == n and late == 0, fmt("frozen (%s): each by its deadline (lock_wait_ms + statement_timeout_ms + 1.5 s = %d ms)", W, bound),
      late .. " later")
    -- A probe whose client goes away: once the breaker's longest back-off has passed, the
    -- next request on a worker is its probe (one connect, within connect_timeout_ms): its
    -- client gives up after 0.3 s (nginx finalizes the request: lua_check_client_abort).
    sleep(BACKOFF_MAX_MS / 1000 + 0.3)
    local gone = {}
    for i = 1, NWORKERS * 2 do gone[i] = "/pair/status?sid=" .. sids[i] end
    local g = launch("GET", gone, { max_time = 0.3 })
    g.wait(5)
    sleep(0.2)
    local st = probe_report("frozen", p.stop())
    note(fmt("%d requests whose client went away after 0.3 s while the database was still frozen: %s", #gone, show(tally(g.results()))))
    thaw(pids)
    thawed_at = mono()
    note(fmt("SIGCONT after %.1f s frozen", (thawed_at - frozen_at) / 1000))
    return st
  end, debug.traceback)
  if not thawed_at then thaw(pids); thawed_at = mono() end
  if not ok then error(err, 0) end

  -- After SIGCONT: polls (8 at a time, new connections) until every worker answered 200.
  local first, ok_by, bad = nil, {}, {}
  local bound = BACKOFF_MAX_MS + CONNECT_MS + 1000
  local i = 0
  repeat
    i = i + 1
    local urls = {}
    for k = 1, 8 do urls[k] = "/pair/status?sid=" .. sids[(i + k) % 16 + 1] end
    for _, r in ipairs(H.results((parallel("GET", urls, { max = 8, max_time = 15 })))) do
      if (r.code == 200 or cold and r.code == 404) and r.worker then
        first = first or (mono() - thawed_at)
        ok_by[r.worker] = ok_by[r.worker] or (mono() - thawed_at)
      else
        local k = r.code .. " " .. tostring(type(r.body) == "table" and r.body.error or "?")
        bad[k] = (bad[k] or 0) + 1
      end
    end
    if count(ok_by) < NWORKERS then sleep(0.2) end
  until count(ok_by) >= NWORKERS or mono() - thawed_at > bound + 5000
  local last = 0
  for _, ms in pairs(ok_by) do last = math.max(last, ms) end
  note(fmt("after SIGCONT: the first 200 %s ms later, every worker's %s ms later (%s); before that %s",
    first and fmt("%.0f", first) or "never", count(ok_by) >= NWORKERS and fmt("%.0f", last) or "never", show(ok_by), show(bad)))
  check(count(ok_by) >= NWORKERS and last <= bound,
    fmt("frozen (%s): after SIGCONT every worker's requests succeed within the breaker's back-off (%d ms)", W, bound),
    count(ok_by) .. " of " .. NWORKERS .. " workers")
  local rs = H.results((parallel("GET", (function()
    local u = {}
    for k = 1, 40 do u[k] = "/pair/status?sid=" .. sids[(k - 1) % 16 + 1] end
    return u
  end)(), { max = 20 })))
  local t = tally(rs)
  check(t[want] == 40, fmt("frozen (%s): then 40 parallel polls all %s", W, want), show(t))
  if cold then
    local ok2, s = pcall(new_session)
    local c = ok2 and http("GET", "/pair/status?sid=" .. s.sid)
    check(c == 200, fmt("frozen (%s): and a new session, its status 200", W), ok2 and tostring(c) or tostring(s))
  end
  check(same_set(before, H.workers_of_master()), fmt("frozen (%s): the same workers (nginx not restarted)", W))
  local bad_lines = crashes(errors_since(elog))
  for k = 1, math.min(5, #bad_lines) do note("error.log: " .. bad_lines[k]) end
  check(#bad_lines == 0, fmt("frozen (%s): error.log: no crash, no Lua error", W), #bad_lines .. " lines")
end

local function phase_blackhole()
  local port = tonumber(H.env("NGX_BLACKHOLE_PORT"))
  -- (run.sh holds it: a connection is made, and no byte ever comes)
  local rc = select(3, os.execute(fmt("timeout 0.5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/%d && cat <&3' 2>/dev/null", port)))
  if not check(rc == 124, fmt("black hole (%s): 127.0.0.1:%d accepts and never answers", W, port), "exit " .. tostring(rc)) then
    return
  end
  local elog = log_size("error.log")
  local before = H.workers_of_master()
  local ok, err = xpcall(function()
    local sids = {}
    for i = 1, 16 do sids[i] = string.format("%032x", i) end
    local hs, busy, n = pending(sids)
    local p = probes(sids[1])
    check(count(busy) >= NWORKERS, fmt("black hole (%s): pairing requests pending on every worker", W),
      fmt("%d requests; connections by worker %s", n, show(busy)))
    for _, h in ipairs(hs) do h.wait(LOCK_WAIT_MS / 1000 + CONNECT_MS / 1000 + 10) end
    -- the breaker is open in every worker now: answers at once
    local fast = {}
    for i = 1, NWORKERS * 3 do fast[i] = "/pair/status?sid=" .. sids[i] end
    local frs = H.results((parallel("GET", fast, { max = #fast, max_time = 15 })))
    local rs = all_results(hs)
    local t = tally(rs)
    -- Each by its deadline, the connect timeout (+ 1 s). The first to connect waits all of
    -- it; one that came later and waited for a connection of the pool hears the breaker
    -- open with that first failure (sooner than its own timeout, never before the first's).
    local off, longest = 0, 0
    for _, r in ipairs(rs) do
      if r.ms < CONNECT_MS / 2 or r.ms > CONNECT_MS + 1000 then off = off + 1 end
      longest = math.max(longest, r.ms)
    end
    if longest < CONNECT_MS - 50 then off = off + 1 end
    note(fmt("the %d pending requests: %s; their times (ms): %s", n, show(t), times(rs)))
    check(#rs == n and t["503 busy"] == n, fmt("black hole (%s): every pending request answered 503", W), show(t))
    check(#rs == n and off == 0, fmt("black hole (%s): each by the connect timeout (%d ms, + 1 s), the first at it", W, CONNECT_MS),
      off .. " not")
    local ft = tally(frs)
    local quick = 0
    for _, r in ipairs(frs) do if r.ms < CONNECT_MS / 4 then quick = quick + 1 end end
    note(fmt("%d requests right after: %s; their times (ms): %s", #fast, show(ft), times(frs)))
    check(ft["503 busy"] == #fast and quick >= #fast // 2,
      fmt("black hole (%s): then the breaker answers 503 at once (under %d ms)", W, CONNECT_MS // 4),
      fmt("%d of %d", quick, #fast))
    local hdr = sh(fmt("curl -s --max-time 10 -D - -o /dev/null %s", q(H.BASE .. "/pair/status?sid=" .. sids[1])))
    check(hdr:match("^HTTP/1%.1 503") and hdr:lower():find("\nretry%-after: 2\r\n") ~= nil,
      fmt("black hole (%s): a 503 says Retry-After", W), (hdr:match("^[^\r\n]*")))
    sleep(0.5)
    probe_report("black hole", p.stop())
  end, debug.traceback)
  if not ok then error(err, 0) end
  check(same_set(before, H.workers_of_master()), fmt("black hole (%s): the same workers throughout", W))
  local bad_lines = crashes(errors_since(elog))
  for k = 1, math.min(5, #bad_lines) do note("error.log: " .. bad_lines[k]) end
  check(#bad_lines == 0, fmt("black hole (%s): error.log: no crash, no Lua error", W), #bad_lines .. " lines")
end

local function phase_aborts()
  math.randomseed(tonumber(os.getenv("SEED") or "") or os.time())
  local elog, alog = log_size("error.log"), log_size("access.log")
  local fresh, connected = {}, {}
  for i = 1, 8 do fresh[i] = new_session() end
  for i = 1, 8 do
    connected[i] = new_session()
    local c = http("GET", "/pair/start?sid=" .. connected[i].sid .. "&c=" .. connected[i].code)
    assert(c == 200, "start: " .. c)
  end
  -- a row held by a process outside nginx: code checks on it wait (cooperatively) when aborted
  local held = new_session()
  local h = H.holder(held.sid, 1500)
  local dir = tmpname("aborts")
  assert(os.execute("mkdir " .. q(dir)))
  -- one curl, 100 transfers at once, each with its own --max-time
  -- (ABORT_KINDS, ABORT_KILL=0: a subset, no SIGKILL, to narrow a failure down)
  local groups, kinds, menu = {}, {}, {}
  for k in (os.getenv("ABORT_KINDS") or "start,start_held,respond,status,wait,new"):gmatch("[%w_]+") do menu[#menu + 1] = k end
  for i = 1, 100 do
    local kind = menu[math.random(#menu)]
    kinds[kind] = (kinds[kind] or 0) + 1
    local s = fresh[math.random(#fresh)]
    local mt = 0.002 + math.random() * 0.05
    local g
    if kind == "start" then
      g = fmt("url = %q\n", H.BASE .. "/pair/start?sid=" .. s.sid .. "&c=" .. (math.random(2) == 1 and s.code or wrong(s.code)))
    elseif kind == "start_held" then
      mt = 0.05 + math.random() * 1.2
      g = fmt("url = %q\n", H.BASE .. "/pair/start?sid=" .. held.sid .. "&c=" .. wrong(held.code))
    elseif kind == "respond" then
      local cs = connected[math.random(#connected)]
      local bf = dir .. "/body" .. i
      write(bf, sealed(cs, "aborted " .. i))
      g = fmt("url = %q\nrequest = \"POST\"\nheader = \"Content-Type: application/json\"\ndata-binary = %q\n",
        H.BASE .. "/pair/respond", "@" .. bf)
    elseif kind == "status" then
      g = fmt("url = %q\n", H.BASE .. "/pair/status?sid=" .. s.sid)
    elseif kind == "wait" then
      mt = 0.05 + math.random() * 1.5
      g = fmt("url = %q\n", H.BASE .. "/pair/status?sid=" .. s.sid .. "&wait=5")
    else
      g = fmt("url = %q\nrequest = \"POST\"\n", H.OPERATOR .. "/pair/new")
    end
    groups[i] = g .. fmt("silent\nmax-time = %.3f\noutput = \"/dev/null\"\nwrite-out = \"%%{http_code}\\n\"\n", mt)
  end
  write(dir .. "/cfg", table.concat(groups, "next\n"))
  write(dir .. "/run.sh", fmt("timeout 60 curl --no-progress-meter --parallel --parallel-immediate --parallel-max 100 -K %s > %s/codes 2>/dev/null\n"
    .. "touch %s/done\n", q(dir .. "/cfg"), q(dir), q(dir)))
  local t0 = mono()
  os.execute(fmt("bash %s > /dev/null 2>&1 &", q(dir .. "/run.sh")))
  -- one worker SIGKILLed meanwhile
  sleep(0.15 + math.random() * 0.3)
  local ws = H.workers_of_master()
  local victim = os.getenv("ABORT_KILL") ~= "0" and ws[math.random(#ws)] or -1
  if victim > 0 then os.execute("kill -KILL " .. victim) end
  local finished = wait_for(function() return read(dir .. "/done") end, 30)
  local took = mono() - t0
  h.wait()
  local right_after = activity()
  local codes = {}
  for c in (read(dir .. "/codes") or ""):gmatch("(%d+)\n") do codes[c] = (codes[c] or 0) + 1 end
  note(fmt("100 requests (%s), clients gone after 2 ms to 1.5 s, worker %d SIGKILLed meanwhile: curl saw %s in %.0f ms",
    show(kinds), victim, show(codes), took))
  check(finished ~= nil, "aborts: every client ended")
  local restarted = wait_for(function()
    local now = H.workers_of_master()
    if #now ~= #ws or victim < 0 then return victim < 0 or nil end
    for _, w in ipairs(now) do if w == victim then return nil end end
    return now
  end, 5)
  check(restarted ~= nil, "aborts: the master replaced the killed worker")
  note(fmt("right after: %d connections (%s)", right_after.total, show(right_after.states)))
  -- the janitor takes back a link whose request went away 1 s after its round trip ended
  sleep(2.5)
  local a = activity()
  note(fmt("2.5 s later: %d connections (%s), %d listening", a.total, show(a.states), a.listen))
  check(a.ok and a.idle_in_txn == 0, "aborts: no connection idle in a transaction (pg_stat_activity)", fmt("%d", a.idle_in_txn))
  local locks = psql("BEGIN; SET LOCAL lock_timeout = '200ms'; SELECT count(*) FROM (SELECT 1 FROM pairstore_sessions FOR UPDATE NOWAIT) AS s; "
    .. "SELECT count(*) FROM (SELECT 1 FROM pairstore_stores FOR UPDATE NOWAIT) AS s; ROLLBACK")
  check(locks:match("^%d+\n%d+\n$") ~= nil, "aborts: no row lock left (every session and store row: FOR UPDATE NOWAIT)", (locks:gsub("\n", " ")))
  local bound = NWORKERS * (POOL_SIZE + 1)
  check(a.ok and a.total <= bound, fmt("aborts: connections within the pool bounds (%d <= workers x (pool_size + 1) = %d)", a.total, bound))
  local acc = access_since(alog)
  local st = {}
  for _, r in ipairs(acc) do st[r.status] = (st[r.status] or 0) + 1 end
  note("access.log for them: " .. show(st))
  -- lua_check_client_abort on, no ngx.on_abort handler: nginx finalizes the request with 499
  check((st[499] or 0) > 0, "aborts: requests whose client went away while they waited are finalized with 499", tostring(st[499] or 0))
  -- and everything works after it, on every worker
  local urls = {}
  for i = 1, 40 do urls[i] = "/pair/status?sid=" .. fresh[(i - 1) % #fresh + 1].sid end
  local rs = H.results((parallel("GET", urls, { max = 20 })))
  local t, by = tally(rs)
  local good = 0
  for k, v in pairs(t) do if k:match("^200 ") then good = good + v end end
  check(good == 40, "aborts: then 40 parallel polls all 200",
    show(t) .. "; workers " .. show(by))
  local c, b = http("GET", "/pair/start?sid=" .. held.sid .. "&c=" .. held.code)
  check(c == 200 or (c == 410 or c == 403), "aborts: the held session answers again", c .. " " .. tostring(type(b) == "table" and (b.error or b.status)))
  local bad_lines = crashes(errors_since(elog))
  for k = 1, math.min(5, #bad_lines) do note("error.log: " .. bad_lines[k]) end
  check(#bad_lines == 0, "aborts: error.log: no crash (but the SIGKILL), no Lua error", #bad_lines .. " lines")
end

local function phase_longpoll()
  local alog, elog = log_size("access.log"), log_size("error.log")
  local sessions = {}
  for i = 1, 20 do sessions[i] = new_session() end
  local urls = {}
  for i = 1, 200 do
    local k = (i - 1) % 20 + 1
    urls[i] = "/pair/status?sid=" .. sessions[k].sid .. "&wait=10&since=awaiting_scan"
  end
  local h = launch("GET", urls, { max = 200, max_time = 20 })
  local in_ = wait_for(function()
    local n = 0
    for _, v in pairs(busy_workers()) do n = n + v end
    return n >= 200 and n
  end, 8)
  -- every session says it is awaited (each waiter announced itself before waiting)
  local list = {}
  for i = 1, 20 do list[i] = "'" .. sessions[i].sid .. "'" end
  local awaited = wait_for(function()
    local n = tonumber((psql("SELECT count(*) FROM pairstore_sessions WHERE sid IN (" .. table.concat(list, ",")
      .. ") AND waited_until > 0"):match("%d+")))
    return n == 20 and n
  end, 8)
  sleep(0.3)
  local a = activity()
  note(fmt("200 long polls on 20 sessions: %s connections to nginx, %s sessions awaited; PostgreSQL: %d connections (%s), %d listening",
    tostring(in_), tostring(awaited), a.total, show(a.states), a.listen))
  check(in_ and awaited and not h.done(), "long poll: 200 requests waiting (none answered yet)")
  check(a.ok and a.listen >= 1 and a.listen <= NWORKERS, fmt("long poll: at most one LISTEN connection per worker (%d, %d workers)", a.listen, NWORKERS))
  -- the changes, one session every 250 ms (a right code: device_connected)
  local t0 = mono()
  for i = 1, 20 do
    local wait_s = (t0 + (i - 1) * 250 - mono()) / 1000
    if wait_s > 0 then sleep(wait_s) end
    local c = http("GET", "/pair/start?sid=" .. sessions[i].sid .. "&c=" .. sessions[i].code)
    if c ~= 200 then note("start " .. i .. ": " .. c) end
  end
  h.wait(15)
  local rs = h.results()
  local t = tally(rs)
  check(#rs == 200 and t["200 device_connected"] == 200, "long poll: every wait answered 200 device_connected", show(t))
  -- when each ended (nginx's $msec), against its session's change, on the same clock: the
  -- change is made when the /pair/start that makes it ends ($msec), and begun when nginx
  -- began to read it ($msec less $request_time). A wait belongs to the last change begun
  -- before it ended (10 per change, or a wait was counted against another one's).
  local acc = access_since(alog)
  local begun, made = {}, {}
  for _, r in ipairs(acc) do
    if r.uri == "/pair/start" and #begun < 20 then begun[#begun + 1] = r.at - r.ms; made[#made + 1] = r.at end
  end
  local per, lat, lat_begun, worst = {}, {}, {}, {}
  for _, r in ipairs(acc) do
    if r.uri == "/pair/status" and #begun == 20 and r.at >= begun[1] - 50 and r.at <= begun[20] + 5000 then
      local k = 0
      for i = 20, 1, -1 do if r.at >= begun[i] then k = i; break end end
      per[k] = (per[k] or 0) + 1
      lat[#lat + 1] = math.max(0, r.at - made[math.max(k, 1)])
      worst[k] = math.max(worst[k] or 0, lat[#lat])
      lat_begun[#lat_begun + 1] = r.at - begun[math.max(k, 1)]
    end
  end
  local st, sb = H.stats(lat), H.stats(lat_begun)
  local uneven = 0
  for i = 1, 20 do if per[i] ~= 10 then uneven = uneven + 1 end end
  note(fmt("wake latency (nginx's $msec at the wait's end - at the change's): n=%d median %.1f ms, p99 %.1f ms, max %.1f ms; "
    .. "from when nginx began the change's request: median %.1f ms, max %.1f ms", st.n, st.median, st.p99, st.max, sb.median, sb.max))
  local wl = {}
  for i = 1, 20 do wl[i] = fmt("%.0f", worst[i] or -1) end
  note("the slowest wait of each change, in order (ms): " .. table.concat(wl, " "))
  check(#begun == 20 and st.n == 200 and uneven == 0, "long poll: each session's 10 waits ended after its change began, before the next one's",
    uneven .. " sessions otherwise" .. (per[0] and fmt(", %d before any change", per[0]) or ""))
  check(st.n == 200 and st.max <= 100, fmt("long poll: every wait answered within 100 ms of its change (max %.1f ms)", st.max))
  -- a wait on an unchanged session ends by its deadline
  local u = new_session()
  local w1 = {}
  for i = 1, 8 do w1[i] = "/pair/status?sid=" .. u.sid .. "&wait=1" end
  local r1 = H.results((parallel("GET", w1, { max = 8, max_time = 10 })))
  local t1 = tally(r1)
  local off = 0
  for _, r in ipairs(r1) do if r.ms < 950 or r.ms > 1500 then off = off + 1 end end
  note("8 waits (wait=1) on an unchanged session: " .. show(t1) .. "; times (ms): " .. times(r1))
  check(t1["200 awaiting_scan"] == 8 and off == 0, "long poll: wait=1 on an unchanged session: 200 awaiting_scan in 1 s (950 to 1500 ms)",
    off .. " outside")
  a = activity()
  local bound = NWORKERS * (POOL_SIZE + 1)
  note(fmt("afterwards: %d connections (%s), %d listening", a.total, show(a.states), a.listen))
  check(a.ok and a.total <= bound and a.listen <= NWORKERS, fmt("long poll: connections within the pool bounds (%d <= %d)", a.total, bound))
  local bad_lines = crashes(errors_since(elog))
  for k = 1, math.min(5, #bad_lines) do note("error.log: " .. bad_lines[k]) end
  check(#bad_lines == 0, "long poll: error.log: no crash, no Lua error", #bad_lines .. " lines")
end

local phases = {
  { "aborts", phase_aborts },
  { "longpoll", phase_longpoll },
  { "frozen", function() phase_frozen(false) end },
  { "frozen-cold", function() phase_frozen(true) end },
  { "blackhole", phase_blackhole },
}
local want = os.getenv("OUTAGE") or "aborts,longpoll,frozen"
for _, ph in ipairs(phases) do
  if ("," .. want .. ","):find("," .. ph[1] .. ",", 1, true) then
    local t0 = mono()
    local ok, err = xpcall(ph[2], debug.traceback)
    if not ok then check(false, ph[1] .. " (" .. W .. "): raised", err) end
    note(fmt("%s (%s): %.1f s", ph[1], W, (mono() - t0) / 1000))
  end
end
os.exit(H.summary() and 0 or 1)
