--- pairstore.deferred: a PostgreSQL store's operations with their round trips run elsewhere,
-- so that the caller's event loop never waits on the database (inside nginx: on a worker
-- thread, through ngx.run_worker_thread, while the request yields).
--
-- Per process (an nginx worker) and store: a pool of links (deferred engines, each its own
-- connection, reused across requests), at most `size` of them, with at most `backlog`
-- callers waiting for one; a breaker that answers "unavailable" at once for a while after a
-- connection could not be made, then lets one caller try; a janitor that takes back a link
-- whose caller went away (a request aborted while its round trip ran); one listening link
-- whose notifications wake the waits (store:wait). The transaction itself is the core's:
-- it stops with "io_pending" where a round trip is due, the round trip runs, and the same
-- call runs it again (it replays what it did; its mutator runs once).
local compat = require "pairstore.compat"
local attempts = require "pairstore.attempts"

local pack, unpack = compat.pack, compat.unpack
local fmt = string.format

local WAIT_START, WAIT_CONTINUE = 1, 2
local BACKOFF_MIN_MS, BACKOFF_MAX_MS = 250, 5000
local ABANDONED_MS = 1000   -- a finished round trip nobody took for this long: its caller is gone
local JANITOR_S = 0.5
local LISTEN_MS = 1000      -- one wait of the listening link (a worker thread is held for it)
local BUSY_MAX_MS = 50      -- the longest sleep between two attempts at a row another holds

local WEAK_KEYS = { __mode = "k" }

local M = {}
local Pool = {}
Pool.__index = Pool

