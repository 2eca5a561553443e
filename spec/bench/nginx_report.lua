--- spec/bench/nginx_report.lua RESULTS: the report of spec/bench/nginx.sh (make bench-nginx)
-- from the ab reports (*.txt) and percentile tables (*.csv) and the frozen-database probes
-- it left in RESULTS; prints the tables, the ratios against the issue's targets, and one
-- BENCH_NGINX {...} JSON line. Exit 1 when a configuration's requests failed (non-2xx or
-- errors) or the store did not answer again after the database was thawed; the targets are
-- reported, not enforced.
local cjson = require "cjson"

local fmt = string.format
local RES = assert(arg[1], "usage: nginx_report.lua RESULTS")
local ROUNDS = tonumber(os.getenv("ROUNDS")) or 1
local T = tonumber(os.getenv("T")) or 1
local CLIENTS = tonumber(os.getenv("CLIENTS")) or 8
local PROBE_S = tonumber(os.getenv("PROBE_S")) or 3
local QUICK = os.getenv("BENCH_QUICK") == "1"

local PATHS = { "nonblocking", "blocking" }
local PATH_LABEL = { nonblocking = "non-blocking", blocking = "blocking" }
local WORKERS = { 1, 4 }
local OPS = { { key = "status", label = "status poll" }, { key = "start", label = "code check" },
  { key = "create", label = "create" } }

