--- pairstore.cli.live: the live view of `create --wait` and `watch`. It follows a session
-- until it can no longer change (a terminal status, except consumed, from which the gateway
-- still finishes it (completed) or rejects it), sleeping in store:wait (woken by a change, by
-- the session's expiry, by SIGINT, SIGTERM or SIGHUP, and on a terminal once a second to
-- redraw the countdown). A store that cannot be reached (unavailable, timeout) is waited out
-- while the session can still complete.
local pairstore = require "pairstore"
local core = require "pairstore.core"
local output = require "pairstore.cli.output"
local list = require "pairstore.cli.commands.list"
local visible = output.visible

local M = {}

M.SIGNAL_EXIT = { SIGINT = 130, SIGTERM = 143, SIGHUP = 129 }

local function ended(status)
  return pairstore.is_terminal(status) and status ~= "consumed"
end
local function end_code(status) return status == "completed" and 0 or 1 end

-- What a failed read may recover from: the store did not answer, not "no such session".
local PASSING = { unavailable = true, timeout = true }

function M.signal_note(sig)
  return sig == "SIGINT" and "interrupted" or ("got " .. sig)
end

-- The store's clock, or this machine's when the store cannot give it (a server that is down).
local function now_of(store)
  local ok, now = pcall(store.now, store)
  return ok and type(now) == "number" and now or core.now_ms()
end

local function status_text(s, now)
  if s.status == "consumed" then return "consumed (waiting for the gateway to finish)" end
  local status = output.display(s.status) -- a hand-edited status is text from the file too
  if pairstore.is_terminal(s.status) then return status end
  local left = list.expires_in(s, now)
  -- Short enough that the redrawn line fits an 80-column terminal.
  local hint = s.status == "awaiting_scan" and "waiting for the phone to scan"
    or s.status == "device_connected" and "code ok, waiting for the payload" or ""
  return string.format("%s, %s left%s", status, left, hint ~= "" and (" (" .. hint .. ")") or "")
end

-- Whether the session as last read can still complete (not ended, not past its expiry).
local function can_complete(s)
  return s ~= nil and not ended(s.status) and type(s.expiresAtMs) == "number"
    and core.now_ms() <= s.expiresAtMs
end

-- store:get(sid), retried while a failure is one the store may recover from and `known`
-- (the session as last read) can still complete: returns s, msg, code, or nil, nil, nil, sig
-- when a signal came during a pause.
local function read(ctx, store, sid, known)
  local delay, noted = 100, false
  while true do
    local s, msg, code = store:get(sid)
    if s or not PASSING[code] or not can_complete(known) then
      if s and noted then ctx.w:warn("pairstore: note: the store answers again") end
      return s, msg, code
    end
    if not noted then
      ctx.w:warn("pairstore: note: cannot read ", sid, ": ", tostring(msg), " [", tostring(code),
        "]; trying again while the session can still complete")
      noted = true
    end
    local left = known.expiresAtMs - core.now_ms()
    local sig = core._pause(math.max(1, math.floor(math.min(delay, left + 1))))
    if sig then return nil, nil, nil, sig end
    delay = math.min(delay * 2, 1000)
  end
end

--- Follows sid; the caller holds SIGINT, SIGTERM and SIGHUP blocked, so that one that
-- arrives while this runs Lua code is taken by the next wait instead of killing the process.
-- on_signal(name) is called on a signal; give_up() (optional) before giving up on an error,
-- returning a note for the message; known: the session as the caller last read it (its
-- expiry bounds the waiting out of a store that does not answer). Returns the exit code: 0 completed, 1 expired, rejected
-- or gone, 2 an error, 130/143/129 a signal.
function M.follow(ctx, store, sid, on_signal, give_up, known)
  local w = ctx.w
  local tty = ctx:is_tty()
  local last_status, last_line
  local function finish(line, rc)
    if tty then w:out("\r\27[K", line, "\n") else w:out(line, "\n") end
    w:flush()
    return rc
  end
  local function signalled(sig)
    if tty then w:out("\r\27[K", last_line or "", "\n") end
    w:flush()
    on_signal(sig)
    return M.SIGNAL_EXIT[sig] or 2
  end
  local s, msg, code, sig = store:get(sid)
  while true do
    if not s and not sig and PASSING[code] and known then
      s, msg, code, sig = read(ctx, store, sid, known)
    end
    if sig then return signalled(sig) end
    if not s then
      if code == "not_found" then return finish("session " .. visible(sid) .. " no longer exists", 1) end
      if tty and last_line then w:out("\n") end
      w:flush()
      local note = give_up and give_up()
      w:warn("pairstore: cannot read ", sid, ": ", tostring(msg), code and code ~= msg and (" [" .. code .. "]") or "",
        note and ("; " .. note) or "")
      return 2
    end
    known = s
    if ended(s.status) then
      if tty then return finish("status: " .. status_text(s), end_code(s.status)) end
      if s.status ~= last_status then w:out("status: ", status_text(s), "\n") end
      w:flush()
      return end_code(s.status)
    end
    local now = now_of(store)
    if tty then
      local line = "status: " .. status_text(s, now)
      if line ~= last_line then
        w:out("\r\27[K", line)
        last_line = line
      end
    elseif s.status ~= last_status then
      w:out("status: ", status_text(s, now), "\n")
    end
    if not w:flush() then return 2 end
    last_status = s.status
    -- since = s: a change made while this one was shown is not missed
    local nxt, wmsg, wcode, wsig = store:wait(sid, { timeout_ms = tty and 1000 or nil, signals = true, since = s })
    if nxt then
      s = nxt
    elseif wcode == "signal" then
      sig = wsig
    elseif not (wcode == "timeout" and wmsg == "timeout") then
      s, msg, code = nil, wmsg, wcode
    end
  end
end

return M
