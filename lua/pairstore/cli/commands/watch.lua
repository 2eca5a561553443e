--- pairstore watch SID: follow a session live until it ends (signals leave it alone).
local core = require "pairstore.core"
local targets = require "pairstore.cli.targets"
local live = require "pairstore.cli.live"

local function run(ctx, args, store)
  local sid = targets.resolve(ctx, store, args.sid)
  ctx:is_tty() -- (asked before any signal is held)
  core._hold_signals(true)
  return live.follow(ctx, store, sid, function(sig)
    ctx.w:warn("pairstore: ", live.signal_note(sig), "; session ", sid, " left as it is")
  end)
end

return {
  summary = "Follow a session live until it ends (signals leave it alone).",
  epilog = "Exit 0 when the session completes, 1 when it expires, is rejected or vanishes;\n"
    .. "130, 143, 129 on SIGINT (Ctrl+C), SIGTERM, SIGHUP. A store that cannot be reached\n"
    .. "(unavailable, timeout) is waited out while the session can still complete. If its\n"
    .. "reader goes away (a closed pipe), watch ends quietly with 141, as if killed by SIGPIPE.",
  define = function(cmd)
    cmd:argument("sid", "Session id or a unique prefix of one."):argname("SID")
  end,
  run = run,
  broken_pipe = 141, -- (0 would say the session completed)
}
