--- pairstore.thread: what an nginx worker thread runs for a PostgreSQL store (through
-- ngx.run_worker_thread, in a Lua state of its own): a round trip handed over to a link, or
-- a wait for notifications on a watcher's link. Links are found by id in the process.
local core = require "pairstore.core"

local M = {}

--- Runs the round trip handed over to link id --> true | nil, message
function M.perform(id)
  return core.pg_perform(id)
end

--- Waits up to ms for notifications on link id --> payloads, generation | nil, message, code
function M.listen(id, ms)
  return core.pg_listen(id, ms)
end

return M
