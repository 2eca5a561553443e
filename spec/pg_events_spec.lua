-- The PostgreSQL engine's connection events (issue 21): `reconnected` when a connection that
-- broke is made again, `failover` when a new connection reaches another server than the one
-- before (another host of a multi-host target), through on_event and pairstore.metrics
-- (pairstore_events_total), on the blocking path and on the deferred one (pairstore.deferred
-- with its round trips run here, as nginx's worker threads would run them). Against the
-- suite's private cluster: the server ends a connection with pg_terminate_backend; "another
-- server" is the same cluster reached through a symlink to its socket directory that is then
-- removed (libpq then reaches the target's second host). Every wait is bounded.
local pairstore = require "pairstore"
local thread = require "pairstore.thread"
local deferred = require "pairstore.deferred"
local core = require "pairstore.core"
local pmetrics = require "pairstore.metrics"
local helpers = require "helpers"

local q = helpers.sh_quote

-- Ends the server connections of application app (waiting up to 5 s for each to go): how many.
local function terminate(app)
  local ok, out = helpers.psql("SELECT count(*) FROM (SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
    .. "WHERE application_name = " .. helpers.sql_literal(app) .. ") AS t")
  assert(ok, out)
  return tonumber(out:match("%d+"))
end

local function events_total(text, name)
  return tonumber(text:match('\npairstore_events_total{event="' .. name .. '"} (%d+)\n'))
end

-- A store on target (with application_name app) recording its events and metrics.
local function open(target, app, tag, opts)
  local log = {}
  local m = pmetrics.new()
  local o = { store = helpers.store_name(tag), durable = false, metrics = m,
    on_event = function(name, info) log[#log + 1] = { name = name, message = info.message } end }
  for k, v in pairs(opts or {}) do o[k] = v end
  local sep = target:find("?", 1, true) and "&" or "?"
  return pairstore.open(target .. sep .. "application_name=" .. app, o), log, m
end

local function names(log)
  local t = {}
  for i, e in ipairs(log) do t[i] = e.name end
  return t
end

-- Round trips run here, at once (what nginx's worker threads do).
local function pool(store)
  local env = {
    now = core.mono_ms, sleep = helpers.sleep, exiting = function() return false end,
    semaphore = function()
      return { wait = function(_, s) helpers.sleep(math.min(s, 0.05)); return false end, post = function() end,
        count = function() return 0 end }
    end,
    run = function(fname, ...) return true, thread[fname](...) end,
  }
  return deferred.new(store._core, env, { size = 1, backlog = 1, wait_ms = 2000, lease_ms = 60000 })
end

-- A multi-host target whose first host is a symlink to the cluster's socket directory (in a
-- temp dir of its own), its second the directory itself: the path of the symlink.
local function two_hosts()
  local dir = helpers.tmpdir()
  local via = dir .. "/via"
  assert(os.execute("ln -s " .. q(helpers.pg_dir()) .. " " .. q(via)))
  return ("postgresql:///pairstore?host=%s,%s&user=pairstore"):format(via, helpers.pg_dir()), via
end

describe("PostgreSQL connection events", function()
  local store
  after_each(function()
    if store then store:close() end
    store = nil
    helpers.cleanup()
  end)

  it("says reconnected once when a connection the server ended is made again, not failover (the same host)", function()
    local app = "ev-re-" .. math.random(1e9)
    local log, m
    store, log, m = open(helpers.pg_target(), app, "reconn")
    local x = assert(store:create {})
    assert(store:get(x.sid))
    assert.are.same({}, names(log)) -- (the first connection is no reconnect)
    assert.are.equal(1, terminate(app))
    -- the read finds its connection broken and makes it again (once, nothing was done yet)
    assert.are.equal(x.sid, assert(store:get(x.sid)).sid)
    assert.are.same({ "reconnected" }, names(log))
    assert.truthy(log[1].message:find(helpers.pg_dir() .. ":", 1, true), log[1].message)
    -- the next operations on that connection say nothing more
    assert(store:verify_code(x.sid, x.secondaryCode))
    assert.are.same({ "reconnected" }, names(log))
    local text = m:render(store)
    assert.are.equal(1, events_total(text, "reconnected"))
    assert.are.equal(0, events_total(text, "failover"))
    -- a connection let go on purpose (idle) and made again is not a reconnect
    store._core:idle()
    assert(store:get(x.sid))
    assert.are.same({ "reconnected" }, names(log))
    -- a write whose connection the server ended: made again, said once more
    assert.are.equal(1, terminate(app))
    assert(store:consume(x.sid))
    assert.are.same({ "reconnected", "reconnected" }, names(log))
    assert.are.equal(2, events_total(m:render(store), "reconnected"))
  end)

  it("says reconnected and failover when the new connection reaches another host of the target", function()
    local app = "ev-fo-" .. math.random(1e9)
    local target, via = two_hosts()
    local log, m
    store, log, m = open(target, app, "failover")
    local x = assert(store:create {})
    assert.are.same({}, names(log))
    -- the first host goes away, and the server ends the connection: the next one reaches the second host
    assert(os.remove(via))
    assert.are.equal(1, terminate(app))
    assert(store:verify_code(x.sid, x.secondaryCode))
    assert.are.same({ "reconnected", "failover" }, names(log))
    assert.truthy(log[2].message:find("reached another server: " .. helpers.pg_dir() .. ":", 1, true), log[2].message)
    assert.truthy(log[2].message:find("(before: " .. via .. ":", 1, true), log[2].message)
    local text = m:render(store)
    assert.are.equal(1, events_total(text, "reconnected"))
    assert.are.equal(1, events_total(text, "failover"))
  end)

  it("says them on the deferred path too, once per operation however often its transaction runs again", function()
    local app = "ev-df-" .. math.random(1e9)
    local target, via = two_hosts()
    local log, m
    store, log, m = open(target, app, "deferred")
    local d = pool(store)
    local x = assert(d:run("create", "generate", { channel = "web" }, 900000, nil, nil, nil))
    assert.are.same({}, names(log))
    assert(os.remove(via))
    assert.are.equal(1, terminate(app))
    -- a write: its first round trip (made again on a new connection) is replayed when the
    -- transaction runs again for its second
    local s = assert(d:run("verify_code", x.sid, x.secondaryCode))
    assert.are.equal("device_connected", s.status)
    assert.are.same({ "reconnected", "failover" }, names(log))
    assert(d:run("consume", x.sid))
    assert.are.same({ "reconnected", "failover" }, names(log))
    local text = m:render(store)
    assert.are.equal(1, events_total(text, "reconnected"))
    assert.are.equal(1, events_total(text, "failover"))
  end)
end)
