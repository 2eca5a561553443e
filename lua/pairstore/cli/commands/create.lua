--- pairstore create: start a pairing session; print its code, URL and QR code; --wait
-- follows it live. The only command that prints the 6-digit code.
local pairstore = require "pairstore"
local core = require "pairstore.core"
local compat = require "pairstore.compat"
local qr = require "pairstore.qr"
local output = require "pairstore.cli.output"
local live = require "pairstore.cli.live"
local list = require "pairstore.cli.commands.list"

-- Seconds as decimal digits; a number too large for an integer is math.huge (clamped later).
-- Gives { seconds =, text = (as typed, for the clamp note) }.
local function positive_int(v)
  if not v:match("^%d+$") then return nil, "expected a positive number of seconds, got " .. v end
  local n = compat.tointeger(tonumber(v)) or math.huge
  if n <= 0 then return nil, "expected a positive number of seconds, got " .. v end
  return { seconds = n, text = v }
end

-- Text the operator chose: non-empty, printable UTF-8.
local function printable(what)
  return function(v)
    if v == "" then return nil, what .. " must not be empty" end
    if output.visible(v) ~= v:gsub("\\", "\\\\") then
      return nil, what .. " must be printable UTF-8, got \"" .. v .. "\""
    end
    return v
  end
end

-- The pairing URL's base: http(s), printable ASCII, no query or fragment (the sid and the key
-- are appended as ?sid=...#pk=...). nil and a reason otherwise.
local function check_base_url(v, where)
  if v == "" then return nil, where .. " must not be empty" end
  if not v:match("^[!-~]+$") then return nil, where .. " must be printable ASCII without spaces, got \"" .. v .. "\"" end
  if not v:match("^[Hh][Tt][Tt][Pp][Ss]?://[^/?#]+") then
    return nil, where .. " must be an http:// or https:// URL, got \"" .. v .. "\""
  end
  if v:find("[?#]") then return nil, where .. " must not have a query or fragment (the sid and key are appended), got \"" .. v .. "\"" end
  return v
end

-- Every argument is checked before anything is created or opened.
local function check(ctx, args)
  local base, why
  if args.url then
    base, why = check_base_url(args.url, "--url")
  elseif ctx.getenv("PAIRSTORE_URL") then
    base, why = check_base_url(ctx.getenv("PAIRSTORE_URL"), "$PAIRSTORE_URL")
  else
    why = "no pairing URL: pass --url BASE or set $PAIRSTORE_URL (the phone opens BASE?sid=...#pk=...)"
  end
  if not base then ctx:die(why) end
  args.base = base
end

-- Rejects the session create made and could not see through; returns a note for the message.
local function reject_created(store, sid)
  local r, rmsg = store:reject(sid)
  if r then return "session " .. sid .. " rejected" end
  return "could not reject " .. sid .. ": " .. tostring(rmsg)
end

