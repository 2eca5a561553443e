--- pairstore reject SID: the session can no longer complete.
local targets = require "pairstore.cli.targets"
local output = require "pairstore.cli.output"

local function run(ctx, args, store)
  local sid = targets.resolve(ctx, store, args.sid)
  local s, msg, code = store:reject(sid)
  if not s then
    if code == "illegal_transition" then
      local cur = store:get(sid)
      ctx:die(string.format("cannot reject %s: the session is already %s", sid, cur and tostring(cur.status) or "gone"))
    end
    ctx:failed("cannot reject " .. sid, msg, code)
  end
  ctx.w:out("rejected ", output.visible(sid), "\n")
  return 0
end

return {
  summary = "Reject a session (it can no longer complete).",
  define = function(cmd)
    cmd:argument("sid", "Session id or a unique prefix of one."):argname("SID")
  end,
  run = run,
}
