--- pairstore.respond: the phone's response, as one locked transaction.
--
-- respond(store, sid, body, opts) --> plaintext, session | nil, reason, reason
--
-- body is what the phone POSTs: { v = 1, sid = ..., pk_d = ..., nonce = ..., ct = ... }.
-- In order (the reference gateway's semantics):
--   1. shape checks, before anything is read or locked: bad_request;
--   2. consume's checks under the lock: not_found, expired, already_consumed, rejected;
--   3. the code was never verified (status not device_connected): not_device_connected, and
--      the session is rejected;
--   4. decryption: decrypt_failed, and the session is rejected ("unsupported" when this CPU
--      lacks AES-256-GCM: the session is left as it was, the phone may retry elsewhere);
--   5. success: the session is stored consumed; the caller finishes its own work with the
--      plaintext and then calls store:transition(sid, "completed").
-- Steps 2 to 5 are one C operation (store._core:respond), whose rule is in csrc/rules.c.
-- Failures of the store itself (lock, I/O, ...) pass through as nil, message, code.
-- Programming errors (sid not 32 lowercase hex, bad opts) raise at the caller's level.

local crypto = require "pairstore.crypto"
local core = require "pairstore.core"

local type, error, tostring, rawget = type, error, tostring, rawget

local AEAD = {}
for _, a in ipairs(crypto.AEADS) do AEAD[a] = true end

local function argerror(msg)
  error("pairstore.respond: " .. msg, 3)
end

local B64U_VALUE = {}
do
  local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
  for i = 1, #alphabet do B64U_VALUE[alphabet:byte(i)] = i - 1 end
end

local MAX_B64U = 2731 -- characters of the longest field (2048 bytes): no scan of huge input

-- Decoded length of canonical unpadded base64url text, or nil when it is not that.
local function b64u_len(s)
  if type(s) ~= "string" then return nil end
  local n = #s
  if n > MAX_B64U or n % 4 == 1 or not s:match("^[A-Za-z0-9_%-]*$") then return nil end
  -- Canonical: the bits past the last whole byte must be zero.
  if n % 4 == 2 and B64U_VALUE[s:byte(n)] % 16 ~= 0 then return nil end
  if n % 4 == 3 and B64U_VALUE[s:byte(n)] % 4 ~= 0 then return nil end
  return math.floor(n * 3 / 4)
end

local function shape_ok(sid, body)
  if type(body) ~= "table" then return false end
  if body.v ~= 1 then return false end
  local bsid = body.sid
  if not core.is_sid(bsid) or bsid ~= sid then
    return false
  end
  if b64u_len(body.pk_d) ~= 32 then return false end
  if b64u_len(body.nonce) ~= 12 then return false end
  local ctlen = b64u_len(body.ct)
  if not ctlen or ctlen < 17 or ctlen > 2048 then return false end
  return true
end

local function fail(reason) return nil, reason, reason end

return function(store, sid, body, opts)
  local bad_sid = core.sid_error("respond", sid) -- (the core's one sid check and message)
  if bad_sid then error(bad_sid, 2) end
  if opts ~= nil and type(opts) ~= "table" then argerror("opts must be a table or nil") end
  local aead = opts and opts.aead or "aes-256-gcm"
  if not AEAD[aead] then argerror("unknown aead " .. tostring(aead)) end

  if not shape_ok(sid, body) then
    -- (refused before the store is touched; counted like its operations)
    local m = type(store) == "table" and rawget(store, "_metrics")
    if m then return m:done("respond", m.clock(), fail("bad_request")) end
    return fail("bad_request")
  end

  -- consume's rule (rules.c) and the decryption, in C under the store's lock
  if type(store) ~= "table" or not rawget(store, "_core") then argerror("store must be a pairstore store") end
  return store:_txn("respond", sid, body.pk_d, body.nonce, body.ct, aead)
end
