--- pairstore.attempts: an operation of the core run again while a lock it needs is busy.
--
-- Waiting cooperatively (c:wait_mode(START or CONTINUE)), the core's transaction does not
-- wait for a lock another holds: it answers nil, message, "lock_busy", ms, deadline, tries
-- (see txn.c), having done nothing. The caller sleeps its own way (ngx.sleep, the sleep
-- option, a worker's pool giving its link back meanwhile) and runs it again, handing the
-- deadline and tries on (c:wait_mode(CONTINUE, deadline, tries)), until it gets the lock or
-- the core answers "timeout" at the deadline. This is that loop, once for every caller.
local M = {}

local function busy(r) return r[1] == nil and r[3] == "lock_busy" end

--- Runs attempt() (-> its results, packed) until it answers other than lock_busy. Between
-- two, pause(r), r the busy answer: sleeps and prepares the next attempt, or returns a
-- packed result to end with instead. waited(seconds) (or nil) is told how long the lock
-- was waited for, from the first busy answer to the end of the last attempt, by clock()
-- (monotonic seconds). --> the last result, packed
function M.run(attempt, pause, waited, clock)
  local r = attempt()
  if not busy(r) then return r end
  local t0 = waited and clock()
  repeat
    local stop = pause(r)
    if stop then return stop end
    r = attempt()
  until not busy(r)
  if t0 then waited(clock() - t0) end
  return r
end

return M