local function run(ctx, args, store)
  local w = ctx.w
  local ttl_ms
  if args.ttl then
    -- The store's clamp (pairstore.clamp_ttl), in float ms so that no --ttl wraps around.
    ttl_ms = pairstore.clamp_ttl(args.ttl.seconds * 1000.0)
    if ttl_ms ~= args.ttl.seconds * 1000.0 then
      w:warn(string.format("pairstore: note: --ttl %s is outside %d..%d seconds; using %d",
        args.ttl.text, math.floor(pairstore.MIN_TTL_MS / 1000), math.floor(pairstore.MAX_TTL_MS / 1000),
        math.floor(ttl_ms / 1000)))
    end
  end
  -- From here on SIGINT, SIGTERM and SIGHUP wait for us: whatever the moment, the session is
  -- rejected if the operator gives up on it.
  if args.wait then ctx:is_tty() end
  core._hold_signals(true)
  local s, msg, code = store:create { mode = args.mode, operator = { channel = args.channel }, ttl_ms = ttl_ms }
  if not s then ctx:failed("cannot create a session", msg, code) end
  local url = pairstore.pairing_url(args.base, s)
  local art, qmsg = qr.render(url, { ascii = args.ascii, invert = args.invert })
  w:out("Pairing session created\n")
  w:out("  sid:      ", s.sid, "\n")
  w:out("  code:     ", s.secondaryCode, "   (enter it on the phone after scanning)\n")
  w:out("  mode:     ", s.mode, ", channel ", list.channel_of(s), "\n")
  w:out("  expires:  ", output.local_time(s.expiresAtMs), " (in ", output.duration(s.expiresAtMs - s.createdAtMs), ")\n")
  w:out("  url:      ", url, "\n\n")
  if art then w:out(art) else w:warn("pairstore: cannot draw the QR code: ", tostring(qmsg)) end
  w:out("\nScan the code with the phone, then enter the 6-digit code on it.\n")
  local ok, err = w:flush()
  if not ok then
    ctx:die("cannot write the output (" .. tostring(err) .. "): " .. reject_created(store, s.sid)
      .. ", since its code could not be shown")
  end
  if not args.wait then
    local sig = core._hold_signals(false)
    if sig then
      w:warn("pairstore: ", live.signal_note(sig), "; ", reject_created(store, s.sid))
      return live.SIGNAL_EXIT[sig]
    end
    return 0
  end
  w:out("\n")
  local rc = live.follow(ctx, store, s.sid, function(sig)
    w:warn("pairstore: ", live.signal_note(sig), "; ", reject_created(store, s.sid))
  end, function()
    local cur = store:get(s.sid)
    if cur and pairstore.is_terminal(cur.status) then return nil end
    return reject_created(store, s.sid)
  end, s)
  if w.err then
    local cur = store:get(s.sid)
    if cur and not pairstore.is_terminal(cur.status) then
      ctx:die("cannot write the output (" .. tostring(w.err) .. "): " .. reject_created(store, s.sid))
    end
    ctx:die("cannot write the output: " .. tostring(w.err))
  end
  return rc
end

return {
  summary = "Start a pairing session: print its code, URL and QR code.",
  epilog = "This is the only command that prints the 6-digit code. The pairing URL is\n"
    .. "BASE?sid=SID#pk=KEY with BASE from --url, else $PAIRSTORE_URL; without either, create\n"
    .. "refuses (phones must be sent to your own gateway). The QR code is drawn with Unicode half\n"
    .. "blocks for a dark terminal background (--invert for a light one), or in ASCII with '##'\n"
    .. "for dark modules (--ascii). --ttl is clamped to 300..3600 with a note on stderr.\n"
    .. "If the output cannot be written (a full disk, a closed pipe), the session is rejected\n"
    .. "and the exit code is 2. SIGINT, SIGTERM or SIGHUP reject the session (exit 130, 143, 129).\n"
    .. "With --wait: exit 0 when the session completes, 1 when it expires, is rejected or\n"
    .. "vanishes. On a terminal one status line is redrawn in place; otherwise one line is\n"
    .. "printed per status change. A store that cannot be reached (unavailable, timeout) is\n"
    .. "waited out while the session can still complete; giving up rejects the session.",
  define = function(cmd)
    cmd:option("--mode", "Pairing mode.", "generate"):choices { "generate", "import" }
    cmd:option("--channel", "Operator channel recorded in the session.", "cli"):argname("NAME")
      :convert(printable("--channel"))
    cmd:option("--ttl", "Lifetime in seconds (300..3600; default 900).")
      :argname("SECONDS"):convert(positive_int)
    cmd:option("--url", "Base of the pairing URL (default $PAIRSTORE_URL; required).")
      :argname("BASE")
    cmd:flag("--ascii", "Draw the QR code in plain ASCII.")
    cmd:flag("--invert", "Draw the QR code for a light terminal background.")
    cmd:flag("--wait", "Follow the session live until it ends.")
  end,
  check = check,
  run = run,
  broken_pipe = "error", -- (the code may not have been shown: the session is rejected)
}
