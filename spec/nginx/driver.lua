-- driver.lua: the checks of `make test-nginx` against a running nginx serving
-- examples/nginx (started by spec/nginx/run.sh, which passes where it is in the environment).
-- Every request is real HTTP (curl, bounded by --max-time); responses are sealed with
-- pairstore's own crypto (AES-256-GCM, the sid as additional data). Prints one line per
-- check and ends with "N passed, N failed"; exits non-zero on any failure.
package.path = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/?.lua;" .. package.path
local H = require "common"
local core = require "pairstore.core"
local cjson = require "cjson"

local fmt = H.fmt
local PORT, PREFIX, BACKEND, TARGET, PAYLOADS, TREE = H.PORT, H.PREFIX, H.BACKEND, H.TARGET, H.PAYLOADS, H.TREE
local HOLD_MS, BASE = H.HOLD_MS, H.BASE
local check, note, q, read, sh, sleep = H.check, H.note, H.q, H.read, H.sh, H.sleep
local tmpname, stats, http, parallel, results = H.tmpname, H.stats, H.http, H.parallel, H.results
local tally, show, count, new_session, sealed, wrong = H.tally, H.show, H.count, H.new_session, H.sealed, H.wrong
local workers_of_master, look, holder, wait_for, write = H.workers_of_master, H.look, H.holder, H.wait_for, H.write
local url_of = H.url_of

-- The checks ----------------------------------------------------------------------------------