local failures = {}

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function median(t)
  local c = {}
  for _, v in ipairs(t) do if v == v then c[#c + 1] = v end end
  table.sort(c)
  local n = #c
  if n == 0 then return 0 / 0 end
  if n % 2 == 1 then return c[(n + 1) // 2] end
  return (c[n // 2] + c[n // 2 + 1]) / 2
end

-- One ab run: { n, failed, non2xx, rps, mean_ms, taken_s, pct = {[0..100] = ms} } or nil.
local function ab(base)
  local txt = read(base .. ".txt")
  if not txt then return nil end
  local r = {
    n = tonumber(txt:match("Complete requests:%s+(%d+)")) or 0,
    failed = tonumber(txt:match("Failed requests:%s+(%d+)")) or 0,
    non2xx = tonumber(txt:match("Non%-2xx responses:%s+(%d+)")) or 0,
    rps = tonumber(txt:match("Requests per second:%s+([%d.]+)")),
    mean_ms = tonumber(txt:match("Time per request:%s+([%d.]+) %[ms%] %(mean%)")),
    taken_s = tonumber(txt:match("Time taken for tests:%s+([%d.]+)")),
    text = txt,
  }
  if r.n == 0 then
    r.err = txt:match("([^\n]*)%s*$")
    return r
  end
  local pct = {}
  for k, v in (read(base .. ".csv") or ""):gmatch("\n(%d+),([%d.]+)") do pct[tonumber(k)] = tonumber(v) end
  -- (ab's table has an off-by-one at 99% for small runs: a percentile is never below the one before)
  for k = 1, 100 do
    if pct[k] and pct[k - 1] and pct[k] < pct[k - 1] then pct[k] = pct[k - 1] end
  end
  r.pct = pct
  return r
end

-- Several ab runs of one figure, pooled: requests/s (all completed over the longest run),
-- the mean latency (weighted by requests), p50 and p99 (each run's percentile table weighted
-- by its requests).
local function pooled(runs, what)
  local n, failed, sum_ms, taken = 0, 0, 0, 0
  local pts = {}
  for _, r in ipairs(runs) do
    if r.n == 0 or (r.failed or 0) > 0 or (r.non2xx or 0) > 0 then
      failures[#failures + 1] = fmt("%s: %d completed, %d failed, %d non-2xx%s", what, r.n, r.failed or 0,
        r.non2xx or 0, r.err and (" (" .. r.err .. ")") or "")
    end
    if r.n > 0 then
      n = n + r.n
      failed = failed + r.failed + r.non2xx
      sum_ms = sum_ms + r.mean_ms * r.n
      taken = math.max(taken, r.taken_s)
      for k = 1, 100 do
        if r.pct[k] then pts[#pts + 1] = { v = r.pct[k], w = r.n / 100 } end
      end
    end
  end
  if n == 0 then return { rps = 0 / 0, mean = 0 / 0, p50 = 0 / 0, p99 = 0 / 0, n = 0 } end
  table.sort(pts, function(a, b) return a.v < b.v end)
  local total = 0
  for _, p in ipairs(pts) do total = total + p.w end
  local function q(f)
    local acc = 0
    for _, p in ipairs(pts) do
      acc = acc + p.w
      if acc >= f * total - 1e-9 then return p.v end
    end
    return pts[#pts].v
  end
  return { rps = n / taken, mean = sum_ms / n, p50 = q(0.5), p99 = q(0.99), n = n, failed = failed }
end

local function runs_of(dir, name)
  local out = {}
  local single = ab(dir .. "/" .. name)
  if single then out[1] = single return out end
  for i = 0, 63 do
    local r = ab(fmt("%s/%s.%d", dir, name, i))
    if not r then break end
    out[#out + 1] = r
  end
  return out
end

-- figures[path][workers][figure] = { rps, mean, p50, p99 }, medians over rounds
local F = {}
local FIGS = { "status1", "start1", "create1", "status8", "start8", "create8", "static-status", "static-start" }
for _, p in ipairs(PATHS) do
  F[p] = {}
  for _, w in ipairs(WORKERS) do
    F[p][w] = {}
    local per = {}
    for r = 1, ROUNDS do
      local dir = fmt("%s/%d/%s-%d", RES, r, p, w)
      for _, fig in ipairs(FIGS) do
        local runs = runs_of(dir, fig)
        if #runs > 0 then
          per[fig] = per[fig] or { rps = {}, mean = {}, p50 = {}, p99 = {}, max = {} }
          local x = pooled(runs, fmt("round %d, %s, %d worker(s), %s", r, p, w, fig))
          for k, v in pairs(x) do if per[fig][k] then table.insert(per[fig][k], v) end end
          local mx = 0
          for _, run in ipairs(runs) do
            local m = tonumber(run.text:match("\nTotal:[^\n]-(%d+)%s*\n")) or 0
            if m > mx then mx = m end
          end
          table.insert(per[fig].max, mx)
        else
          failures[#failures + 1] = fmt("round %d, %s, %d worker(s): no %s figure", r, p, w, fig)
        end
      end
    end
    for fig, t in pairs(per) do
      F[p][w][fig] = { rps = median(t.rps), mean = median(t.mean), p50 = median(t.p50), p99 = median(t.p99),
        max = math.max(table.unpack(t.max)) }
    end
  end
end

local NaN = 0 / 0
local function get(p, w, fig) return F[p][w][fig] or { rps = NaN, mean = NaN, p50 = NaN, p99 = NaN, max = NaN } end

local p = print
p("")
p(fmt("nginx example over HTTP (ab, loopback, a new connection per request), PostgreSQL store (private cluster,"))
p(fmt("unix socket, synchronous_commit on)%s: %d round(s) x %d s per figure, medians; %s s in all; load average at",
  QUICK and " (BENCH_QUICK=1)" or "", ROUNDS, T, read(RES .. "/elapsed") and read(RES .. "/elapsed"):gsub("%s+$", "") or "?"))
p(fmt("the end %s (2 shared cores: the figures move by tens of %% between runs; judge the ratios, taken within a round)",
  (read(RES .. "/loadavg") or "?"):gsub("%s+$", "")))
p("")
p(fmt("%-12s %-7s %-12s | %-33s | %-33s", "", "", "", "one client (latency ms)", CLIENTS .. " clients at once"))
p(fmt("%-12s %-7s %-12s | %7s %7s %7s %8s | %7s %7s %7s %8s", "request", "workers", "path", "req/s", "mean", "p50",
  "p99", "req/s", "mean", "p50", "p99"))
for _, op in ipairs(OPS) do
  for _, w in ipairs(WORKERS) do
    for _, path in ipairs(PATHS) do
      local a, b = get(path, w, op.key .. "1"), get(path, w, op.key .. "8")
      p(fmt("%-12s %-7d %-12s | %7.0f %7.2f %7.2f %8.2f | %7.0f %7.2f %7.2f %8.2f", op.label, w, PATH_LABEL[path],
        a.rps, a.mean, a.p50, a.p99, b.rps, b.mean, b.p50, b.p99))
    end
  end
end
p("")
p(fmt("The static page (GET /pair) on the same server, one client, while %d clients poll the status or check codes (ms)", CLIENTS))
p(fmt("%-7s %-12s | %-31s | %-31s", "", "", "during status polls", "during code checks"))
p(fmt("%-7s %-12s | %7s %7s %7s %7s | %7s %7s %7s %7s", "workers", "path", "mean", "p50", "p99", "max", "mean", "p50",
  "p99", "max"))
for _, w in ipairs(WORKERS) do
  for _, path in ipairs(PATHS) do
    local a, b = get(path, w, "static-status"), get(path, w, "static-start")
    p(fmt("%-7d %-12s | %7.2f %7.2f %7.2f %7.0f | %7.2f %7.2f %7.2f %7.0f", w, PATH_LABEL[path], a.mean, a.p50, a.p99,
      a.max, b.mean, b.p50, b.p99, b.max))
  end
end

-- The frozen database.
local FR = {}
p("")
p(fmt("The database frozen (SIGSTOP of every server process) with 2 status polls per worker and 1 create pending:"))
p(fmt("the static page probed with curl for %d s, one request at a time (ms); the pending requests' answers; after", PROBE_S))
p("SIGCONT, 5 status polls")
p(fmt("%-7s %-12s | %6s %8s %9s | %-40s | %s", "workers", "path", "probes", "p50", "max", "pending: status (s)", "after"))
for _, w in ipairs(WORKERS) do
  for _, path in ipairs(PATHS) do
    local d = fmt("%s/frozen/%s-%d", RES, path, w)
    local times, codes = {}, {}
    for line in (read(d .. "/static") or ""):gmatch("[^\n]+") do
      local c, t = line:match("^(%d+) ([%d.]+)")
      if c then
        times[#times + 1] = tonumber(t) * 1000
        codes[c] = (codes[c] or 0) + 1
      end
    end
    local pend = {}
    local files = {}
    for i = 0, 2 * w - 1 do files[#files + 1] = d .. "/pending." .. i end
    files[#files + 1] = d .. "/pending.create"
    for _, f in ipairs(files) do
      local c, t = (read(f) or ""):match("^(%d+) ([%d.]+)")
      if c then pend[#pend + 1] = { c = c, t = tonumber(t) } end
    end
    table.sort(pend, function(a, b) return a.t < b.t end)
    local by = {}
    for _, x in ipairs(pend) do
      local e = by[x.c] or { n = 0, lo = x.t, hi = x.t }
      e.n, e.lo, e.hi = e.n + 1, math.min(e.lo, x.t), math.max(e.hi, x.t)
      by[x.c] = e
    end
    local parts = {}
    for c, e in pairs(by) do parts[#parts + 1] = fmt("%d x %s in %.1f-%.1f", e.n, c == "000" and "none" or c, e.lo, e.hi) end
    table.sort(parts)
    for c, n in pairs(codes) do
      if c ~= "200" then failures[#failures + 1] = fmt("frozen %s, %d worker(s): the static page answered %s %d time(s)", path, w, c, n) end
    end
    local after = tonumber((read(d .. "/after_ok") or ""):match("%d+")) or 0
    if after < 5 then failures[#failures + 1] = fmt("frozen %s, %d worker(s): %d of 5 status polls answered 200 after SIGCONT", path, w, after) end
    local mx = 0
    for _, t in ipairs(times) do if t > mx then mx = t end end
    FR[path .. "-" .. w] = { probes = #times, p50 = median(times), max = mx, after_ok = after, pending = pend }
    p(fmt("%-7d %-12s | %6d %8.2f %9.1f | %-40s | %d/5 200", w, PATH_LABEL[path], #times, median(times), mx,
      table.concat(parts, ", "), after))
  end
end

-- Ratios and targets.
p("")
p("Targets (issue 18; reported, not enforced)")
local targets = {}
local function target(name, value, limit, pass, note, unit)
  targets[#targets + 1] = { name = name, value = value, limit = limit, pass = pass }
  p(fmt("  %s  %-68s %6.2f%s (%s)%s", pass and "MET   " or "MISSED", name, value, unit or "x", limit,
    note and ("  " .. note) or ""))
end
for _, op in ipairs(OPS) do
  for _, w in ipairs(WORKERS) do
    local nb, b = get("nonblocking", w, op.key .. "1").mean, get("blocking", w, op.key .. "1").mean
    local x = nb / b
    target(fmt("%s, %d worker(s), one client: non-blocking / blocking, mean", op.label, w), x, "<= 1.3x", x <= 1.3,
      fmt("%.2f vs %.2f ms", nb, b))
  end
end
for _, op in ipairs(OPS) do
  local nb, b = get("nonblocking", 4, op.key .. "8").rps, get("blocking", 4, op.key .. "8").rps
  local x = nb / b
  target(fmt("%s, 4 workers, %d clients: throughput non-blocking / blocking", op.label, CLIENTS), x, ">= 1.0x",
    x >= 1.0, fmt("%.0f vs %.0f req/s", nb, b))
end
local fs = FR["nonblocking-4"]
if fs then
  target("database frozen, 4 workers, non-blocking: the static page's max", fs.max / 1000, "< 0.1 s", fs.max < 100,
    nil, " s")
end
for _, f in ipairs(failures) do p("  FAILED: " .. f) end

-- (figures rounded for the JSON line)
local function round(v)
  if type(v) == "number" then
    if v ~= v or v == math.huge then return cjson.null end
    return math.floor(v * 1000 + 0.5) / 1000
  elseif type(v) == "table" then
    local o = {}
    for k, x in pairs(v) do o[k] = round(x) end
    return o
  end
  return v
end
local doc = { version = 1, quick = QUICK, rounds = ROUNDS, seconds = T, clients = CLIENTS, figures = {}, frozen = FR,
  targets = targets, failures = #failures > 0 and failures or nil }
for _, path in ipairs(PATHS) do
  for _, w in ipairs(WORKERS) do doc.figures[path .. "-" .. w] = F[path][w] end
end
print("BENCH_NGINX " .. cjson.encode(round(doc)))
os.exit(#failures == 0 and 0 or 1)
