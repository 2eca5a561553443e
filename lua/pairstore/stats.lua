--- pairstore.stats: a snapshot of a store for its operator (`pairstore stats`).
--
--   local stats = require "pairstore.stats"
--   local snap = assert(stats.snapshot(store))      -- or stats.snapshot(store, { timeout_ms = 2000 })
--   print(stats.prometheus(snap))   -- the same as a text exposition (node_exporter textfile)
--
-- What it reads: first, for a file store, beside the file (never through a symlink, never
-- blocking): its size, the lock sentinel's holder and age, the corrupt files moved aside;
-- then the sessions in one read (list_all: by status, the oldest live one's age); for
-- PostgreSQL, on the store's own connection (bounded by opts.timeout_ms, default 5000): the
-- server reached, whether it is the primary, its version, and the store's rows. Nothing is changed (the read prunes as any read does), and no sid, code,
-- key, sender or account is part of it. It blocks: for the CLI and scripts, not for a
-- request path.

local core = require "pairstore.core"
local metrics = require "pairstore.metrics"

local type, error, pairs, ipairs, tostring = type, error, pairs, ipairs, tostring
local fmt = string.format

local stats = {}

local OPTIONS = { timeout_ms = "number" }

-- Whether a process of this pid runs on this host (a PID namespace may hide it: then false).
local function alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  f:close()
  return true
end

--- The snapshot: a table (JSON-able) | nil, message, code. opts (optional): timeout_ms
-- (PostgreSQL: the server's part, default 5000).
function stats.snapshot(store, opts)
  if type(store) ~= "table" or not rawget(store, "_core") then
    error("pairstore.stats.snapshot: store must be a pairstore store", 2)
  end
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then error("pairstore.stats.snapshot: opts must be a table", 2) end
  for k, v in pairs(opts) do
    if not OPTIONS[k] then error(fmt("pairstore.stats.snapshot: unknown option %q", tostring(k)), 2) end
    if type(v) ~= OPTIONS[k] then error(fmt("pairstore.stats.snapshot: option %s must be a %s", k, OPTIONS[k]), 2) end
  end
  local backend = store:backend()
  -- Beside the file first: the lock as it is when called (the read below takes it too).
  local f, fmsg, fcode
  if backend == "file" then
    f, fmsg, fcode = core.files_beside(store.path)
    if not f then return nil, fmsg, fcode end
  end
  local all, msg, code = store:list_all()
  if not all then return nil, msg, code end
  local now, nmsg, ncode = store:now()
  if not now then return nil, nmsg, ncode end
  local by = {}
  for _, st in ipairs(core.STATUSES) do by[st] = 0 end
  by.other = 0
  local live, oldest = 0, nil
  for _, s in ipairs(all) do
    local known = by[s.status] ~= nil and s.status ~= "other"
    by[known and s.status or "other"] = by[known and s.status or "other"] + 1
    if not core.is_terminal(type(s.status) == "string" and s.status or "") then
      live = live + 1
      if type(s.createdAtMs) == "number" and (not oldest or s.createdAtMs < oldest) then oldest = s.createdAtMs end
    end
  end
  local snap = {
    backend = backend, store = store.path, now_ms = now,
    sessions = { total = #all, live = live, by_status = by, oldest_live_age_ms = oldest and math.max(0, now - oldest) or nil },
  }
  if backend == "file" then
    local wall = core.now_ms()
    snap.file = f.file and { size = f.file.size, kind = f.file.kind } or false
    if f.lock then
      snap.lock = { pid = f.lock.pid, age_ms = wall - f.lock.mtime_ms, kind = f.lock.kind,
        alive = f.lock.pid and alive(f.lock.pid) or nil }
    else
      snap.lock = false
    end
    snap.corrupt = { count = f.corrupt.count }
    if f.corrupt.newest then
      snap.corrupt.newest = f.corrupt.newest
      snap.corrupt.newest_age_ms = f.corrupt.newest_ms > 0 and wall - f.corrupt.newest_ms or nil
      snap.corrupt.newest_size = f.corrupt.newest_size
    end
  elseif backend == "postgresql" then
    local srv, smsg = store._core:server(opts.timeout_ms or 5000)
    if srv then
      snap.server = { reached = srv.reached, host = srv.host, port = srv.port, primary = srv.primary,
        version = srv.version }
      snap.rows = srv.rows
    else
      snap.server = { error = smsg }
    end
  end
  return snap
end

--- What stands for the snapshot of a store that could not be read (snapshot's nil, message,
-- code): its exposition says so (pairstore_store_up 0, and for PostgreSQL pairstore_pg_up 0)
-- instead of saying nothing, which would leave a textfile collector's last file in place.
function stats.down(store, message, code)
  if type(store) ~= "table" or not rawget(store, "_core") then
    error("pairstore.stats.down: store must be a pairstore store", 2)
  end
  return { backend = store:backend(), store = store.path, down = { message = message, code = code } }
end

--- The snapshot (or stats.down's) as a text exposition (format 0.0.4), for node_exporter's
-- textfile collector.
function stats.prometheus(snap)
  if type(snap) ~= "table" or (type(snap.sessions) ~= "table" and type(snap.down) ~= "table") then
    error("pairstore.stats.prometheus: snap must be a stats.snapshot() or stats.down()", 2)
  end
  local t = metrics.text()
  local function pg_up(v)
    t:family("pairstore_pg_up", "gauge", "1 when the PostgreSQL server could be asked for its state.")
    t:sample("pairstore_pg_up", nil, v)
  end
  if snap.down then
    metrics.render_sessions(t, nil, false)
    if snap.backend == "postgresql" then pg_up(0) end
    return t:done()
  end
  local counts = {}
  for k, v in pairs(snap.sessions.by_status) do counts[k] = v end
  metrics.render_sessions(t, nil, counts)
  t:family("pairstore_live_sessions", "gauge", "Live (not ended) sessions.")
  t:sample("pairstore_live_sessions", nil, snap.sessions.live)
  t:family("pairstore_oldest_live_session_age_seconds", "gauge", "Age of the oldest live session (0: none).")
  t:sample("pairstore_oldest_live_session_age_seconds", nil, (snap.sessions.oldest_live_age_ms or 0) / 1000)
  if snap.backend == "file" then
    t:family("pairstore_file_bytes", "gauge", "Size of the sessions file (0: absent).")
    t:sample("pairstore_file_bytes", nil, snap.file and snap.file.size or 0)
    t:family("pairstore_lock_held", "gauge", "1 while the lock sentinel exists (a transaction holds it).")
    t:sample("pairstore_lock_held", nil, snap.lock and 1 or 0)
    t:family("pairstore_lock_age_seconds", "gauge", "Age of the lock sentinel (0: not held).")
    t:sample("pairstore_lock_age_seconds", nil, snap.lock and math.max(0, snap.lock.age_ms) / 1000 or 0)
    t:family("pairstore_corrupt_files", "gauge", "Corrupt sessions files moved aside (PATH.corrupt-<ms>).")
    t:sample("pairstore_corrupt_files", nil, snap.corrupt.count)
    t:family("pairstore_corrupt_newest_age_seconds", "gauge", "Age of the newest corrupt file moved aside (0: none).")
    t:sample("pairstore_corrupt_newest_age_seconds", nil, (snap.corrupt.newest_age_ms or 0) / 1000)
  elseif snap.server then
    pg_up(snap.server.error and 0 or 1)
    if not snap.server.error then
      t:family("pairstore_pg_primary", "gauge", "1 when the server reached is the primary (not in recovery).")
      t:sample("pairstore_pg_primary", nil, snap.server.primary and 1 or 0)
      t:family("pairstore_pg_server_info", "gauge",
        "The PostgreSQL server reached (always 1): reached as libpq reached it; host, port: its own address.")
      t:sample("pairstore_pg_server_info", { { "reached", snap.server.reached or "" }, { "host", snap.server.host },
        { "port", snap.server.port }, { "version", snap.server.version } }, 1)
      if snap.rows then
        t:family("pairstore_rows", "gauge", "The store's rows in pairstore_sessions.")
        t:sample("pairstore_rows", nil, snap.rows)
      end
    end
  end
  return t:done()
end

--- A duration for people: "850 ms", "42 s", "14m52s", "3h05m", "2d04h".
function stats.duration(ms)
  local floor = math.floor
  if ms < 1000 then return fmt("%d ms", floor(ms)) end
  local s = floor(ms / 1000)
  if s < 60 then return fmt("%d s", s) end
  if s < 3600 then return fmt("%dm%02ds", floor(s / 60), s % 60) end
  if s < 86400 then return fmt("%dh%02dm", floor(s / 3600), floor(s % 3600 / 60)) end
  return fmt("%dd%02dh", floor(s / 86400), floor(s % 86400 / 3600))
end

--- The snapshot as rows { label, text } for a table.
function stats.rows(snap)
  local d = stats.duration
  local rows = {}
  local function add(k, v) rows[#rows + 1] = { k, v } end
  add("store", fmt("%s (%s)", snap.store, snap.backend))
  local parts = {}
  for _, st in ipairs(core.STATUSES) do parts[#parts + 1] = fmt("%s %d", st, snap.sessions.by_status[st]) end
  if snap.sessions.by_status.other > 0 then parts[#parts + 1] = fmt("other %d", snap.sessions.by_status.other) end
  add("sessions", fmt("%d (%d live): %s", snap.sessions.total, snap.sessions.live, table.concat(parts, ", ")))
  add("oldest live", snap.sessions.oldest_live_age_ms and d(snap.sessions.oldest_live_age_ms) or "none")
  if snap.backend == "file" then
    add("file", snap.file and fmt("%d bytes%s", snap.file.size, snap.file.kind ~= "file" and " (a " .. snap.file.kind .. "!)" or "")
      or "absent (no session written yet)")
    if snap.lock then
      add("lock", fmt("held by pid %s%s for %s", tostring(snap.lock.pid or "?"),
        snap.lock.alive == false and " (no such process on this host)" or "", d(math.max(0, snap.lock.age_ms))))
    else
      add("lock", "free")
    end
    local c = snap.corrupt
    add("corrupt", c.count == 0 and "none" or fmt("%d moved aside; the newest %s (%s ago, %s bytes)", c.count, c.newest,
      c.newest_age_ms and d(math.max(0, c.newest_age_ms)) or "?", tostring(c.newest_size or "?")))
  elseif snap.server then
    if snap.server.error then
      add("server", "not asked: " .. snap.server.error)
    else
      add("server", fmt("%s, %s (PostgreSQL %s; its own address: %s%s)", snap.server.reached or "?",
        snap.server.primary and "primary" or "standby (in recovery)", snap.server.version,
        snap.server.host == "local" and "a unix socket" or snap.server.host,
        snap.server.port ~= "" and ":" .. snap.server.port or ""))
      add("rows", snap.rows and tostring(snap.rows) or "? (no pairstore_sessions table)")
    end
  end
  return rows
end

return stats
