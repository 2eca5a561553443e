--- spec/bench/worker.lua — the child processes of spec/bench/bench.lua (issue 5).
--
--   contend PATH SID N DURABLE GOFILE OUT   N updates of SID, started together when GOFILE
--                                           appears; each increments benchCounter. SID may
--                                           be @FILE: the sids listed there (one a line),
--                                           updated in turn. PATH may be a PostgreSQL target,
--                                           then an 8th argument names the store.
--   hold PATH SID DURABLE READY             takes the lock (update of SID), writes its pid to
--                                           READY from inside the mutator, then sleeps there
--                                           until it is SIGKILLed (60 s at most).
--   wait PATH SID DURABLE WAITING OUT       writes WAITING, then one update of SID; records
--                                           the monotonic time its mutator ran (= got the lock).
--   rss PATH OUT                            peak RSS of a process using the store at PATH;
--                                           also its RSS before and after `require "pairstore"`.
--   rss_list PATH OUT                       peak RSS of one list_all of the store at PATH.
--   rss_pg TARGET STORE OUT                 RSS of a process that opens a PostgreSQL target
--                                           (libpq loaded then) and uses it, and its peak.
--
-- Results go to OUT as a Lua chunk (`return {...}`), written to a temp name and renamed.

-- VmRSS and VmHWM (kB) of this process, read first thing: the interpreter alone, then with
-- pairstore required (and nothing else: the bench's own modules come after).
local function vm()
  local f = assert(io.open("/proc/self/status", "r"))
  local s = f:read("a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)")), tonumber(s:match("VmHWM:%s*(%d+)"))
end
local RSS_BARE = vm()
local pairstore = require "pairstore"
local RSS_REQUIRED = vm()
local bu = require "benchutil"
local common = require "common"

local fmt = string.format
local exists, bump = common.exists, common.bump

local function write_atomic(path, text)
  local tmp = path .. ".part"
  local f = assert(io.open(tmp, "wb"))
  f:write(text)
  f:close()
  assert(os.rename(tmp, path))
end


local function num_list(t)
  local parts = {}
  for i = 1, #t do parts[i] = fmt("%.9f", t[i]) end
  return "{" .. table.concat(parts, ",") .. "}"
end

local mode = arg[1]

if mode == "contend" then
  local path, sid, n, durable, go, out = arg[2], arg[3], tonumber(arg[4]), arg[5] == "1", arg[6], arg[7]
  local sids = { sid }
  if sid:sub(1, 1) == "@" then
    sids = {}
    for line in io.lines(sid:sub(2)) do sids[#sids + 1] = line end
  end
  local store = pairstore.open(path, { durable = durable, store = arg[8] })
  write_atomic(out .. ".ready", tostring(bu.getpid()))
  local deadline = bu.mono() + 60
  while not exists(go) do
    if bu.mono() > deadline then error("contend: no go signal") end
    bu.sleep(0.0002)
  end
  local t_enter
  local function inc(s)
    t_enter = bu.mono()
    s.benchCounter = (s.benchCounter or 0) + 1
  end
  local starts, enters, ends = {}, {}, {}
  local ok, errs, last_err = 0, 0, nil
  for i = 1, n do
    t_enter = nil
    local t0 = bu.mono()
    local r, err = store:update(sids[(i - 1) % #sids + 1], inc)
    local t1 = bu.mono()
    if r then
      ok = ok + 1
      starts[ok], enters[ok], ends[ok] = t0, t_enter, t1
    else
      errs = errs + 1
      last_err = tostring(err)
    end
  end
  write_atomic(out, fmt("return { ok = %d, errors = %d, last_error = %q, start = %s, enter = %s, finish = %s }\n",
    ok, errs, last_err or "", num_list(starts), num_list(enters), num_list(ends)))

elseif mode == "hold" then
  local path, sid, durable, ready = arg[2], arg[3], arg[4] == "1", arg[5]
  local store = pairstore.open(path, { durable = durable })
  local _, err = store:update(sid, function()
    write_atomic(ready, tostring(bu.getpid()))
    bu.sleep(60) -- killed long before this ends
  end)
  io.stderr:write("hold: was not killed (", tostring(err), ")\n")
  os.exit(1)

elseif mode == "wait" then
  local path, sid, durable, waiting, out = arg[2], arg[3], arg[4] == "1", arg[5], arg[6]
  local events = {}
  local store = pairstore.open(path, { durable = durable, on_event = function(name) events[#events + 1] = name end })
  write_atomic(waiting, tostring(bu.getpid()))
  local t_call = bu.mono()
  local t_in
  local r, err = store:update(sid, function() t_in = bu.mono() end)
  write_atomic(out, fmt("return { ok = %s, err = %q, t_call = %.9f, t_in = %.9f, events = %q }\n",
    tostring(r ~= nil), tostring(err), t_call, t_in or 0, table.concat(events, ",")))

elseif mode == "rss" then
  local path, out = arg[2], arg[3]
  local store = pairstore.open(path, { max_sessions = 100000 })
  local _, base_hwm = vm()
  local all = assert(store:list_all())
  for i = 1, 20 do assert(store:get(all[(i * 37) % #all + 1].sid)) end
  for i = 1, 5 do assert(store:update(all[(i * 91) % #all + 1].sid, bump)) end
  local active = assert(store:list_active())
  assert(store:prune())
  local rss, hwm = vm()
  -- a process that only opened a file never maps libpq (csrc/pq.c loads it on first use)
  local maps = assert(io.open("/proc/self/maps", "r"))
  local libpq = maps:read("a"):find("libpq", 1, true) ~= nil
  maps:close()
  write_atomic(out, fmt("return { sessions = %d, active = %d, bare_rss_kb = %d, required_rss_kb = %d, "
    .. "base_hwm_kb = %d, hwm_kb = %d, rss_kb = %d, libpq_mapped = %s }\n", #all, #active, RSS_BARE, RSS_REQUIRED,
    base_hwm, hwm, rss, tostring(libpq)))

elseif mode == "rss_list" then
  -- One list_all of a file near max_file_bytes, in a fresh process: its peak memory.
  local path, out = arg[2], arg[3]
  local store = pairstore.open(path, { max_sessions = 100000 })
  local _, base = vm()
  local all = assert(store:list_all())
  write_atomic(out, fmt("return { sessions = %d, base_hwm_kb = %d, hwm_kb = %d }\n", #all, base, select(2, vm())))

elseif mode == "rss_pg" then
  -- A process that opens a PostgreSQL target: libpq is loaded (dlopen) then.
  local target, name, out = arg[2], arg[3], arg[4]
  local store = pairstore.open(target, { store = name })
  local before = vm()
  local s = assert(store:create {})
  assert(store:get(s.sid))
  local ok, msg, code = store:update(s.sid, function() return false end)
  assert(ok ~= nil, tostring(msg) .. " (" .. tostring(code) .. ")") -- (false: deleted)
  local rss, hwm = vm()
  store:close()
  write_atomic(out, fmt("return { bare_rss_kb = %d, required_rss_kb = %d, before_rss_kb = %d, rss_kb = %d, hwm_kb = %d }\n",
    RSS_BARE, RSS_REQUIRED, before, rss, hwm))

else
  io.stderr:write("usage: worker.lua contend|hold|wait|rss|rss_list|rss_pg ...\n")
  os.exit(2)
end
