--- pairstore.metrics: Prometheus metrics of a store's operations, lock waits and events.
--
--   local metrics = require("pairstore.metrics").new()              -- per process
--   local metrics = require("pairstore.metrics").new { dict = ngx.shared.pairstore_metrics }
--   local store = pairstore.open(target, { metrics = metrics })
--   ngx.print(metrics:render(store))                                  -- text format 0.0.4
--
-- The store records every public operation (its op name, the code it returned, its
-- duration), how long it waited for a lock another held, and every on_event event. Counts live
-- in a Lua table (per process) or in an nginx lua_shared_dict (shared by every worker, kept
-- across `nginx -s reload`): one atomic incr per value on the request path, no Lua lock;
-- a key the dict has no room for is counted in pairstore_metrics_dropped_total, never
-- evicts another (safe_add). Labels hold only names from a fixed set and result codes:
-- never a sid, a code, a key, a sender or an account.

local core = require "pairstore.core"
local ptext = require "pairstore.text"
local visible, text_scan, hidden_char = ptext.visible, ptext.scan, ptext.hidden_char

local type, error, pairs, ipairs, tostring, setmetatable = type, error, pairs, ipairs, tostring, setmetatable
local fmt, concat, sort, floor = string.format, table.concat, table.sort, math.floor
local clock = core.clock

