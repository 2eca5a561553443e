--- spec/bench/metrics.lua — `make bench` (issue 21): what the metrics option costs a cached get.
--
-- Run by spec/bench/run.sh (BENCH_WORKDIR set). A file store of 100 live sessions (durable =
-- false); the same `get` of an unchanged file (served from the parsed cache) by one store,
-- without metrics and with pairstore.metrics (per process: the option's field set on the
-- same store, so both read the same cache), in alternating batches; medians over rounds.
-- Two figures:
--   * the A/B ratio of the two medians (what a caller sees; within the run's noise);
--   * the recording's own cost, measured apart: two clock reads and one observe() per call,
--     as the store makes them, as a share of the get without metrics (the target: < 2%).
-- Prints a table and one `BENCH_METRICS {...}` JSON line; BENCH_STRICT=1 fails the run
-- (exit 3) when the recording costs 2% or more.
local pairstore = require "pairstore"
local metrics = require "pairstore.metrics"
local bu = require "benchutil"
local cjson = require "cjson"
local common = require "common"

local fmt = string.format
local WORK = assert(os.getenv("BENCH_WORKDIR"), "run this through spec/bench/run.sh (BENCH_WORKDIR unset)")
local QUICK = os.getenv("BENCH_QUICK") == "1"
local STRICT = os.getenv("BENCH_STRICT") == "1"
local ROUNDS, BATCH = QUICK and 5 or 15, QUICK and 2000 or 10000
local mono = bu.mono

local path = WORK .. "/metrics-bench.json"
local plain = pairstore.open(path, { durable = false })
local sids = {}
for i = 1, 100 do sids[i] = common.must(plain:create {}).sid end
local m = metrics.new()

local function batch(with)
  local st = plain
  rawset(st, "_metrics", with and m or nil) -- (what open's metrics option sets)
  local t0 = mono()
  for i = 1, BATCH do
    local s = st:get(sids[i % 100 + 1])
    if not s then error("get failed") end
  end
  return (mono() - t0) / BATCH
end

-- The recording alone: what Store:_txn adds around the core call when metrics are on.
local function record_batch()
  local clock, probe = metrics.clock, metrics.new()
  local t0 = mono()
  for _ = 1, BATCH do
    local t = clock()
    probe:done("get", t, true)
  end
  return (mono() - t0) / BATCH
end

batch(false); batch(true); record_batch() -- (warm: the parsed cache, the key tables)
local a, b, r = {}, {}, {}
for i = 1, ROUNDS do
  if i % 2 == 1 then
    a[#a + 1] = batch(false); b[#b + 1] = batch(true)
  else
    b[#b + 1] = batch(true); a[#a + 1] = batch(false)
  end
  r[#r + 1] = record_batch()
end
rawset(plain, "_metrics", nil)
plain:close()
if not m:render():find('pairstore_operations_total{op="get",result="ok"}', 1, true) then
  error("the store with metrics recorded no get")
end

local ta, tb, tr = common.median(a), common.median(b), common.median(r)
local share = tr / ta
print("")
print("Metrics (pairstore.metrics, per process): cached get of a 100-session file store")
print(fmt("  get without metrics          %8.2f µs", ta * 1e6))
print(fmt("  get with metrics             %8.2f µs   A/B ratio %.3f×", tb * 1e6, tb / ta))
print(fmt("  the recording alone          %8.3f µs   %.2f%% of a get (target < 2%%)", tr * 1e6, share * 100))
print("BENCH_METRICS " .. cjson.encode { get_us = ta * 1e6, get_metrics_us = tb * 1e6, ab_ratio = tb / ta,
  record_us = tr * 1e6, record_share = share, rounds = ROUNDS, batch = BATCH })
if STRICT and share >= 0.02 then
  print("metrics: the recording costs 2% or more of a cached get")
  os.exit(3)
end
