-- pairing_gateway.lua: the pairing flow's HTTP endpoints inside nginx (ngx_http_lua on
-- LuaJIT), over examples/http_handler.lua: the same handlers and the same status codes as
-- the reference gateway, one copy for both. nginx.conf (beside it) wires it up:
--
--   init_by_lua_block     require("pairing_gateway").init { target = ..., payload_dir = ... }
--   init_worker_by_lua_block  require("pairing_gateway").init_worker()  (checks the store's directory)
--   content_by_lua_block  require("pairing_gateway").start()     GET  /pair/start?sid=&c=
--                         require("pairing_gateway").respond()   POST /pair/respond
--                         require("pairing_gateway").status()    GET  /pair/status?sid=[&wait=S&since=STATUS]
--                         require("pairing_gateway").new()       POST /pair/new (operator side)
--                         require("pairing_gateway").metrics()   GET  /metrics (operator side)
--
-- The store is opened once, in the master (init_by_lua); the workers fork from it and each
-- one gets its own lock handle or database connections on its first operation (pairstore
-- notices the fork). Nothing here blocks a worker: a lock held by another process is waited
-- for with ngx.sleep; a PostgreSQL store's round trips run on nginx's thread pool
-- `pairstore` (nginx.conf) while the request yields, over a pool of connections per worker;
-- a long poll (wait=) yields until the session changes.

local pairstore = require "pairstore"
local handler = require "http_handler"
local cjson = require("cjson.safe").new()

local ngx = ngx
local gateway = {}

local store -- opened by init, used by every worker
local metrics -- pairstore.metrics, when init was given a lua_shared_dict
local conf = {}

-- The demo sink for the payload: stands for "the gateway imports the mnemonic". With a
-- payload directory configured, the plaintext is written to DIR/<sid>, mode 0600, created
-- exclusively (a sid is consumed once). LuaJIT's FFI gives open(2) with a mode.
local ffi = require "ffi"
local bit = require "bit"
for _, decl in ipairs {
  "int open(const char *path, int flags, ...);",
  "long write(int fd, const void *buf, unsigned long n);",
  "int fsync(int fd);",
  "int close(int fd);",
  "char *strerror(int errnum);",
  "int access(const char *path, int mode);",
  "unsigned int geteuid(void);",
} do
  pcall(ffi.cdef, decl) -- (already declared by another module: that declaration serves)
end
local O_WRONLY, O_CREAT, O_EXCL, O_CLOEXEC = 1, 64, 128, 524288 -- Linux

local function errstr() return ffi.string(ffi.C.strerror(ffi.errno())) end

local function save_payload(plaintext, session)
  local path = conf.payload_dir .. "/" .. session.sid
  local fd = ffi.C.open(path, bit.bor(O_WRONLY, O_CREAT, O_EXCL, O_CLOEXEC), ffi.new("int", 384)) -- 0600
  if fd < 0 then return nil, "open " .. path .. ": " .. errstr() end
  local at, ok, why = 0, true, nil
  while at < #plaintext do
    local n = tonumber(ffi.C.write(fd, ffi.cast("const char *", plaintext) + at, #plaintext - at))
    if n < 0 then
      if ffi.errno() ~= 4 then ok, why = nil, "write " .. path .. ": " .. errstr(); break end -- EINTR: again
    else
      at = at + n
    end
  end
  if ok and ffi.C.fsync(fd) ~= 0 then ok, why = nil, "fsync " .. path .. ": " .. errstr() end
  ffi.C.close(fd)
  return ok, why
end

--- Called once from init_by_lua_block. opts: target (a file path or a PostgreSQL target,
-- required), payload_dir (the demo sink; nil: none), base_url (the phone page's public URL,
-- required: the operator's server is not the public one, and a Host header is the
-- client's word), aead ("aes-256-gcm", what the browser's WebCrypto
-- does), lock_wait_ms, store (a PostgreSQL store name), and for a PostgreSQL store
-- connect_timeout_ms, statement_timeout_ms, pool_size, pool_backlog; metrics (a
-- lua_shared_dict for pairstore.metrics; nil: no metrics).
function gateway.init(opts)
  assert(type(opts) == "table", "pairing_gateway.init: opts must be a table")
  assert(type(opts.target) == "string" and opts.target ~= "",
    "pairing_gateway.init: no store target (set PAIRSTORE_TARGET: a file path or a PostgreSQL target)")
  assert(type(opts.base_url) == "string" and opts.base_url:match("^https?://[^/?#]+"),
    "pairing_gateway.init: no base URL of the phone page (set PAIRSTORE_BASE_URL: https://HOST/pair)")
  conf = {
    target = opts.target,
    payload_dir = opts.payload_dir ~= "" and opts.payload_dir or nil,
    base_url = opts.base_url,
    aead = opts.aead or "aes-256-gcm",
  }
  -- Timeouts sized for a gateway: a request waits at most a few seconds for a lock, a
  -- connection or an answer, then gets 503 (the phone tries again), never a minute.
  local o = {
    lock_wait_ms = tonumber(opts.lock_wait_ms) or 5000,
    -- what pairstore reports besides a call's result (a lock taken over, a corrupt file
    -- moved aside, a COMMIT found done after its answer was lost) goes to the error log
    on_event = function(name, info)
      ngx.log(ngx.WARN, "pairstore event ", name, ": ", info and info.message or "")
    end,
  }
  if pairstore.is_pg_target(opts.target) then
    o.store = opts.store
    o.connect_timeout_ms = tonumber(opts.connect_timeout_ms) or 3000
    o.statement_timeout_ms = tonumber(opts.statement_timeout_ms) or 5000
    o.pool_size = tonumber(opts.pool_size)
    o.pool_backlog = tonumber(opts.pool_backlog)
    -- For the benchmark only (make bench-nginx compares the two paths): with
    -- PAIRSTORE_PG_THREAD_POOL=off each round trip runs on the worker itself, blocking it.
    if os.getenv("PAIRSTORE_PG_THREAD_POOL") == "off" then o.thread_pool = false end
  end
  if opts.metrics then -- a lua_shared_dict: counts shared by the workers (pairstore.metrics)
    metrics = require("pairstore.metrics").new { dict = opts.metrics }
    o.metrics = metrics
  end
  store = pairstore.open(conf.target, o) -- touches nothing yet: each worker connects itself
  handler.log = function(msg) ngx.log(ngx.ERR, msg) end
end

--- Called from init_worker_by_lua_block, as the workers' user: init_by_lua ran as root (the
-- master), so a file store whose directory that user may not write only shows now. Logs an
-- alert (once, from worker 0) naming the directory and the user: every request that writes
-- would answer 500. (A PostgreSQL store connects on its first request, which logs its failure.)
local W_OK, X_OK = 2, 1
function gateway.init_worker()
  if ngx.worker.id() ~= 0 or pairstore.is_pg_target(conf.target) then return end
  local dir = conf.target:match("^(.*)/[^/]*$")
  if not dir or dir == "" then dir = "/" end
  -- the nearest directory that exists: pairstore makes the rest, there
  while dir ~= "/" and ffi.C.access(dir, 0) ~= 0 do dir = dir:match("^(.*)/[^/]*$") or "/" end
  if ffi.C.access(dir, bit.bor(W_OK, X_OK)) ~= 0 then
    ngx.log(ngx.ALERT, "pairing_gateway: the store ", conf.target, " cannot be written by the ",
      "workers' user (uid ", tonumber(ffi.C.geteuid()), "): ", dir, ": ", errstr(), "; every ",
      "pairing request will answer 500. Make the directory writable by nginx.conf's `user`, ",
      "or set PAIRSTORE_TARGET to one that is.")
  end
end

--- The store (for a site's own handlers beside these).
function gateway.store() return store end

-- The answer: JSON (nginx.conf adds Cache-Control: no-store to every answer).
local function reply(status, body)
  ngx.status = status
  if status == 503 then ngx.header["Retry-After"] = "2" end
  ngx.header["Content-Type"] = "application/json"
  ngx.print(cjson.encode(body), "\n")
end

-- Runs fn for the request: wrong method 405, an error raised in Lua 500 (logged).
local function serve(method, fn)
  if ngx.req.get_method() ~= method then
    ngx.header["Allow"] = method
    return reply(405, { error = "method_not_allowed" })
  end
  local ok, err = xpcall(fn, debug.traceback)
  if not ok then
    ngx.log(ngx.ERR, "pairing_gateway: ", tostring(err))
    if not ngx.headers_sent then return reply(500, { error = "internal" }) end
  end
end

-- A query argument given once (repeated or without a value: nil, which the handlers refuse).
local function args()
  local a = ngx.req.get_uri_args(8)
  local q = {}
  for k, v in pairs(a) do
    if type(v) == "string" then q[k] = v end
  end
  return q
end

function gateway.start()
  serve("GET", function() reply(handler.start(store, args())) end)
end

function gateway.status()
  serve("GET", function() reply(handler.status(store, args())) end)
end

function gateway.respond()
  serve("POST", function()
    ngx.req.read_body()
    local data = ngx.req.get_body_data()
    if not data then
      -- larger than client_body_buffer_size (nginx put it in a file) or empty
      if ngx.req.get_body_file() then return reply(413, { error = "bad_request" }) end
      return reply(400, { error = "bad_request" })
    end
    local body = cjson.decode(data) -- nil for text that is not JSON: 400 below
    reply(handler.respond(store, body, {
      aead = conf.aead,
      on_payload = conf.payload_dir and save_payload or nil,
    }))
  end)
end

-- The operator side (nginx.conf lets only loopback in): a new session for the demo and the
-- tests. Query: mode (generate | import), ttl_ms. Answers 201 { sid, code, url,
-- expires_at_ms }: the code is shown to the operator, the url goes into the QR code.
function gateway.new()
  serve("POST", function()
    local q = args()
    local mode = q.mode or "generate"
    if mode ~= "generate" and mode ~= "import" then return reply(400, { error = "bad_request" }) end
    local ttl = q.ttl_ms and tonumber(q.ttl_ms)
    if q.ttl_ms and not ttl then return reply(400, { error = "bad_request" }) end
    local s, msg, code = store:create { mode = mode, operator = { channel = "web" }, ttl_ms = ttl }
    if not s then
      if code == "limit" then return reply(429, { error = "limit" }) end
      return reply(handler.store_failure(msg, code))
    end
    reply(201, { sid = s.sid, code = s.secondaryCode, url = pairstore.pairing_url(conf.base_url, s),
      expires_at_ms = s.expiresAtMs })
  end)
end

-- GET /metrics (the operator's server): the store's metrics, every worker's counts, and
-- its sessions by status read now.
function gateway.metrics()
  serve("GET", function()
    if not metrics then return reply(404, { error = "not_found" }) end
    local text = metrics:render(store)
    ngx.header["Content-Type"] = require("pairstore.metrics").CONTENT_TYPE
    ngx.print(text)
  end)
end

return gateway
