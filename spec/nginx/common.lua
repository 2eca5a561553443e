-- common.lua: what the checks of `make test-nginx` share (driver.lua, outage.lua): the
-- server's coordinates from the environment run.sh sets, the check/note lines and their
-- count, real HTTP through curl (one request, many in parallel, their -w lines), sessions
-- made through the operator's server, sealed responses, a lock held by a process outside
-- nginx (holder.lua), probes of the page and a route without the store (outage.lua,
-- failover.lua), error.log lines that say something broke. require "common" with
-- spec/nginx/ on package.path (the checks of `make test-metrics`, spec/metrics/driver.lua,
-- too).
local pairstore = require "pairstore"
local crypto = require "pairstore.crypto"
local core = require "pairstore.core"
local cjson = require "cjson"

local fmt = string.format
local env = function(k) return (assert(os.getenv(k), "spec/nginx: " .. k .. " is not set")) end

local PORT = env("NGX_PORT")
local PREFIX = env("NGX_PREFIX")
-- (a directory of this script's own in NGX_WORK: the scripts run one after the other)
local WORK = (io.popen("mktemp -d " .. env("NGX_WORK") .. "/run.XXXXXX"):read("l"))
assert(WORK, "spec/nginx: cannot make a directory in NGX_WORK")
local MASTER = tonumber(env("NGX_MASTER_PID"))
local BACKEND = env("BACKEND")
local TARGET = env("PAIRSTORE_TARGET")
local PAYLOADS = env("PAIRSTORE_PAYLOAD_DIR")
local TREE = env("TREE")
local HOLD_MS = tonumber(os.getenv("HOLD_MS") or "2000")
local BASE = "http://127.0.0.1:" .. PORT
-- The operator's server (POST /pair/new, GET /metrics), apart from the public one.
local OPERATOR = "http://127.0.0.1:" .. env("NGX_OPERATOR_PORT")
-- A path (on the public server; /pair/new and /metrics on the operator's), or a whole URL
-- as it is.
local function url_of(path)
  if path:find("^https?://") then return path end
  return ((path == "/pair/new" or path == "/metrics") and OPERATOR or BASE) .. path
end

local passed, failed = 0, 0
local function check(ok, what, detail)
  if ok then passed = passed + 1 else failed = failed + 1 end
  print(fmt("%-4s [%s] %s%s", ok and "ok" or "FAIL", BACKEND, what, detail and ("  (" .. detail .. ")") or ""))
  return ok
end
local function note(s) print(fmt("     [%s] %s", BACKEND, s)) end

-- Helpers -------------------------------------------------------------------------------------

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function write(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

local function sh(cmd)
  local p = io.popen(cmd)
  local out = p:read("a")
  p:close()
  return out
end

local function sleep(s) os.execute(fmt("sleep %.3f", s)) end

local seq = 0
local function tmpname(tag)
  seq = seq + 1
  return fmt("%s/%s-%d", WORK, tag, seq)
end

local function decode(s)
  local ok, v = pcall(cjson.decode, s or "")
  return ok and v or nil
end

local function stats(ms)
  local c = {}
  for i = 1, #ms do c[i] = ms[i] end
  table.sort(c)
  local n = #c
  if n == 0 then return { n = 0, median = 0 / 0, p99 = 0 / 0, max = 0 / 0 } end
  local function at(p) return c[math.max(1, math.min(n, math.ceil(p * n)))] end
  return { n = n, median = n % 2 == 1 and c[(n + 1) // 2] or (c[n // 2] + c[n // 2 + 1]) / 2,
    p99 = at(0.99), max = c[n] }
end

-- -w: status, seconds, worker, then the body's file
local WOUT = "%{http_code} %{time_total} %header{x-pairstore-worker} %{filename_effective}\\n" -- (curl expands the \\n)

-- curl's arguments that send body (a JSON text, from a file), or "" for none.
local function body_args(body)
  if not body then return "" end
  local bf = tmpname("req")
  write(bf, body)
  return " -H 'Content-Type: application/json' --data-binary @" .. q(bf)
end

-- One request: status, body (decoded JSON, or the raw text), ms, worker pid, raw text.
local function http(method, path, opts)
  opts = opts or {}
  local out = tmpname("body")
  local data = body_args(opts.body)
  local line = sh(fmt("curl -s --max-time %d -X %s%s %s -o %s -w %s %s 2>&1", opts.max_time or 20, method, data,
    opts.curl or "", q(out), q(WOUT), q(url_of(path))))
  local code, secs, worker = line:match("^(%d+) ([%d.]+) (%d*)")
  local raw = read(out) or ""
  os.remove(out)
  return tonumber(code) or 0, decode(raw) or raw, (tonumber(secs) or 0) * 1000, tonumber(worker), raw
end

-- n requests in parallel (curl --parallel, max at once): a list of { code, body, ms, worker }.
local function parallel(method, urls, opts)
  opts = opts or {}
  local cfg, outs = {}, {}
  for i, u in ipairs(urls) do
    outs[i] = tmpname("par")
    cfg[#cfg + 1] = fmt("url = %q\noutput = %q\n", url_of(u), outs[i])
  end
  local cf = tmpname("cfg")
  write(cf, table.concat(cfg))
  local data = body_args(opts.body)
  local cmd = fmt("curl -s --no-progress-meter --max-time %g --parallel --parallel-immediate --parallel-max %d -X %s%s -w %s -K %s",
    opts.max_time or 30, opts.max or 50, method, data, q(WOUT), q(cf))
  if opts.background then
    -- started now, collected later with the returned function
    local res = tmpname("bg")
    os.execute(cmd .. " > " .. q(res) .. " 2> " .. q(res .. ".err") .. " &") -- (stderr apart: the -w lines only)
    return function()
      return read(res) or ""
    end, outs
  end
  return sh(cmd .. " 2> " .. q(cf .. ".err")), outs
end

-- The -w lines of a parallel run, with their bodies: a list of { code, ms, worker, body }.
local function results(text)
  local r = {}
  for line in text:gmatch("[^\n]+") do
    local code, secs, worker, file = line:match("^(%d+) ([%d.]+) (%d*) (.*)$")
    if code then
      local raw = read(file) or ""
      r[#r + 1] = { code = tonumber(code), ms = tonumber(secs) * 1000, worker = tonumber(worker), body = decode(raw) or raw }
    else
      note("curl said: " .. line)
    end
  end
  return r
end

local function tally(rs)
  local t, workers = {}, {}
  for _, r in ipairs(rs) do
    local k = r.code .. " " .. tostring(type(r.body) == "table" and (r.body.error or r.body.status) or "?")
    t[k] = (t[k] or 0) + 1
    if r.worker then workers[r.worker] = (workers[r.worker] or 0) + 1 end
  end
  return t, workers
end

local function show(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. " ×" .. t[k] end
  return table.concat(parts, ", ")
end

local function count(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n
end

local function new_session()
  local code, body = http("POST", "/pair/new")
  assert(code == 201 and type(body) == "table" and body.sid, "POST /pair/new: " .. code .. " " .. tostring(body))
  return body
end

-- The phone's response: sealed to the key in the pairing URL's fragment.
local function sealed(s, plaintext)
  local pk = s.url:match("#pk=([%w_-]+)$")
  local box = assert(crypto.seal { pk_gateway = pk, sid = s.sid, plaintext = plaintext, aead = "aes-256-gcm" })
  return cjson.encode { v = 1, sid = s.sid, pk_d = box.pk_d, nonce = box.nonce, ct = box.ct }
end

local function wrong(code) return code == "000000" and "999999" or "000000" end

local function workers_of_master()
  local t = {}
  local s = read(fmt("/proc/%d/task/%d/children", MASTER, MASTER)) or ""
  for pid in s:gmatch("%d+") do t[#t + 1] = tonumber(pid) end
  return t
end

-- A store of our own on the same target, for looking at what nginx left (file: the JSON
-- must parse; both: the sessions are there).
local function look()
  local st = pairstore.open(TARGET)
  local all, msg = st:list_all()
  st:close()
  return all, msg
end

local function holder(sid, hold_ms)
  local dir = tmpname("hold")
  assert(os.execute("mkdir " .. q(dir)))
  os.execute(fmt("timeout 30 lua5.4 %s %s %s %d %s > %s/out 2>&1 &", q(TREE .. "/spec/nginx/holder.lua"), q(TARGET),
    sid, hold_ms, q(dir), q(dir)))
  local deadline = core.mono_ms() + 10000
  while not read(dir .. "/held") do
    if core.mono_ms() > deadline then error("the holder did not get the lock: " .. (read(dir .. "/out") or "")) end
    sleep(0.01)
  end
  local h = { dir = dir, held = tonumber(read(dir .. "/held")), held_wall = tonumber(sh("date +%s%3N")) }
  function h.wait()
    local d = core.mono_ms() + 30000
    while not read(dir .. "/released") and core.mono_ms() < d do sleep(0.02) end
    sleep(0.05)
    h.released = tonumber(read(dir .. "/released") or "")
    return h.released, read(dir .. "/out")
  end
  return h
end

local function wait_for(fn, seconds)
  local d = core.mono_ms() + seconds * 1000
  repeat
    local v = fn()
    if v then return v end
    sleep(0.05)
  until core.mono_ms() > d
  return nil
end

-- error.log lines that say something broke (not a store failure the handler mapped to 503).
local function crashes(text)
  local bad = {}
  for line in text:gmatch("[^\n]+") do
    local ours = line:find("exited on signal 9", 1, true) -- (the tests' own SIGKILL)
    if not ours and (line:find("exited on signal", 1, true)
      or line:find("[alert]", 1, true) or line:find("[emerg]", 1, true) or line:find("[crit]", 1, true)
      or line:find("lua entry thread aborted", 1, true) or line:find("pairing_gateway:", 1, true)) then
      bad[#bad + 1] = line
    end
  end
  return bad
end

-- Probes of what must never wait on the database: the static page and a Lua route that
-- answers without the store (the handler's own 400), each from a curl of its own, one probe
-- after the other (the next one starts when the last one ended, 25 a second at most: curl
-- --rate), one new connection each (so that every worker gets some), until stopped:
-- :stop() -> { code, ms, worker, exit (curl's exit code), at (the probe's start, ms after
-- the first, about) } list.
local function probes(sid)
  local dir = tmpname("probe")
  assert(os.execute("mkdir " .. q(dir)))
  local run = { "echo $$ > " .. q(dir .. "/pid"), "trap 'kill $(jobs -p) 2>/dev/null; exit 0' TERM" }
  for k, url in ipairs { BASE .. "/pair?sid=" .. sid, BASE .. "/pair/status?sid=nothex" } do
    local cfg = {}
    for _ = 1, 1500 do cfg[#cfg + 1] = fmt("url = %q\noutput = \"/dev/null\"\n", url) end
    write(fmt("%s/cfg%d", dir, k), table.concat(cfg))
    -- (stdbuf: each -w line written as it comes, so that stopping curl loses none)
    run[#run + 1] = fmt("stdbuf -oL curl -s --no-progress-meter --rate 25/s --max-time 10 -H 'Connection: close' "
      .. "-w '%%{http_code} %%{time_total} %%{exitcode} %%header{x-pairstore-worker}\\n' -K %s > %s 2>/dev/null &",
      q(fmt("%s/cfg%d", dir, k)), q(fmt("%s/out%d", dir, k)))
  end
  run[#run + 1] = "wait"
  write(dir .. "/run.sh", table.concat(run, "\n") .. "\n")
  os.execute(fmt("timeout 120 bash %s > /dev/null 2>&1 &", q(dir .. "/run.sh")))
  local p = {}
  function p.stop()
    local pid = wait_for(function() return tonumber(read(dir .. "/pid") or "") end, 5)
    if pid then os.execute(fmt("kill -TERM %d 2>/dev/null", pid)) end
    sleep(0.1)
    local r = {}
    for k = 1, 2 do
      local i = 0
      for code, secs, exit, worker in (read(fmt("%s/out%d", dir, k)) or ""):gmatch("(%d+) ([%d.]+) (%d+) (%d*)\n") do
        i = i + 1
        r[#r + 1] = { code = tonumber(code), ms = tonumber(secs) * 1000, worker = tonumber(worker), exit = tonumber(exit),
          at = i * 40 }
      end
    end
    return r
  end
  return p
end

local function summary()
  print(fmt("%d passed, %d failed", passed, failed))
  return failed == 0
end

return {
  fmt = fmt, env = env, PORT = PORT, PREFIX = PREFIX, WORK = WORK, MASTER = MASTER, BACKEND = BACKEND,
  TARGET = TARGET, PAYLOADS = PAYLOADS, TREE = TREE, HOLD_MS = HOLD_MS, BASE = BASE, OPERATOR = OPERATOR,
  url_of = url_of, check = check, note = note, summary = summary,
  q = q, read = read, write = write, sh = sh, sleep = sleep, tmpname = tmpname, decode = decode,
  stats = stats, WOUT = WOUT, body_args = body_args, http = http, parallel = parallel, results = results,
  tally = tally, show = show, count = count, new_session = new_session, sealed = sealed, wrong = wrong,
  workers_of_master = workers_of_master, look = look, holder = holder, wait_for = wait_for,
  probes = probes, crashes = crashes,
}
