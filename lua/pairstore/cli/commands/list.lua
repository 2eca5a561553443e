--- pairstore list [--all] [--json]: the sessions, redacted.
local pairstore = require "pairstore"
local output = require "pairstore.cli.output"
local display = output.display

-- The store's own JSON writer: numbers as JSON.stringify writes them (cjson rounds to 14
-- digits), key order stable.
local json_encode = require("pairstore.core").json_encode

local ended_statuses = {}
for _, st in ipairs(pairstore.STATUSES) do
  if pairstore.is_terminal(st) then ended_statuses[#ended_statuses + 1] = st end
end

-- "14m52s" for a live session, its status for one that ended: what counts as ended and
-- when a session expires are the store's rules (a read gives a session past its expiry as
-- expired), so the time left is only shown, never judged, here (at least "0s").
local function expires_in(s, now)
  if pairstore.is_terminal(s.status) then return s.status == "expired" and "expired" or "-" end
  if type(s.expiresAtMs) ~= "number" then return display(s.expiresAtMs) end
  return output.duration(math.max(s.expiresAtMs - now, 0))
end

local function channel_of(s)
  if type(s.operatorContext) ~= "table" or s.operatorContext.channel == nil then return "" end
  return display(s.operatorContext.channel)
end

local function run(ctx, args, store)
  local list, msg, code
  if args.all then list, msg, code = store:list_all() else list, msg, code = store:list_active() end
  if not list then ctx:failed("cannot list the sessions", msg, code) end
  local redacted = {}
  for i, s in ipairs(list) do redacted[i] = pairstore.redact(s) end
  if args.json then
    if #redacted == 0 then
      ctx.w:out("[]\n")
    else
      local text, why = json_encode(output.utf8_copy(redacted))
      if not text then ctx:die("cannot encode the sessions as JSON: " .. tostring(why)) end
      ctx.w:out(output.escape_hidden(text), "\n")
    end
    return 0
  end
  if #redacted == 0 then
    ctx.w:out(args.all and "no sessions\n" or "no active sessions (use --all to see ended ones)\n")
    return 0
  end
  local now = store:now()
  local rows = { { "SID", "STATUS", "MODE", "CHANNEL", "CREATED", "EXPIRES IN", "ATTEMPTS" } }
  for _, s in ipairs(redacted) do
    rows[#rows + 1] = {
      output.short_sid(s.sid), display(s.status), display(s.mode), channel_of(s), output.local_time(s.createdAtMs),
      expires_in(s, now), display(s.secondaryCodeAttempts),
    }
  end
  -- one row at a time: a reader that stops early (| head) stops the output early
  for line in output.table_lines(rows):gmatch("[^\n]*\n") do
    if not ctx.w:out(line) then break end
  end
  return 0
end

return {
  summary = "List sessions (active ones by default), redacted.",
  epilog = "--json prints valid UTF-8 JSON: a byte that is not part of valid UTF-8 becomes U+FFFD,\n"
    .. "and control, bidirectional and zero-width characters are written as \\uHHHH escapes.",
  define = function(cmd)
    cmd:flag("-a --all", "Also list ended sessions (" .. table.concat(ended_statuses, ", ") .. ").")
    cmd:flag("--json", "Print a JSON array of redacted sessions, for scripts.")
  end,
  run = run,
  expires_in = expires_in,
  channel_of = channel_of,
}
