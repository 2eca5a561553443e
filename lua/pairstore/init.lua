--- pairstore: QR device-pairing sessions in one file shared by every process on the machine.
--
-- The public API over the C core `pairstore.core`. Programming errors (wrong argument
-- types, unknown mode or status, unknown option) raise at the caller's level; expected
-- outcomes and runtime failures return `nil, message, code`.

local core = require "pairstore.core"
local compat = require "pairstore.compat"
local attempts = require "pairstore.attempts"

local type, error, pairs, ipairs, setmetatable = type, error, pairs, ipairs, setmetatable
local fmt, tointeger = string.format, compat.tointeger

local pairstore = {
  _VERSION = core._VERSION,
  FILE_VERSION = core.FILE_VERSION,
  DEFAULT_TTL_MS = core.DEFAULT_TTL_MS,
  MIN_TTL_MS = core.MIN_TTL_MS,
  MAX_TTL_MS = core.MAX_TTL_MS,
  TERMINAL_RETENTION_MS = core.TERMINAL_RETENTION_MS,
  MAX_CODE_ATTEMPTS = core.MAX_CODE_ATTEMPTS,
  LOCK_STALE_MS = core.LOCK_STALE_MS,
  LOCK_WAIT_MS = core.LOCK_WAIT_MS,
  MAX_SESSIONS = core.MAX_SESSIONS,
  MAX_FILE_BYTES = core.MAX_FILE_BYTES,
  MAX_SESSION_BYTES = core.MAX_SESSION_BYTES,
  MAX_FIELD_BYTES = core.MAX_FIELD_BYTES,
  MODES = core.MODES,
  STATUSES = core.STATUSES,
}

-- Raise at the level of whoever called the public function.
local function argerror(level, fn, msg)
  error(fmt("pairstore.%s: %s", fn, msg), level + 1)
end

-- The one rule for argument types, everywhere in the API: an argument of another type than
-- the one documented raises, nil included unless it is optional, and nothing is coerced (a
-- number is no string, a numeric string no number). (Contents that come from outside, the
-- code the phone typed or its response, are then checked as data: bad_code, bad_request.)
local function check_type(fn, what, v, want)
  if type(v) ~= want then argerror(3, fn, fmt("%s must be a %s, got %s", what, want, type(v))) end
end

-- A sid argument, as the core checks it (core.sid_error: its one check and message), raised
-- at the level of whoever called the public function.
local function check_sid(fn, sid)
  local msg = core.sid_error(fn, sid)
  if msg then error(msg, 3) end
end

-- The C store of a method's self (a method called with '.' instead of ':' raises clearly).
local function core_of(self, fn)
  local c = type(self) == "table" and rawget(self, "_core")
  if not c then argerror(3, fn, "call it as a method: store:" .. fn .. "(...)") end
  if rawget(self, "_closed") and fn ~= "close" then argerror(3, fn, "the store is closed") end
  return c
end

-- Runs a core function that raises its programming errors without a position, and raises
-- them at the level of whoever called the public function.
local function at_caller(ok, ...)
  if not ok then error((...), 3) end
  return ...
end

--- Clamp a TTL in ms: non-number, <= 0 or NaN gives the default; then [MIN, MAX].
function pairstore.clamp_ttl(ms)
  return core.clamp_ttl(ms)
end

--- Whether v is a sid as every method takes it (32 lowercase hex characters): for request
-- input, which every method would refuse by raising.
function pairstore.is_sid(v)
  return type(v) == "string" and core.is_sid(v)
end

--- The monotonic clock in ms (for deadlines; not a time of day).
function pairstore.mono_ms() return core.mono_ms() end

--- Conventional path of the sessions file under base_dir.
function pairstore.default_path(base_dir)
  if type(base_dir) ~= "string" or base_dir == "" then
    argerror(2, "default_path", "base_dir must be a non-empty string")
  end
  return (base_dir:gsub("/+$", "")) .. "/pair-sessions.json"
end

--- Copy of a session with skGatewayB64 and secondaryCode replaced by "[redacted]".
function pairstore.redact(session)
  if type(session) ~= "table" then argerror(2, "redact", "session must be a table") end
  return core.redact(session)
