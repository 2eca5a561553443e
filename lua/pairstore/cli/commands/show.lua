--- pairstore show SID: one session, redacted.
local pairstore = require "pairstore"
local compat = require "pairstore.compat"
local output = require "pairstore.cli.output"
local targets = require "pairstore.cli.targets"
local list = require "pairstore.cli.commands.list"

local SHOW_ORDER = {
  "sid", "status", "mode", "operatorContext", "createdAtMs", "expiresAtMs",
  "lastStatusChangeAtMs", "secondaryCodeAttempts", "pkGatewayB64", "skGatewayB64", "secondaryCode",
}

local function show_value(k, v)
  if k:match("AtMs$") and compat.is_integer(v) then return output.local_time(v) .. string.format(" (%d)", v) end
  return output.display(v)
end

local function run(ctx, args, store)
  local sid = targets.resolve(ctx, store, args.sid)
  local s, msg, code = store:get(sid)
  if not s then ctx:failed("cannot show " .. sid, msg, code) end
  s = pairstore.redact(s)
  local seen, lines = {}, {}
  for _, k in ipairs(SHOW_ORDER) do
    if s[k] ~= nil then lines[#lines + 1] = { k, show_value(k, s[k]) } end
    seen[k] = true
  end
  local extra = {}
  for k in pairs(s) do if not seen[k] then extra[#extra + 1] = k end end
  table.sort(extra, function(a, b) return tostring(a) < tostring(b) end)
  for _, k in ipairs(extra) do
    lines[#lines + 1] = { output.display(tostring(k)), show_value(tostring(k), s[k]) }
  end
  lines[#lines + 1] = { "expiresIn", list.expires_in(s, store:now()) }
  for _, l in ipairs(lines) do ctx.w:out(string.format("%-22s %s\n", l[1] .. ":", l[2])) end
  return 0
end

return {
  summary = "Show one session, redacted.",
  define = function(cmd)
    cmd:argument("sid", "Session id or a unique prefix of one."):argname("SID")
  end,
  run = run,
}