local function check_flow()
  local s = new_session()
  check(s.url:match("^http://127%.0%.0%.1:" .. PORT .. "/pair%?sid=" .. s.sid .. "#pk=[%w_-]+$") ~= nil,
    "POST /pair/new: 201 {sid, code, url}, url = BASE?sid=SID#pk=PK", s.url)
  check(s.code:match("^%d%d%d%d%d%d$") ~= nil, "the operator gets the 6-digit code")
  local code = http("POST", "/pair/new", { curl = "--interface 127.0.0.2" })
  check(code == 403, "POST /pair/new from another address (127.0.0.2): 403 (loopback only)", code)
  local pub = sh(fmt("curl -s --max-time 10 -X POST -o /dev/null -w '%%{http_code}' %s", q(BASE .. "/pair/new")))
  check(pub == "404", "POST /pair/new on the public server: 404 (the operator's server is apart)", pub)

  local path = s.url:match("^http://[^/]+(/[^#]*)")
  local c, _, _, _, raw = http("GET", path)
  check(c == 200 and raw:lower():find("<html", 1, true) ~= nil, "GET /pair?sid=...: 200 with the html page", c)
  local ctype = sh(fmt("curl -s --max-time 10 -o /dev/null -w '%%{content_type}' %s", q(BASE .. path)))
  check(ctype:match("^text/html") ~= nil, "GET /pair: Content-Type text/html", ctype)
  if read(TREE .. "/examples/nginx/html/pair.js") then
    local jc = sh(fmt("curl -s --max-time 10 -o /dev/null -w '%%{http_code} %%{content_type}' %s", q(BASE .. "/pair/pair.js")))
    check(jc:match("^200 text/javascript") ~= nil, "GET /pair/pair.js: 200 text/javascript", jc)
  end

  c = http("GET", "/pair/respond")
  check(c == 405, "GET /pair/respond: 405", c)
  local b
  c, b = http("GET", "/pair/start?sid=" .. s.sid .. "&c=" .. s.code)
  check(c == 200 and b.status == "device_connected", "GET /pair/start with the right code: 200 device_connected", c)
  c, b = http("GET", "/pair/status?sid=" .. s.sid)
  check(c == 200 and b.status == "device_connected" and b.secondaryCode == nil and b.expires_in_ms > 0,
    "GET /pair/status: 200 device_connected, no code, expires_in_ms", c)

  local mnemonic = "legal winner thank year wave sausage worth useful legal winner thank yellow"
  local body = sealed(s, mnemonic)
  c, b = http("POST", "/pair/respond", { body = body })
  check(c == 200 and b.status == "completed", "POST /pair/respond (sealed, AES-256-GCM, sid as AD): 200 completed",
    c .. " " .. tostring(type(b) == "table" and (b.error or b.status) or b))
  local got = read(PAYLOADS .. "/" .. s.sid)
  check(got == mnemonic, "the payload sink holds exactly the sealed plaintext", got and #got .. " bytes" or "absent")
  local mode = sh("stat -c %a " .. q(PAYLOADS .. "/" .. s.sid)):gsub("%s", "")
  check(mode == "600", "the payload file is mode 0600", mode)
  c, b = http("GET", "/pair/status?sid=" .. s.sid)
  check(c == 200 and b.status == "completed" and b.expires_in_ms == 0, "GET /pair/status: completed", c)
  c, b = http("POST", "/pair/respond", { body = body })
  check(c == 409 and b.error == "already_consumed", "the same response again: 409 already_consumed", c)
  c, b = http("POST", "/pair/respond", { body = "not json" })
  check(c == 400 and b.error == "bad_request", "a body that is not JSON: 400 bad_request", c)
  c, b = http("GET", "/pair/start?sid=" .. s.sid .. "&c=12ab")
  check(c == 400 and b.error == "bad_code", "a code that is not 6 digits: 400 bad_code", c)
  return s
end

local function check_wrong_codes()
  local s = new_session()
  local urls = {}
  for i = 1, 100 do urls[i] = "/pair/start?sid=" .. s.sid .. "&c=" .. wrong(s.code) end
  local t0 = core.mono_ms()
  local rs = results((parallel("GET", urls, { max = 50 })))
  local t, workers = tally(rs)
  note(fmt("100 wrong codes, 50 at once: %s in %d ms; workers %s", show(t), core.mono_ms() - t0, show(workers)))
  check(#rs == 100 and t["403 wrong_code"] == 4 and t["403 attempts_exhausted"] == 1 and t["410 rejected"] == 95,
    "100 parallel wrong codes: exactly 5 counted (4× 403 wrong_code, 1× 403 attempts_exhausted), 95× 410 rejected",
    show(t))
  check(count(workers) >= 2, "... answered by several workers", count(workers) .. " workers")
  local c, b = http("GET", "/pair/start?sid=" .. s.sid .. "&c=" .. s.code)
  check(c == 410 and b.error == "rejected", "the right code after that: 410 rejected", c)
end

local function check_parallel_respond()
  local s = new_session()
  local c = http("GET", "/pair/start?sid=" .. s.sid .. "&c=" .. s.code)
  assert(c == 200, "start: " .. c)
  local plaintext = "abandon ability able about above absent absorb abstract absurd abuse access accident"
  local urls = {}
  for i = 1, 50 do urls[i] = "/pair/respond" end
  local rs = results((parallel("POST", urls, { max = 50, body = sealed(s, plaintext) })))
  local t, workers = tally(rs)
  note(fmt("50 copies of one response at once: %s; workers %s", show(t), show(workers)))
  local others = #rs - (t["200 completed"] or 0) - (t["409 already_consumed"] or 0) - (t["410 rejected"] or 0)
  check(#rs == 50 and t["200 completed"] == 1 and others == 0,
    "50 parallel copies of one valid response: exactly one 200, the rest 409/410", show(t))
  check(read(PAYLOADS .. "/" .. s.sid) == plaintext, "... the payload sink holds that one plaintext")
end

-- Another process holds the lock (file: the store's; PostgreSQL: session A's row) for
-- HOLD_MS. Requests that need it wait (cooperatively: ngx.sleep); meanwhile the workers must
-- go on answering requests that do not need it.
local function check_lock_hold()
  local a, b = new_session(), new_session()
  local waiting_url, probe_urls
  if BACKEND == "file" then
    -- the file lock is the whole store's: every store call waits; probes are what the
    -- workers answer without the store: the page, and the handler's own 400
    waiting_url = "/pair/status?sid=" .. a.sid
    probe_urls = { "/pair?sid=" .. b.sid, "/pair/status?sid=nothex" }
  else
    -- a row lock is one session's: session B, and A's read (MVCC), are served
    local c = http("GET", "/pair/start?sid=" .. a.sid .. "&c=" .. a.code)
    assert(c == 200, "start: " .. c)
    waiting_url = "/pair/start?sid=" .. a.sid .. "&c=" .. a.code
    probe_urls = { "/pair/status?sid=" .. b.sid, "/pair/status?sid=" .. a.sid }
  end
  local h = holder(a.sid, HOLD_MS)
  -- Requests needing the lock, 8 at a time, until every worker holds one (ss shows which
  -- worker holds each connection): then any probe answered meanwhile was answered by a
  -- worker with a request waiting on the lock.
  local urls = {}
  for i = 1, 8 do urls[i] = waiting_url end
  local collectors, waiting = {}, 0
  local busy
  repeat
    local at = core.mono_ms()
    collectors[#collectors + 1] = { at = at, collect = parallel("GET", urls, { max = 8, background = true, max_time = 30 }) }
    waiting = waiting + #urls
    sleep(0.1)
    busy = {}
    local out = sh(fmt("ss -Htnp state established '( sport = :%s )' 2>/dev/null", PORT))
    for pid in out:gmatch("pid=(%d+)") do busy[tonumber(pid)] = true end
  until count(busy) >= 4 or waiting >= 96 or core.mono_ms() > h.held + HOLD_MS / 2
  local probes, probe_workers, bad, by_busy, slowest = {}, {}, 0, 0, 0
  local stop = h.held + HOLD_MS - 150
  local i = 0
  while core.mono_ms() < stop do
    i = i + 1
    local c, _, ms, worker = http("GET", probe_urls[i % #probe_urls + 1], { max_time = 10 })
    slowest = math.max(slowest, ms)
    if core.mono_ms() < stop + 100 then -- answered while the lock was still held
      probes[#probes + 1] = ms
      if worker then probe_workers[worker] = (probe_workers[worker] or 0) + 1 end
      if busy[worker] then by_busy = by_busy + 1 end
      if c ~= 200 and c ~= 400 then bad = bad + 1 end
    end
    sleep(0.01)
  end
  local released = h.wait()
  wait_for(function()
    local n = 0
    for _, c in ipairs(collectors) do n = n + select(2, c.collect():gsub("\n", "")) end
    return n >= waiting
  end, 20)
  local rs = {}
  for _, c in ipairs(collectors) do
    for _, r in ipairs(results(c.collect())) do rs[#rs + 1] = r end
  end
  -- when each waiting request ended, by nginx's access log ($msec, the wall clock): none
  -- before the holder was about to let go (its wall clock, taken still holding the lock)
  local releasing = tonumber(read(h.dir .. "/releasing_wall") or "") or math.huge
  local waiter = BACKEND == "file" and '"GET /pair/status" 200 ' or '"GET /pair/start" 200 '
  local ends = {}
  for line in (read(PREFIX .. "/access.log") or ""):gmatch("[^\n]+") do
    if line:find(waiter, 1, true) then
      local secs = tonumber(line:match(" ([%d.]+) worker="))
      if secs and secs * 1000 > h.held_wall then ends[#ends + 1] = secs * 1000 end
    end
  end
  table.sort(ends)
  local first_end = ends[1] or 0
  local t, workers = tally(rs)
  local st = stats(probes)
  local held_for = released and (released - h.held) or -1
  note(fmt("lock held %d ms by another process; %d probes answered meanwhile (%s): median %.1f ms, max %.1f ms; slowest probe sent during the hold %.1f ms",
    held_for, st.n, table.concat(probe_urls, " and "), st.median, st.max, slowest))
  note(fmt("%d requests needing the lock, held by %d of 4 workers: %s; workers %s; probes by workers %s",
    waiting, count(busy), show(t), show(workers), show(probe_workers)))
  check(st.n >= 3 and bad == 0, "probes answered during the hold", st.n .. " probes, " .. bad .. " bad")
  check(st.max < HOLD_MS / 4, fmt("probe latency far below the hold: max %.1f ms < %d ms / 4", st.max, HOLD_MS))
  check(by_busy >= 3, "probes answered by workers that had a request waiting on the lock meanwhile",
    fmt("%d of %d probes; %d of 4 workers had one", by_busy, st.n, count(busy)))
  local want = BACKEND == "file" and "200 awaiting_scan" or "200 device_connected"
  check(#rs == waiting and t[want] == waiting, "the waiting requests complete after the release: " .. want, show(t))
  -- (nginx's $msec is its cached clock, updated when the event loop wakes: on a loaded
  -- machine it may lag by tens of ms; a request that did not wait would end a hold earlier)
  check(#ends == waiting and first_end >= releasing - 100, "... and none before the holder let go (access log)",
    fmt("%d logged; the first %.0f ms after the holder's last moment with the lock", #ends, first_end - releasing))
end

-- A worker SIGKILLed while its request waits on a lock another process holds.
local function check_kill()
  local s = new_session()
  local before = look()
  local h = holder(s.sid, 2500)
  local url = BACKEND == "file" and "/pair/status?sid=" .. s.sid or "/pair/start?sid=" .. s.sid .. "&c=" .. s.code
  local collect = parallel("GET", { url }, { max = 1, background = true, max_time = 20 })
  -- the worker that holds the connection
  local victim = wait_for(function()
    local out = sh(fmt("ss -Htnp state established '( sport = :%s )' 2>/dev/null", PORT))
    return tonumber(out:match("pid=(%d+)"))
  end, 3)
  local workers = workers_of_master()
  local is_worker = false
  for _, w in ipairs(workers) do if w == victim then is_worker = true end end
  if not check(victim and is_worker, "found the worker serving the waiting request", tostring(victim)) then
    h.wait()
    return
  end
  sleep(0.2)
  os.execute("kill -KILL " .. victim)
  local restarted = wait_for(function()
    local ws = workers_of_master()
    if #ws ~= 4 then return nil end
    for _, w in ipairs(ws) do if w == victim then return nil end end
    return ws
  end, 5)
  check(restarted ~= nil, "the master restarted the killed worker (4 workers again)", restarted and table.concat(restarted, " "))
  local log = read(PREFIX .. "/error.log") or ""
  check(log:find("worker process " .. victim .. " exited on signal 9", 1, true) ~= nil, "error.log: exited on signal 9")
  local r = wait_for(function() local t = collect() return t ~= "" and t end, 10) or ""
  note("the killed request: " .. (r:match("^%d+") or "?") .. " (000: the connection was cut)")
  h.wait()
  if BACKEND == "file" then
    local ok = pcall(cjson.decode, read(TARGET) or "")
    check(ok, "the sessions file parses")
  end
  local after, msg = look()
  local have = {}
  for _, x in ipairs(after or {}) do have[x.sid] = true end
  local missing = 0
  for _, x in ipairs(before or {}) do if not have[x.sid] then missing = missing + 1 end end
  check(after and #after >= #before and missing == 0, "the store is intact: every session still there",
    after and (#after .. " sessions, " .. missing .. " missing") or msg)
  local c, b = http("GET", "/pair/start?sid=" .. s.sid .. "&c=" .. s.code)
  check(c == 200 and b.status == "device_connected", "the next request works: start 200", c)
  c, b = http("POST", "/pair/respond", { body = sealed(s, "after the kill") })
  check(c == 200 and b.status == "completed", "... and respond 200 completed", c)
end

-- Per-request time through nginx, one keep-alive connection, one request at a time.
local function sequential(urls, method)
  local cfg = {}
  for _, u in ipairs(urls) do cfg[#cfg + 1] = fmt("url = %q\noutput = \"/dev/null\"\n", url_of(u)) end
  local cf = tmpname("seq")
  write(cf, table.concat(cfg))
  local out = sh(fmt("curl -s --max-time 120 -X %s -w '%%{http_code} %%{time_total}\\n' -K %s", method or "GET", q(cf)))
  local ms, codes = {}, {}
  for code, secs in out:gmatch("(%d+) ([%d.]+)\n") do
    ms[#ms + 1] = tonumber(secs) * 1000
    codes[code] = (codes[code] or 0) + 1
  end
  return ms, codes
end

local function check_timing()
  local s = new_session()
  local c = http("GET", "/pair/start?sid=" .. s.sid .. "&c=" .. s.code)
  assert(c == 200)
  local N = 300
  local function run(what, urls, method, want)
    local ms, codes = sequential(urls, method)
    local st = stats(ms)
    note(fmt("%-44s n=%d  median %.2f ms  p99 %.2f ms  max %.2f ms", what, st.n, st.median, st.p99, st.max))
    check(st.n == #urls and codes[want] == #urls, what .. ": every answer " .. want, show(codes))
  end
  local status, start, new = {}, {}, {}
  for i = 1, N do
    status[i] = "/pair/status?sid=" .. s.sid
    start[i] = "/pair/start?sid=" .. s.sid .. "&c=" .. s.code
  end
  for i = 1, 100 do new[i] = "/pair/new" end
  run("status poll (get + clock)", status, "GET", "200")
  run("code check (right code, connected: locked read)", start, "GET", "200")
  run("create (POST /pair/new: a write)", new, "POST", "201")
end

local function check_log()
  local log = read(PREFIX .. "/error.log") or ""
  local bad = 0
  for line in log:gmatch("[^\n]+") do
    if line:find("lua entry thread aborted", 1, true) or line:find("pairing_gateway:", 1, true)
      or line:find("pairstore:", 1, true) or line:find("[emerg]", 1, true) then
      bad = bad + 1
      if bad <= 5 then note("error.log: " .. line) end
    end
  end
  check(bad == 0, "error.log: no Lua errors, no store failures", bad .. " lines")
end

local steps = {
  { "flow", check_flow },
  { "wrong codes", check_wrong_codes },
  { "parallel respond", check_parallel_respond },
  { "lock hold", check_lock_hold },
  { "kill", check_kill },
  { "timing", check_timing },
  { "log", check_log },
}
local only = os.getenv("ONLY")
for _, step in ipairs(steps) do
  if not only or only:find(step[1], 1, true) then
    local ok, err = xpcall(step[2], debug.traceback)
    if not ok then check(false, step[1] .. ": raised", err) end
  end
end
os.exit(H.summary() and 0 or 1)