end

function pairstore.is_terminal(status)
  check_type("is_terminal", "status", status, "string")
  return core.is_terminal(status)
end

--- The pairing URL: the sid in the query, the public key only in the fragment, so that it
-- never reaches a server log.
function pairstore.pairing_url(base_url, session)
  if type(base_url) ~= "string" or base_url == "" then
    argerror(2, "pairing_url", "base_url must be a non-empty string")
  end
  if type(session) ~= "table" or type(session.sid) ~= "string" or type(session.pkGatewayB64) ~= "string" then
    argerror(2, "pairing_url", "session must be a session table")
  end
  return base_url .. "?sid=" .. session.sid .. "#pk=" .. session.pkGatewayB64
end

-- Options -----------------------------------------------------------------------------------

local OPTION_TYPES = {
  now = "function", on_event = "function", rng = "table", durable = "boolean", sleep = "function",
  lock_wait_ms = "number", lock_stale_ms = "number", max_sessions = "number",
  max_file_bytes = "number", max_session_bytes = "number",
  store = "string", connect_timeout_ms = "number", statement_timeout_ms = "number",
  pool_size = "number", pool_backlog = "number", thread_pool = "string", listen_target = "string",
  blocking_wait_ms = "number",
  metrics = "table", -- (pairstore.metrics.new())
}
-- Options that only one kind of store takes.
local FILE_ONLY = { lock_stale_ms = true, max_file_bytes = true }
local PG_ONLY = { store = true, connect_timeout_ms = true, statement_timeout_ms = true,
  pool_size = true, pool_backlog = true, thread_pool = true, listen_target = true }
-- Options that may be false: sleep (never cooperatively), thread_pool (never on a thread).
local MAY_BE_FALSE = { sleep = true, thread_pool = true }
local RNG_HOOKS = { sid = true, secret_key = true, code = true }

-- A count of ms, sessions or bytes: a non-negative integer; raises naming what is wrong, at
-- the level argerror's `level` names (counted from check_count).
local function check_count(level, fn, what, v)
  if v ~= v then argerror(level, fn, what .. " must be a non-negative integer, got NaN") end
  if v < 0 then argerror(level, fn, fmt("%s must not be negative, got %s", what, tostring(v))) end
  if v ~= math.floor(v) then argerror(level, fn, fmt("%s must be an integer, got %s", what, tostring(v))) end
  if not tointeger(v) then argerror(level, fn, fmt("%s is too large: %s", what, tostring(v))) end
end