local M = { CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8" }

-- Duration buckets (seconds): a cached get (20 µs) to a lock or statement timeout (30 s).
local BUCKETS = { "0.00001", "0.00002", "0.00005", "0.0001", "0.0002", "0.0005", "0.001", "0.002",
  "0.005", "0.01", "0.02", "0.05", "0.1", "0.2", "0.5", "1", "2", "5", "10", "30" }
local BOUND = {}
for i, b in ipairs(BUCKETS) do BOUND[i] = tonumber(b) end
local NB = #BUCKETS
M.BUCKETS, M.BUCKET_LABELS = BOUND, BUCKETS

-- The operations a store records (Store:_txn's names, plus wait), and the events the core
-- sends (each is rendered, 0 until it happens). An op outside these, or a result code or
-- event name that is not 1 to 40 of [a-z_] (the core's names always are), counts as "other".
local OPS = { "create", "get", "update", "transition", "verify_code", "register_failed_code", "consume",
  "respond", "reject", "list", "prune", "wait", "now", "export", "import" }
local EVENTS = { "lock_broken", "corrupt", "invalid_dropped", "orphans_swept", "commit_confirmed", "reconnected",
  "failover", "pruned" }
local STATUSES = core.STATUSES
M.OPS, M.EVENTS = OPS, EVENTS

local KNOWN_OP, KNOWN_EVENT, KNOWN_STATUS = {}, {}, {}
for _, n in ipairs(OPS) do KNOWN_OP[n] = true end
for _, n in ipairs(EVENTS) do KNOWN_EVENT[n] = true end
for _, n in ipairs(STATUSES) do KNOWN_STATUS[n] = true end

local function code_label(code)
  if type(code) == "string" and #code <= 40 and not code:find("[^a-z_]") and code ~= "" then return code end
  return "other"
end

-- Text format 0.0.4: a label value escapes \, " and newline; HELP text \ and newline. Any
-- other character that would act on a terminal or hide text (a server's version may hold
-- one: pairstore.text says which) is written as the text of its visible form (\e, \x07,
-- \u{202e}, with the backslash escaped): never raw into a file an operator reads.
local LABEL_ESC = { ["\\"] = "\\\\", ['"'] = '\\"' }
local function esc_label(s)
  s = tostring(s)
  if not s:find("[^\32-\126]") then return (s:gsub('[\\"]', LABEL_ESC)) end
  local parts = {}
  text_scan(s, function(kind, piece, cp)
    if kind == "ascii" then
      parts[#parts + 1] = piece:gsub('[\\"]', LABEL_ESC)
    elseif cp == 10 then
      parts[#parts + 1] = "\\n"
    elseif kind == "byte" or hidden_char(cp) then
      parts[#parts + 1] = visible(piece):gsub("\\", "\\\\")
    else
      parts[#parts + 1] = piece
    end
  end)
  return table.concat(parts)
end
local function esc_help(s) return (s:gsub("[\\\n]", { ["\\"] = "\\\\", ["\n"] = "\\n" })) end
M.escape_label = esc_label

-- A sample value: integers as such, other numbers in the shortest form that reads back.
local function num(v)
  if v ~= v then return "NaN" end
  if v == math.huge then return "+Inf" elseif v == -math.huge then return "-Inf" end
  if v == floor(v) and v > -2 ^ 53 and v < 2 ^ 53 then return fmt("%d", v) end
  local s = fmt("%.15g", v)
  if tonumber(s) ~= v then s = fmt("%.17g", v) end
  return s
end
M.format_number = num

-- Exposition builder ------------------------------------------------------------------------

local Text = {}
Text.__index = Text

--- A text exposition under construction: t:family(name, type, help) then t:sample(name,
-- labels, value) (labels: an array of { name, value } pairs, or nil); t:done() -> the text.
function M.text() return setmetatable({ lines = {}, seen = {} }, Text) end

function Text:family(name, kind, help)
  if self.seen[name] then error("pairstore.metrics: family " .. name .. " twice", 2) end
  self.seen[name] = true
  local l = self.lines
  l[#l + 1] = "# HELP " .. name .. " " .. esc_help(help)
  l[#l + 1] = "# TYPE " .. name .. " " .. kind
end

function Text:sample(name, labels, value)
  local s = name
  if labels and #labels > 0 then
    local parts = {}
    for i, kv in ipairs(labels) do parts[i] = kv[1] .. '="' .. esc_label(kv[2]) .. '"' end
    s = s .. "{" .. concat(parts, ",") .. "}"
  end
  self.lines[#self.lines + 1] = s .. " " .. num(value)
end

function Text:done() return concat(self.lines, "\n") .. "\n" end

-- Storage ---------------------------------------------------------------------------------------
-- Keys: "o|OP|RESULT" operations, "h|OP|I" duration bucket I (not cumulative; NB + 1 is
-- above the last bound), "s|OP" duration sum, "w|I" and "ws" the lock wait's, "e|EVENT".

local DROPPED = "dropped"

local Metrics = {}
Metrics.__index = Metrics
Metrics.__name = "pairstore.metrics"

local OPTIONS = { dict = true, log = true }

--- A new set of metrics. opts (optional): dict, an nginx lua_shared_dict (ngx.shared.NAME)
-- given to these metrics alone; log, function(message) told when the dict is full (inside
-- nginx, default ngx.log at WARN level).
function M.new(opts)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then error("pairstore.metrics.new: opts must be a table", 2) end
  for k in pairs(opts) do
    if not OPTIONS[k] then error(fmt("pairstore.metrics.new: unknown option %q", tostring(k)), 2) end
  end
  local dict = opts.dict
  if dict ~= nil and (type(dict) ~= "table" and type(dict) ~= "userdata" or type(dict.incr) ~= "function"
      or type(dict.safe_add) ~= "function" or type(dict.get_keys) ~= "function") then
    error("pairstore.metrics.new: dict must be a lua_shared_dict (ngx.shared.NAME)", 2)
  end
  if opts.log ~= nil and type(opts.log) ~= "function" then error("pairstore.metrics.new: log must be a function", 2) end
  local log = opts.log
  if not log then
    local ngx = rawget(_G, "ngx")
    if type(ngx) == "table" and type(ngx.log) == "function" then
      log = function(msg) ngx.log(ngx.WARN, msg) end
    else
      log = function() end
    end
  end
  local m = setmetatable({ dict = dict, log = log, keys = {}, dropped_here = 0 }, Metrics)
  if dict then
    dict:safe_add(DROPPED, 0) -- (kept from before a reload)
  else
    m.t = {}        -- key -> number
    m.ops = {}      -- op -> result -> count
    m.hist = {}     -- op -> { bucket counts..., sum = s }
    m.whist = { sum = 0 }
    for i = 1, NB + 1 do m.whist[i] = 0 end
  end
  return m
end

-- Adds v at key in the dict: one incr when the key exists (always, after its first use);
-- otherwise safe_add (which never evicts) then incr. No room: counted and logged.
local function dict_add(m, key, v)
  local dict = m.dict
  local ok, err = dict:incr(key, v)
  if ok then return end
  if err == "not found" then
    local added, aerr = dict:safe_add(key, 0)
    if added or aerr == "exists" then
      ok, err = dict:incr(key, v)
      if ok then return end
    else
      err = aerr
    end
  end
  m.dropped_here = m.dropped_here + 1
  dict:incr(DROPPED, 1)
  if m.dropped_here == 1 or m.dropped_here % 1000 == 0 then
    m.log(fmt("pairstore.metrics: a count was dropped (%s): the lua_shared_dict is full; give it more room (%d dropped by this process)",
      tostring(err), m.dropped_here))
  end
end

-- The key strings of an op, made once.
local function keys_of(m, op)
  local k = m.keys[op]
  if not k then
    k = { res = {}, sum = "s|" .. op }
    for i = 1, NB + 1 do k[i] = "h|" .. op .. "|" .. i end
    m.keys[op] = k
  end
  return k
end

local function bucket(secs)
  local i = 1
  while i <= NB and secs > BOUND[i] do i = i + 1 end
  return i
end

--- Records one operation: op (a name from metrics.OPS, else "other"), result ("ok" or a
-- code), seconds it took.
function Metrics:observe(op, result, secs)
  if not KNOWN_OP[op] then op = "other" end
  if result == nil then result = "other" end -- (nil with no code: no operation returns that)
  local i = bucket(secs)
  if self.dict then
    local k = keys_of(self, op)
    local rk = k.res[result]
    if not rk then
      rk = "o|" .. op .. "|" .. code_label(result)
      k.res[result] = rk
    end
    dict_add(self, rk, 1)
    dict_add(self, k[i], 1)
    dict_add(self, k.sum, secs)
    return
  end
  local r = self.ops[op]
  if not r then r = {}; self.ops[op] = r end
  result = r[result] and result or code_label(result)
  r[result] = (r[result] or 0) + 1
  local h = self.hist[op]
  if not h then
    h = { sum = 0 }
    for j = 1, NB + 1 do h[j] = 0 end
    self.hist[op] = h
  end
  h[i] = h[i] + 1
  h.sum = h.sum + secs
end

--- Records a lock wait of secs seconds (one per operation that waited).
function Metrics:lock_waited(secs)
  local i = bucket(secs)
  if self.dict then
    dict_add(self, "w|" .. i, 1)
    dict_add(self, "ws", secs)
    return
  end
  local h = self.whist
  h[i] = h[i] + 1
  h.sum = h.sum + secs
end

--- Counts an event (a name the core sends); n occurrences (default 1).
function Metrics:event(name, n)
  if not KNOWN_EVENT[name] then name = code_label(name) end
  n = n or 1
  if self.dict then return dict_add(self, "e|" .. name, n) end
  local k = "e|" .. name
  self.t[k] = (self.t[k] or 0) + n
end

--- An on_event listener that counts each event, then calls fn (the store's own listener).
function Metrics:listener(fn)
  return function(name, info)
    self:event(name)
    if fn then return fn(name, info) end
  end
end

-- The outcome of a store call as a result label: "ok", or its code.
local function result_of(...)
  local v = ...
  if v ~= nil then return "ok" end
  local code = select(3, ...)
  return code
end

--- The store calls this around each public operation: records it and returns what the
-- operation returned. t0: clock() when it began. prune's count of removed sessions is
-- also counted as the event "pruned".
function Metrics:done(op, t0, ...)
  local secs = clock() - t0
  self:observe(op, result_of(...), secs)
  if op == "prune" then
    local n = ...
    if type(n) == "number" and n > 0 then self:event("pruned", n) end
  end
  return ...
end

-- Reading and rendering -------------------------------------------------------------------

-- Every key and value: a table key -> number (a snapshot; with a dict, read key by key).
function Metrics:snapshot()
  local t = {}
  if self.dict then
    for _, k in ipairs(self.dict:get_keys(0)) do
      local v = self.dict:get(k)
      if type(v) == "number" then t[k] = v end
    end
    return t
  end
  for k, v in pairs(self.t) do t[k] = v end
  for op, r in pairs(self.ops) do
    for res, n in pairs(r) do t["o|" .. op .. "|" .. res] = n end
  end
  for op, h in pairs(self.hist) do
    for i = 1, NB + 1 do if h[i] > 0 then t["h|" .. op .. "|" .. i] = h[i] end end
    t["s|" .. op] = h.sum
  end
  for i = 1, NB + 1 do if self.whist[i] > 0 then t["w|" .. i] = self.whist[i] end end
  t.ws = self.whist.sum
  t[DROPPED] = self.dropped_here
  return t
end

local function sorted_keys(t)
  local ks = {}
  for k in pairs(t) do ks[#ks + 1] = k end
  sort(ks)
  return ks
end

-- Histogram samples from non-cumulative counts (c[1..NB+1]) and a sum.
local function histogram(text, name, labels, c, sum)
  local acc = 0
  for i = 1, NB + 1 do
    acc = acc + (c[i] or 0)
    local l = {}
    for j, kv in ipairs(labels) do l[j] = kv end
    l[#l + 1] = { "le", BUCKETS[i] or "+Inf" }
    text:sample(name .. "_bucket", l, acc)
  end
  text:sample(name .. "_sum", labels, sum or 0)
  text:sample(name .. "_count", labels, acc)
end

--- The sessions by status of a store, in one read (list_all): counts, or nil, message, code.
-- Statuses outside the known ones count as "other". (This read is recorded as a list, as
-- any other; inside nginx it waits for a lock cooperatively, as any other.)
function M.sessions_by_status(store)
  local all, msg, code = store:list_all()
  if not all then return nil, msg, code end
  local n = {}
  for _, st in ipairs(STATUSES) do n[st] = 0 end
  n.other = 0
  for _, s in ipairs(all) do
    local st = KNOWN_STATUS[s.status] and s.status or "other"
    n[st] = n[st] + 1
  end
  return n
end

--- Appends pairstore_sessions{status} and pairstore_store_up for store to text (a builder
-- from metrics.text()). counts: the counts already read (nil: read them now; false: the
-- store could not be read).
function M.render_sessions(text, store, counts)
  local err
  if counts == nil then counts, err = M.sessions_by_status(store) end
  text:family("pairstore_sessions", "gauge", "Sessions in the store by status (live and retained), read when scraped.")
  if counts then
    for _, st in ipairs(STATUSES) do text:sample("pairstore_sessions", { { "status", st } }, counts[st] or 0) end
    text:sample("pairstore_sessions", { { "status", "other" } }, counts.other or 0)
  end
  text:family("pairstore_store_up", "gauge", "1 when the store could be read for this scrape, else 0.")
  text:sample("pairstore_store_up", nil, counts and 1 or 0)
  return err
end

--- The text exposition (format 0.0.4) of everything recorded, and, with a store, its
-- sessions by status (one read of the store). extra: a builder's further families
-- (function(text)) to add, or nil.
function Metrics:render(store, extra)
  if store ~= nil and (type(store) ~= "table" or not store._core) then
    error("pairstore.metrics: render(store): store must be a pairstore store", 2)
  end
  local t = self:snapshot()
  local text = M.text()
  local ops, hists, sums, waits, events = {}, {}, {}, {}, {}
  for _, k in ipairs(sorted_keys(t)) do
    local kind, a, b = k:match("^(%a)|([^|]+)|?(.*)$")
    local v = t[k]
    if kind == "o" then ops[#ops + 1] = { a, b, v }
    elseif kind == "h" then
      hists[a] = hists[a] or {}
      hists[a][tonumber(b)] = v
    elseif kind == "s" then sums[a] = v
    elseif kind == "w" then waits[tonumber(a)] = v
    elseif kind == "e" then events[a] = v
    end
  end
  text:family("pairstore_operations_total", "counter", "Store operations by operation and result (ok, or the error code returned).")
  for _, o in ipairs(ops) do text:sample("pairstore_operations_total", { { "op", o[1] }, { "result", o[2] } }, o[3]) end
  text:family("pairstore_operation_duration_seconds", "histogram", "Time a store operation took, lock waits included.")
  for _, op in ipairs(sorted_keys(hists)) do
    histogram(text, "pairstore_operation_duration_seconds", { { "op", op } }, hists[op], sums[op])
  end
  text:family("pairstore_lock_wait_seconds", "histogram",
    "Time an operation waited for the file lock or a row lock held by another (cooperative waits).")
  histogram(text, "pairstore_lock_wait_seconds", {}, waits, t.ws)
  text:family("pairstore_events_total", "counter", "Events of the store (on_event), and sessions removed by prune.")
  local names = {}
  for _, n in ipairs(EVENTS) do names[#names + 1] = n end
  for _, n in ipairs(sorted_keys(events)) do
    if not KNOWN_EVENT[n] then names[#names + 1] = n end
  end
  for _, n in ipairs(names) do text:sample("pairstore_events_total", { { "event", n } }, events[n] or 0) end
  text:family("pairstore_metrics_dropped_total", "counter",
    "Counts that could not be recorded (the lua_shared_dict was full).")
  text:sample("pairstore_metrics_dropped_total", nil, t[DROPPED] or 0)
  if store then M.render_sessions(text, store) end
  if extra then extra(text) end
  return text:done()
end

--- Forgets every count (tests; with a dict, every key of the dict).
function Metrics:reset()
  if self.dict then
    self.dict:flush_all()
    self.dict:flush_expired()
    self.dict:safe_add(DROPPED, 0)
  else
    local fresh = M.new { log = self.log }
    for k, v in pairs(fresh) do self[k] = v end
  end
end

M.clock = clock
Metrics.clock = clock
M.Metrics = Metrics
return M