--- A pool for the store s (its core `c`) with the environment env: { run = function(fname,
-- id, ...) -> ok, ... (run pairstore.thread's fname elsewhere), sleep = function(seconds),
-- now = function() -> monotonic ms, semaphore = function() -> a semaphore (wait(s), post(n),
-- count(): what ngx.semaphore gives),
-- every = function(seconds, fn) (a repeating timer) or nil, spawn = function(fn) (a light
-- thread) or nil, exiting = function() -> bool, waited = function(seconds) (told each row
-- lock's wait, by clock = function() -> monotonic seconds) or nil }, and options { size, backlog, wait_ms }.
function M.new(c, env, o)
  return setmetatable({
    c = c, env = env, size = o.size, backlog = o.backlog, wait_ms = o.wait_ms,
    lease_ms = o.lease_ms,
    idle = {}, n = 0, leased = {}, sema = nil,
    down_until = nil, down_msg = nil, backoff = BACKOFF_MIN_MS, probing = false, probe_h = nil,
    watchers = {}, listening = nil, listen_h = nil, listener = false,
    ready = nil,
    janitor = false,
  }, Pool)
end

local function closed()
  return nil, "the store was closed while this call waited", "closed"
end

local function wake_all(self)
  for _, set in pairs(self.watchers) do
    for w in pairs(set) do w.changed = true; if w.sema then w.sema:post(1) end end
  end
end

local function wake(self, payload)
  local set = self.watchers[payload]
  if not set then return end
  for w in pairs(set) do w.changed = true; if w.sema then w.sema:post(1) end end
end

-- How many light threads wait on a semaphore (none yet: 0). Counted by the semaphore itself,
-- which forgets a waiter whose request was aborted (a count of our own would not).
local function waiting(sema)
  if not sema then return 0 end
  local n = sema:count()
  return n < 0 and -n or 0
end

-- Links --------------------------------------------------------------------------------------

local function unavailable(self)
  return nil, self.down_msg .. fmt(" (pairstore tries again within %d ms)", self.down_ms), "unavailable"
end

-- Starts the janitor once: a link leased to a caller that went away is taken back (its
-- connection closed unless idle: the server rolls back what it held).
local function start_janitor(self)
  if self.janitor or not self.env.every then return end
  self.janitor = true
  self.env.every(JANITOR_S, function()
    local now = self.env.now()
    for h, lease in pairs(self.leased) do
      local busy, done_ms = h:state()
      if not busy and ((done_ms and now - done_ms > ABANDONED_MS) or now > lease) then
        self.leased[h] = nil
        if self.probe_h == h then self.probing, self.probe_h = false, nil end -- (next caller probes)
        h:reset()
        self.idle[#self.idle + 1] = h
        if waiting(self.sema) > 0 then self.sema:post(1) end
      end
    end
  end)
end

-- A link for one operation, within deadline (monotonic ms) --> h | nil, message, code
function Pool:acquire(deadline)
  local probe = false
  while true do
    -- (again after each wait: a breaker that opened meanwhile answers the waiters at once)
    local now = self.env.now()
    if self.down_until and not probe then
      if now < self.down_until or (self.probing and now < self.probing) then return unavailable(self) end
      -- this caller tries; the others keep failing fast meanwhile, until its outcome is
      -- known (note), its link is taken back (the janitor: a caller that went away never
      -- says), or lease_ms at most (it went away before it had a link)
      self.probing = now + self.lease_ms
      probe = true
    end
    local h = table.remove(self.idle)
    if not h and self.n < self.size then
      h = self.c:pg_handle()
      self.n = self.n + 1
    end
    if h then
      self.leased[h] = self.env.now() + self.lease_ms
      if probe then self.probe_h = h end
      start_janitor(self)
      return h
    end
    if waiting(self.sema) >= self.backlog then
      if probe then self.probing = false end
      return nil, fmt("too many operations wait for a PostgreSQL connection (pool_size %d, "
        .. "pool_backlog %d)", self.size, self.backlog), "timeout"
    end
    local left = deadline - self.env.now()
    if left <= 0 then
      if probe then self.probing = false end
      return nil, fmt("no PostgreSQL connection free within lock_wait_ms (%d; pool_size %d)",
        self.wait_ms, self.size), "timeout"
    end
    self.sema = self.sema or self.env.semaphore()
    self.sema:wait(left / 1000)
    if self.closed then return closed() end
  end
end

-- Gives a link back (its transaction, if any, ended: the connection closed unless idle).
function Pool:release(h, reset)
  if self.leased[h] == nil then return end -- taken back by the janitor meanwhile
  self.leased[h] = nil
  if self.closed then return h:close() end
  if reset then h:reset() end
  self.idle[#self.idle + 1] = h
  if waiting(self.sema) > 0 then self.sema:post(1) end
end

-- What a round trip's outcome says of the server: a connection could not be made (the
-- breaker opens; again after a probe that failed, for twice as long), or the server
-- answered (it closes). A timeout or a lost connection on a link that was connected says
-- neither: the next operation connects again, and that tells.
local function note(self, h, r)
  local _, _, connect_failed = h:state()
  local failed = r[1] == nil and (r[3] == "unavailable" or r[3] == "timeout")
  if connect_failed and failed then
    if self.down_until and self.probe_h == h then -- the probe failed: longer
      self.backoff = math.min(self.backoff * 2, BACKOFF_MAX_MS)
    elseif not self.down_until then
      self.backoff = BACKOFF_MIN_MS
    end
    self.down_until = self.env.now() + self.backoff
    self.down_ms = self.backoff
    self.down_msg = r[2]
    -- those waiting for a link hear it now, not at their deadline
    if waiting(self.sema) > 0 then self.sema:post(waiting(self.sema)) end
  elseif not failed then
    self.down_until, self.down_msg, self.backoff = nil, nil, BACKOFF_MIN_MS
  end
  if self.probe_h == h then self.probing, self.probe_h = false, nil end
end

local function thread_failed(err)
  error(fmt("pairstore: cannot run a PostgreSQL round trip on a worker thread: %s (nginx.conf "
    .. "needs `thread_pool NAME threads=N;` in its main context, NAME as the store's "
    .. "thread_pool option; or open the store with thread_pool = false)", tostring(err)), 0)
end

-- Runs the core's operation name on the link held in `held.h`, its round trips elsewhere.
-- While it sleeps on a row another transaction holds, it holds no link (its transaction was
-- rolled back): the link serves other requests meanwhile, and it takes one again to retry.
local function drive(self, held, name, ...)
  local c, env = self.c, self.env
  local args = pack(...)
  local ran = false
  local function attempt()
    c:use_engine(held.h)
    local r = pack(c[name](c, unpack(args, 1, args.n)))
    while r[1] == nil and r[3] == "io_pending" do
      local ok, res, err = env.run("perform", held.h:link())
      if self.closed then return pack(closed()) end
      if not ok then thread_failed(res) end
      if not res then thread_failed(err) end
      ran = true
      c:use_engine(held.h)
      r = pack(c[name](c, unpack(args, 1, args.n)))
    end
    if ran then note(self, held.h, r) end
    return r
  end
  -- each attempt is two round trips on a worker thread and a server transaction: back off
  -- further than the core's slices (1, 2, 4, 8 ms), up to BUSY_MAX_MS, within the deadline
  local function pause(busy)
    local ms = math.min(math.max(busy[4], 2 ^ math.min(busy[6], 6)), BUSY_MAX_MS,
      math.max(busy[5] - env.now(), 0))
    local h = held.h
    held.h = nil
    self:release(h, false)
    env.sleep(ms / 1000)
    if self.closed then return pack(closed()) end
    local msg, code
    h, msg, code = self:acquire(busy[5])
    if not h then return pack(nil, msg, code) end
    held.h = h
    c:wait_mode(WAIT_CONTINUE, busy[5], busy[6])
  end
  c:wait_mode(WAIT_START)
  return attempts.run(attempt, pause, env.waited, env.clock)
end

local function finish(self, held, ok, r)
  local h = held.h
  if not ok then
    self.c:use_engine(nil) -- (a call that raised before its transaction took it)
    if h and self.probe_h == h then self.probing, self.probe_h = false, nil end
    if h then self:release(h, true) end
    error(r, 0)
  end
  if h then self:release(h, false) end
  return unpack(r, 1, r.n)
end

--- Closes the links (one a worker thread still uses: when it is done); calls waiting
-- meanwhile end with code "closed".
function Pool:close()
  self.closed = true
  for i = #self.idle, 1, -1 do self.idle[i]:close(); self.idle[i] = nil end
  if self.listen_h then self.listen_h:close() end
  wake_all(self)
  if waiting(self.sema) > 0 then self.sema:post(waiting(self.sema)) end
  if waiting(self.ready) > 0 then self.ready:post(waiting(self.ready)) end
end

--- Runs the core's operation name (its arguments after it) --> what the operation returns
function Pool:run(name, ...)
  if self.closed then return closed() end
  local h, msg, code = self:acquire(self.env.now() + self.wait_ms)
  if not h then return nil, msg, code end
  local held = { h = h }
  return finish(self, held, pcall(drive, self, held, name, ...))
end

-- Waiting for a change ------------------------------------------------------------------------

-- The listening link's loop (a light thread): waits for notifications on a worker thread,
-- LISTEN_MS at a time, while anyone watches; a new connection wakes every watcher (what
-- was notified meanwhile is lost: they read again).
-- Whether anyone still watches (sets emptied by the collector are dropped here).
local function watched(self)
  for payload, set in pairs(self.watchers) do
    if next(set) ~= nil then return true end
    self.watchers[payload] = nil
  end
  return false
end

local function listen_loop(self)
  local h = self.listen_h
  local first = true
  while watched(self) and not self.env.exiting() do
    local ok, payloads, gen = self.env.run("listen", h:link(), first and 0 or LISTEN_MS)
    first = false
    if not ok then
      self.listening = nil
      wake_all(self)
      self.env.sleep(0.25)
    elseif not payloads then -- (the server is away: watchers read again, and time out)
      self.listening = nil
      wake_all(self)
      self.env.sleep(0.25)
    else
      if gen ~= self.listening then
        self.listening = gen
        wake_all(self)
        if waiting(self.ready) > 0 then self.ready:post(waiting(self.ready)) end
      end
      for i = 1, #payloads do wake(self, payloads[i]) end
    end
  end
  self.listening = nil
  self.listener = false
end

-- The listening loop of pool, as a function of its own: made here, in a function that
-- returns at once, so that the pool is a closed upvalue. (Made in Pool:watch, the closure
-- would share its `self`, an open upvalue on the stack of a request that may be aborted
-- while it waits below: ngx_lua clears that stack, and the loop found self nil.)
local function loop_of(pool)
  return function() listen_loop(pool) end
end

local Watch = {}
Watch.__index = Watch

--- w:wait(ms) --> "change" | "timeout" (the store's watcher shape; signals are not waited for)
function Watch:wait(ms)
  if not self.changed then
    self.sema:wait((ms or 3600000) / 1000)
  end
  if self.changed then
    self.changed = false
    return "change"
  end
  return "timeout"
end

function Watch:close()
  local pool = self.pool
  if self.closed then return end
  self.closed = true
  local set = pool.watchers[self.payload]
  if set then
    set[self] = nil
    if next(set) == nil then pool.watchers[self.payload] = nil end
  end
end

--- A watcher of the session sid (store: the store's name) within deadline --> w | nil,
-- message, code. The worker's listening link listens first; then the row says it is awaited.
function Pool:watch(sid, store, deadline)
  if not self.env.spawn then
    return nil, "waiting needs a light thread (ngx.timer) in this context", "invalid"
  end
  local w = setmetatable({ pool = self, payload = sid .. store, sema = self.env.semaphore(),
    changed = false }, Watch)
  -- (a weak set: the watch of a request aborted while it waits goes with its request)
  local set = self.watchers[w.payload] or setmetatable({}, WEAK_KEYS)
  self.watchers[w.payload] = set
  set[w] = true
  if not self.listen_h then self.listen_h = self.c:pg_handle(true) end
  if not self.listener then
    self.listener = true
    self.ready = self.ready or self.env.semaphore()
    local ok, err = self.env.spawn(loop_of(self))
    if not ok then
      self.listener = false
      w:close()
      return nil, "cannot start the listening link's light thread: " .. tostring(err), "unavailable"
    end
  end
  while not self.listening do
    local left = deadline - self.env.now()
    if left <= 0 then
      w:close()
      return nil, "timeout", "timeout"
    end
    self.ready:wait(math.min(left, 250) / 1000)
  end
  local ok, msg, code = self:run("announce", sid)
  if not ok then
    w:close()
    return nil, msg, code
  end
  w.changed = false -- (a wake before the announcement: the caller reads next anyway)
  return w
end

return M