local function check_options(options, pg)
  if options == nil then return {} end
  if type(options) ~= "table" then argerror(3, "open", "options must be a table") end
  local opts = {}
  for k, v in pairs(options) do
    local want = OPTION_TYPES[k]
    if not want then argerror(3, "open", fmt("unknown option %q", tostring(k))) end
    if pg and FILE_ONLY[k] then argerror(3, "open", fmt("option %s is for file stores only", k)) end
    if not pg and PG_ONLY[k] then argerror(3, "open", fmt("option %s is for PostgreSQL stores only", k)) end
    if type(v) ~= want and not (MAY_BE_FALSE[k] and v == false) then
      argerror(3, "open", fmt("option %s must be a %s", k, want))
    end
    if want == "number" then check_count(4, "open", "option " .. k, v) end
    if (k == "pool_size" or k == "pool_backlog") and (v < 1 or v > 10000) then
      argerror(3, "open", fmt("option %s must be an integer in [1, 10000]", k))
    end
    if k == "thread_pool" and v and (#v == 0 or #v > 64 or v:find("[^%w_%-]")) then
      argerror(3, "open", "option thread_pool must be an nginx thread pool name (letters, digits, _ and -)")
    end
    opts[k] = v
  end
  if opts.rng then
    for k, v in pairs(opts.rng) do
      if not RNG_HOOKS[k] then argerror(3, "open", fmt("unknown rng hook %q", tostring(k))) end
      if type(v) ~= "function" then argerror(3, "open", fmt("rng.%s must be a function", k)) end
    end
  end
  return opts
end

-- The store --------------------------------------------------------------------------------

local Store = {}
Store.__index = Store
Store.__name = "pairstore.store"

--- Whether target names a PostgreSQL database (postgresql://..., postgres://... with the
-- scheme in any case, pg:conninfo) rather than a file. (A target that looks like a URI of
-- another scheme, "scheme:/...", is neither: open refuses it.)
function pairstore.is_pg_target(target)
  return type(target) == "string" and core.is_pg_target(target)
end

--- How pairstore names a target in store.path and in every message: a PostgreSQL target as
-- postgresql://USER@HOST:PORT,.../DB (store NAME), without its password, nor a user or
-- database name that may hold one; nil and why when libpq cannot parse it (quoting nothing
-- of it). A file path as given. The one way a target is shown (the CLI's too).
function pairstore.display_target(target, store_name)
  check_type("display_target", "target", target, "string")
  if store_name ~= nil then check_type("display_target", "store_name", store_name, "string") end
  local refused = core.target_refused(target)
  if refused then return nil, refused end
  if not core.is_pg_target(target) then return target end
  return core.pg_display(target, store_name)
end

--- text with every occurrence of each of targets (texts given as targets: command-line
-- arguments, variables) replaced by its display form (one that libpq cannot parse, or that
-- open refuses, by its scheme and "[target not shown]"), in one pass: what is put in is
-- never looked at again, and text that is none of them is never altered. For a text that
-- echoes what the caller typed (a usage error); pairstore's own messages need none of it.
function pairstore.hide_targets(text, targets)
  check_type("hide_targets", "text", text, "string")
  check_type("hide_targets", "targets", targets, "table")
  local subs = {}
  for i = 1, #targets do
    local t = targets[i]
    check_type("hide_targets", "targets[" .. i .. "]", t, "string")
    -- (the target's display form without its "(store NAME)": the text names its store
    -- itself where it names one, and a target that hides nothing is left as it is)
    local shown = pairstore.display_target(t)
    shown = shown and shown:gsub(" %(store [^()]*%)$", "")
    if not shown then shown = (t:match("^[%a][%w+.-]*:") or "") .. "[target not shown]" end
    if shown ~= t and t ~= "" then subs[#subs + 1] = { t, shown } end
  end
  table.sort(subs, function(a, b) return #a[1] > #b[1] end) -- the longest first
  if #subs == 0 then return text end
  local out, i = {}, 1
  while i <= #text do
    local at, hit = nil, nil
    for _, sub in ipairs(subs) do
      local a = text:find(sub[1], i, true)
      if a and (not at or a < at) then at, hit = a, sub end
    end
    if not at then break end
    out[#out + 1] = text:sub(i, at - 1)
    out[#out + 1] = hit[2]
    i = at + #hit[1]
  end
  out[#out + 1] = text:sub(i)
  return table.concat(out)
end

--- The DDL of the PostgreSQL schema (what sql/pairstore.sql holds).
function pairstore.pg_schema_sql() return core.pg_schema_sql() end

--- Whether target and options would open a store, without raising (for a plugin's schema
-- check) --> true | nil, message
function pairstore.check_options(target, options)
  if type(target) ~= "string" or target == "" then return nil, "target must be a non-empty string" end
  local ok, err = pcall(check_options, options, core.is_pg_target(target))
  if not ok then return nil, (tostring(err):gsub("^[^:]*:%d+: ", "")) end
  return true
end

--- Open the store at target: a file path, or a PostgreSQL target (nothing is read, locked or
-- connected until the first operation).
function pairstore.open(path, options)
  if type(path) ~= "string" or path == "" then argerror(2, "open", "path must be a non-empty string") end
  if path:find("\0", 1, true) then argerror(2, "open", "path must not contain a NUL byte") end
  local refused = core.target_refused(path)
  if refused then argerror(2, "open", refused) end
  local pg = core.is_pg_target(path)
  local last = path:match("[^/]*$")
  if not pg and (last == "" or last == "." or last == "..") then
    argerror(2, "open", "path names a directory: " .. path)
  end
  local opts = check_options(options, pg)
  local m = opts.metrics
  if m then
    if type(m.done) ~= "function" then argerror(2, "open", "option metrics must be pairstore.metrics.new()'s") end
    opts.on_event = m:listener(opts.on_event)
  end
  local c = at_caller(pcall(core.open, path, opts))
  local pgopts = pg and {
    thread_pool = opts.thread_pool == nil and "pairstore" or opts.thread_pool,
    size = opts.pool_size or 8, backlog = opts.pool_backlog or 256,
    wait_ms = opts.lock_wait_ms or core.LOCK_WAIT_MS,
    lease_ms = (opts.lock_wait_ms or core.LOCK_WAIT_MS) + (opts.connect_timeout_ms or 10000)
      + 3 * (opts.statement_timeout_ms or 30000) + 5000,
    store = opts.store or "default",
  }
  return setmetatable({ _core = c, _rng = opts.rng or {}, _now = opts.now, _sleep = opts.sleep,
    _pg = pgopts, _blocking_wait_ms = math.min(opts.blocking_wait_ms or 100, opts.lock_wait_ms or core.LOCK_WAIT_MS),
    _lock_wait_ms = opts.lock_wait_ms or pairstore.LOCK_WAIT_MS, _metrics = m,
    _lock_waited = m and function(secs) m:lock_waited(secs) end, path = c:path() }, Store)
end

-- The cooperative lock wait ---------------------------------------------------------------------

-- The nginx phases in which ngx.sleep yields to the event loop.
local NGX_SLEEP_PHASES = {
  rewrite = true, server_rewrite = true, access = true, content = true, timer = true,
  ssl_cert = true, ssl_session_fetch = true, ssl_client_hello = true, preread = true,
}

-- The nginx phases of a worker that cannot yield: a lock is waited for there with the
-- worker blocked, so only briefly (blocking_wait_ms); run the work from ngx.timer.at(0, fn)
-- to wait longer. (init, in the master, serves nothing yet: it waits as plain Lua does.)
local NGX_BLOCKING_PHASES = {
  init_worker = true, set = true, log = true, header_filter = true, body_filter = true,
  balancer = true, ssl_session_store = true, exit_worker = true,
}

local blocking_sleep = core.sleep

-- Whether this runs in nginx's init_by_lua (the master, before it forks the workers).
local function in_nginx_init()
  local ngx = rawget(_G, "ngx")
  if type(ngx) ~= "table" or type(ngx.get_phase) ~= "function" then return false end
  local ok, phase = pcall(ngx.get_phase)
  return ok and phase == "init"
end

-- How an operation waits for a lock another process holds: the sleep option (false: in
-- the core, blocking), else ngx.sleep where the current nginx phase lets it yield, else in
-- the core. Second result: in an nginx phase that cannot yield, the bound of the wait (ms).
local function sleeper(self)
  local sleep = self._sleep
  if sleep ~= nil then return sleep or nil end
  local ngx = rawget(_G, "ngx")
  if type(ngx) ~= "table" or type(ngx.sleep) ~= "function" or type(ngx.get_phase) ~= "function" then
    return nil
  end
  local ok, phase = pcall(ngx.get_phase)
  if ok and NGX_SLEEP_PHASES[phase] then return ngx.sleep end
  if ok and NGX_BLOCKING_PHASES[phase] then return blocking_sleep, self._blocking_wait_ms end
  return nil
end

local unpack, pack = compat.unpack, compat.pack
local WAIT_BLOCK, WAIT_START, WAIT_CONTINUE = 0, 1, 2

-- Inside nginx, where the phase can yield, a PostgreSQL store's round trips run on a worker
-- thread of nginx's thread pool (ngx.run_worker_thread) while the request yields: the
-- worker's pool of links (pairstore.deferred), made in each worker on first use.
local function deferred(self, sleep)
  local d = self._deferred
  if d ~= nil then return d end
  local pg = self._pg
  local ngx = rawget(_G, "ngx")
  if not pg or not pg.thread_pool or sleep ~= (ngx and ngx.sleep)
     or type(ngx.run_worker_thread) ~= "function" then
    return nil
  end
  local semaphore = require "ngx.semaphore"
  local pool = pg.thread_pool
  d = require("pairstore.deferred").new(self._core, {
    run = function(fname, ...) return ngx.run_worker_thread(pool, "pairstore.thread", fname, ...) end,
    sleep = ngx.sleep,
    now = core.mono_ms,
    waited = self._metrics and self._lock_waited, clock = core.clock, -- (row lock waits, for the metrics)
    semaphore = function() return semaphore.new(0) end,
    every = function(s, fn)
      return ngx.timer.every(s, function(premature) if not premature then fn() end end)
    end,
    spawn = function(fn)
      return ngx.timer.at(0, function(premature) if not premature then fn() end end)
    end,
    exiting = ngx.worker.exiting,
  }, pg)
  self._deferred = d
  return d
end

-- Runs the core's operation name as one transaction. Waiting cooperatively, a busy lock
-- is slept on outside the core (the mutators never yield) and the transaction run again
-- (pairstore.attempts), within the deadline its first attempt set (kept here, per call:
-- other calls on the same store may wait meanwhile). Blocking, the core waits itself and
-- says how long (c:lock_waited) for the metrics.
local function run_txn(self, name, ...)
  local c, m = self._core, self._metrics
  local sleep, bound = sleeper(self)
  local d = sleep and not bound and deferred(self, sleep)
  if d then return d:run(name, ...) end
  if not sleep then
    c:wait_mode(WAIT_BLOCK) -- (a mode left by a call that raised before its transaction)
    local forking = in_nginx_init() -- (nginx's master, about to fork its workers)
    if not m and not forking then return c[name](c, ...) end
    local r = pack(c[name](c, ...))
    local waited = m and c:lock_waited()
    if waited then m:lock_waited(waited) end
    if forking then c:idle() end -- (nothing kept for the workers to inherit)
    return unpack(r, 1, r.n)
  end
  if bound then c:wait_mode(WAIT_CONTINUE, core.mono_ms() + bound, 0) else c:wait_mode(WAIT_START) end
  local args = pack(...)
  local r = attempts.run(function() return pack(c[name](c, unpack(args, 1, args.n))) end,
    function(busy)
      sleep(busy[4] / 1000)
      if self._closed then return pack(nil, "the store was closed while this call waited", "closed") end
      c:wait_mode(WAIT_CONTINUE, busy[5], busy[6])
    end, m and self._lock_waited, core.clock)
  return unpack(r, 1, r.n)
end

-- Metrics (the metrics option, pairstore.metrics): each operation's name, result and time,
-- lock waits included; and each lock wait's time on its own (see run_txn).
function Store:_txn(name, ...)
  local m = self._metrics
  if not m then return run_txn(self, name, ...) end
  local t0 = core.clock()
  return m:done(name, t0, run_txn(self, name, ...))
end

-- Runs the core's operation name (or the watch, name "watch") so that it ends by the
-- monotonic ms deadline, or soon after (DEADLINE_SLACK_MS: one look, even at a deadline
-- already passed): a lock another process holds is waited for cooperatively until then (by
-- the sleep option, ngx.sleep, else blocking sleeps), and a PostgreSQL server's connect and
-- statement timeouts are cut short by it. What store:wait runs.
local DEADLINE_SLACK_MS = 20
function Store:_txn_by(deadline, name, ...)
  local c = self._core
  local sleep = sleeper(self) or core.sleep
  local bound = math.max(deadline, core.mono_ms() + DEADLINE_SLACK_MS)
  c:deadline(bound)
  if name == "watch" then return c:watch(...) end
  c:wait_mode(WAIT_CONTINUE, math.min(deadline, core.mono_ms() + self._lock_wait_ms), 0)
  local args = pack(...)
  local r = attempts.run(function() return pack(c[name](c, unpack(args, 1, args.n))) end,
    function(busy)
      sleep(busy[4] / 1000)
      c:deadline(bound)
      c:wait_mode(WAIT_CONTINUE, busy[5], busy[6])
    end)
  c:wait_mode(WAIT_BLOCK) -- (now, which runs no transaction on a file store, leaves it)
  return unpack(r, 1, r.n)
end

pairstore.Store = Store

local function hook(self, name, want)
  local fn = self._rng[name]
  if not fn then return nil end
  local v = fn()
  if not want(v) then error(fmt("pairstore: rng.%s returned an invalid value", name), 3) end
  return v
end


local CREATE_KEYS = { mode = true, operator = true, ttl_ms = true }
local OPERATOR_KEYS = { channel = true, senderId = true, accountId = true }

--- Create a session: store:create{ mode = "generate"|"import", operator = { channel = ...,
-- senderId = ..., accountId = ... }, ttl_ms = n } --> session | nil, message, code
function Store:create(spec)
  if spec == nil then spec = {} end
  if type(spec) ~= "table" then argerror(2, "create", "argument must be a table") end
  core_of(self, "create")
  for k in pairs(spec) do
    if not CREATE_KEYS[k] then argerror(2, "create", fmt("unknown field %q (mode, operator, ttl_ms)", tostring(k))) end
  end
  local mode = spec.mode == nil and "generate" or spec.mode
  check_type("create", "mode", mode, "string")
  if not core.is_known_mode(mode) then argerror(2, "create", fmt("unknown mode %q", tostring(mode))) end
  local op = spec.operator == nil and { channel = "unknown" } or spec.operator
  if type(op) ~= "table" then argerror(2, "create", "operator must be a table") end
  for k in pairs(op) do
    if not OPERATOR_KEYS[k] then
      argerror(2, "create", fmt("unknown operator field %q (channel, senderId, accountId)", tostring(k)))
    end
  end
  if type(op.channel) ~= "string" or op.channel == "" then
    argerror(2, "create", "operator.channel must be a non-empty string")
  end
  local ctx = {}
  for _, k in ipairs { "channel", "senderId", "accountId" } do
    local v = op[k]
    if v ~= nil then
      if type(v) ~= "string" then argerror(2, "create", "operator." .. k .. " must be a string") end
      ctx[k] = v -- (the core bounds its length: nil, message, "limit")
    end
  end
  if spec.ttl_ms ~= nil and type(spec.ttl_ms) ~= "number" then
    argerror(2, "create", "ttl_ms must be a number")
  end
  local sid = hook(self, "sid", function(v) return type(v) == "string" and #v == 16 end)
  if sid then sid = (sid:gsub(".", function(ch) return fmt("%02x", ch:byte()) end)) end
  local sk = hook(self, "secret_key", function(v) return type(v) == "string" and #v == 32 end)
  local code = hook(self, "code", core.is_code)
  return self:_txn("create", mode, ctx, core.clamp_ttl(spec.ttl_ms), sid, sk, code)
end

--- The session (terminal ones too) --> session | nil, "not_found"
function Store:get(sid)
  core_of(self, "get")
  check_sid("get", sid)
  return self:_txn("get", sid)
end

--- Run fn(copy) under the lock; its result replaces the session (nothing: the edited copy;
-- false: remove it) --> stored session | false | nil, message, code
function Store:update(sid, fn)
  core_of(self, "update")
  check_sid("update", sid)
  if type(fn) ~= "function" then argerror(2, "update", "fn must be a function") end
  return self:_txn("update", sid, fn)
end

function Store:transition(sid, status)
  core_of(self, "transition")
  check_sid("transition", sid)
  check_type("transition", "status", status, "string")
  if not core.is_known_status(status) then argerror(2, "transition", fmt("unknown status %q", tostring(status))) end
  return self:_txn("transition", sid, status)
end

function Store:register_failed_code(sid)
  core_of(self, "register_failed_code")
  check_sid("register_failed_code", sid)
  return self:_txn("register_failed_code", sid)
end

function Store:verify_code(sid, code)
  core_of(self, "verify_code")
  check_sid("verify_code", sid)
  check_type("verify_code", "code", code, "string")
  return self:_txn("verify_code", sid, code)
end

function Store:consume(sid)
  core_of(self, "consume")
  check_sid("consume", sid)
  return self:_txn("consume", sid)
end

function Store:reject(sid)
  core_of(self, "reject")
  check_sid("reject", sid)
  return self:_txn("reject", sid)
end

--- "file" or "postgresql".
function Store:backend() return core_of(self, "backend"):backend() end

--- The JSON text of every session exactly as stored, in list_all's order --> texts | nil,
-- message, code
function Store:export()
  core_of(self, "export")
  return self:_txn("export")
end

--- Adds the sessions (JSON texts, as export gives them) whose sids the store lacks, in one
-- transaction; a sid held with the same text counts as the same, with another fails it all
-- (code "conflict") --> added, same | nil, message, code
function Store:import(texts)
  core_of(self, "import")
  if type(texts) ~= "table" then argerror(2, "import", "texts must be an array of strings") end
  for i = 1, #texts do
    if type(texts[i]) ~= "string" then argerror(2, "import", "texts must be an array of strings") end
  end
  return self:_txn("import", texts)
end

function Store:list_active() core_of(self, "list_active"); return self:_txn("list", true) end
function Store:list_all() core_of(self, "list_all"); return self:_txn("list", false) end
function Store:prune() core_of(self, "prune"); return self:_txn("prune") end

--- The store's clock in integer ms: the `now` option, else the database server's for a
-- PostgreSQL store, else the wall clock --> ms | nil, message, code
function Store:now()
  core_of(self, "now")
  return self:_txn("now")
end

--- The phone's response: one locked transaction (see pairstore.respond).
function Store:respond(sid, body, opts)
  return require("pairstore.respond")(self, sid, body, opts)
end

-- Waiting for a change ------------------------------------------------------------------------

local WAIT_OPTIONS = { timeout_ms = "number", signals = "boolean", since = "table" }
local WATCH_RENEW_MS = 30 * 60 * 1000

local function same(a, b, depth)
  if a == b then return true end
  -- (sessions nest at most MAX_DEPTH levels: deeper than that, nothing is stored)
  if type(a) ~= "table" or type(b) ~= "table" or depth > 600 then return false end
  for k, v in pairs(a) do
    if not same(v, b[k], depth + 1) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

-- A watch that waits cooperatively: its descriptor looked at every POLL_S, sleeping in
-- between (inside nginx, on a file store: the request yields; a change is seen within
-- POLL_S, at the cost of one wake-up per POLL_S per waiting request).
local POLL_S = 0.05
local Polled = {}
Polled.__index = Polled

function Polled:wait(ms, signals)
  local deadline = ms and core.mono_ms() + ms
  while true do
    local ev, msg, code = self.w:wait(0, signals)
    if ev ~= "timeout" then return ev, msg, code end
    local left = deadline and deadline - core.mono_ms()
    if left and left <= 0 then return "timeout" end
    self.sleep(left and math.min(POLL_S, left / 1000) or POLL_S)
  end
end

function Polled:close() return self.w:close() end

-- A watcher of the session sid, made by deadline if given --> w | nil, message, code.
-- Inside nginx where the phase can yield: a PostgreSQL store's from the worker's listening
-- link, a file store's polled.
local function watcher(self, sid, deadline)
  local sleep = sleeper(self)
  local d = sleep and deferred(self, sleep)
  if d then
    return d:watch(sid, self._pg.store, deadline or core.mono_ms() + WATCH_RENEW_MS)
  end
  local w, msg, code
  if deadline then w, msg, code = self:_txn_by(deadline, "watch", sid)
  else w, msg, code = self._core:watch(sid) end
  if w and sleep then return setmetatable({ w = w, sleep = sleep }, Polled) end
  return w, msg, code
end

-- The wait proper, with its watch kept in watch.w (closed by finish_wait). With a timeout,
-- every store call in it ends by the wait's deadline (Store:_txn_by; inside nginx on
-- PostgreSQL, by the store's own timeouts: its round trips run on worker threads).
local function wait_watching(self, sid, opts, timeout, watch)
  local deadline = timeout and core.mono_ms() + timeout
  local function by_deadline(r, msg, code, ...)
    -- what the wait's deadline cut short (a lock, a connection, an answer) is its timeout
    if r == nil and code == "timeout" and deadline and core.mono_ms() >= deadline then return nil, "timeout", "timeout" end
    return r, msg, code, ...
  end
  local sleep = sleeper(self)
  local nginx_pg = sleep and deferred(self, sleep)
  local function call(name, ...)
    if name == "watch" then return by_deadline(watcher(self, sid, deadline)) end
    if deadline and not nginx_pg then return by_deadline(self:_txn_by(deadline, name, ...)) end
    return self:_txn(name, ...)
  end
  -- Watch first, then read: a change in between is queued, not missed.
  local w, wmsg, wcode = call("watch", sid)
  watch.w = w
  local first, msg, code = call("get", sid)
  if not first then return nil, msg, code end
  if not w then return nil, wmsg, wcode end
  -- since: the state the caller last saw; a change made before this call returns at once
  -- (a loop of waits then misses none).
  if opts.since and not same(opts.since, first, 0) then return first end
  -- A watch lasts an hour at most (a PostgreSQL store announces the wait for that long):
  -- a longer wait watches again.
  local renew_at = core.mono_ms() + WATCH_RENEW_MS
  while true do
    if core.mono_ms() >= renew_at then
      w:close()
      w, wmsg, wcode = call("watch", sid)
      watch.w = w
      if not w then return nil, wmsg, wcode end
      renew_at = core.mono_ms() + WATCH_RENEW_MS
    end
    local left = deadline and deadline - core.mono_ms()
    if left and left < 0 then left = 0 end
    if not left or left > renew_at - core.mono_ms() then left = math.max(0, renew_at - core.mono_ms()) end
    -- A session changes by itself when pruning is due for it (it expires, or its retention
    -- ends): the next read after that moment shows it.
    local t, tmsg, tcode
    if self._now or not deadline then t, tmsg, tcode = self:now() else t, tmsg, tcode = call("now") end
    if not t then return nil, tmsg, tcode end
    local due = core.next_prune(first) - t + 1
    if due > 0 and (not left or due < left) then left = due end
    local ev, emsg, ecode = w:wait(left, opts.signals)
    if self._closed then return nil, "the store was closed while this call waited", "closed" end
    if not ev then return nil, emsg, ecode end
    if ev ~= "change" and ev ~= "timeout" then return nil, "signal", "signal", ev end
    local now, nmsg, ncode = call("get", sid)
    if not now then return nil, nmsg, ncode end
    if not same(first, now, 0) then return now end
    if deadline and core.mono_ms() >= deadline then return nil, "timeout", "timeout" end
  end
end

local function finish_wait(watch, ok, ...)
  if watch.w then watch.w:close() end
  if not ok then error((...), 0) end
  return ...
end

--- Block until the session differs from what it is now: store:wait(sid, { timeout_ms = n,
-- signals = bool }) --> session | nil, "timeout", "timeout" | nil, "signal", "signal", name
-- | nil, message, code (not_found once it is gone, or a store failure). Sleeps until the
-- engine says the session may have changed (inotify on a file's directory; a notification
-- from PostgreSQL), and wakes at the session's expiry; never polls.
function Store:wait(sid, opts)
  core_of(self, "wait")
  check_sid("wait", sid)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then argerror(2, "wait", "opts must be a table") end
  for k, v in pairs(opts) do
    local want = WAIT_OPTIONS[k]
    if not want then argerror(2, "wait", fmt("unknown option %q", tostring(k))) end
    if type(v) ~= want then argerror(2, "wait", fmt("option %s must be a %s", k, want)) end
  end
  local timeout = opts.timeout_ms
  if timeout ~= nil then
    check_count(3, "wait", "option timeout_ms", timeout)
    timeout = tointeger(timeout)
  end
  -- The watch is closed however the wait ends, an error included (what a <close> variable
  -- would do on 5.4; this runs on 5.1 too).
  local watch = {}
  local m, t0 = self._metrics, core.clock()
  if m then return m:done("wait", t0, finish_wait(watch, pcall(wait_watching, self, sid, opts, timeout, watch))) end
  return finish_wait(watch, pcall(wait_watching, self, sid, opts, timeout, watch))
end

--- Close the store (idempotent). From inside its own mutator or clock it raises.
function Store:close()
  local c = core_of(self, "close")
  at_caller(pcall(c.close, c))
  self._closed = true
  if self._deferred then self._deferred:close() end
end
Store.__close = Store.close

function Store:__tostring() return "pairstore.store (" .. self.path .. ")" end

return pairstore
