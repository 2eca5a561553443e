-- pairing_flow.lua: the whole QR pairing flow, end to end (`make demo` runs this).
--
-- A gateway creates a session in a fresh temp directory and shows the QR code and the
-- 6-digit code. A simulated phone, in a separate Lua process (the same runtime) sharing the same sessions
-- file, enters the code and seals a 12-word mnemonic for the gateway (protocol v2:
-- X25519 + HKDF-SHA256 + AES-256-GCM). The gateway opens it in one locked transaction
-- (store:respond), marks the session completed, and lists the store with secrets redacted.
--
--   lua5.4 examples/pairing_flow.lua

-- Run from a source tree (after `make`): use the tree's lua/ and build/ (examples/lib).
do
  local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
  local tree = loadfile(here .. "/lib/source_tree.lua")
  if tree then tree(here .. "/..") end
end

local pairstore = require "pairstore"
local crypto = require "pairstore.crypto"
local qr = require "pairstore.qr"
local json = require("cjson").new()

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function heading(n, text)
  print()
  print(string.format("== %d. %s ==", n, text))
end

-- The phone, as its own process. It only needs what the QR code and the operator gave it:
-- the sid and the gateway's public key (from the URL), and the 6-digit code.
local PHONE = [[
local sid, pk, code, path, aead = ...
local pairstore = require "pairstore"
local crypto = require "pairstore.crypto"
local json = require("cjson").new()

-- Stands in for the gateway's code-check endpoint (GET /start?sid=&c=): same file, same lock.
local store = pairstore.open(path)
print("[phone] scanned: sid " .. sid .. ", gateway key " .. pk:sub(1, 12) .. "...")
local s, err = store:verify_code(sid, code)
if not s then
  io.stderr:write("[phone] code rejected: ", tostring(err), "\n")
  os.exit(1)
end
print("[phone] entered code " .. code .. ": accepted, session is " .. s.status)

-- A BIP-39 style 12-word phrase (words from the BIP-39 English list; no checksum: a demo).
local WORDS = {
  "abandon", "ability", "able", "about", "above", "absent", "absorb", "abstract", "absurd",
  "abuse", "access", "accident", "account", "accuse", "achieve", "acid", "acoustic", "acquire",
  "across", "act", "action", "actor", "actress", "actual", "adapt", "add", "addict", "address",
  "adjust", "admit", "adult", "advance", "advice", "aerobic", "affair", "afford", "afraid",
  "again", "age", "agent", "agree", "ahead", "aim", "air", "airport", "aisle", "alarm", "album",
  "alcohol", "alert", "alien", "all", "alley", "allow", "almost", "alone", "alpha", "already",
  "also", "alter", "always", "amateur", "amazing", "among",
}
local picked = {}
for i = 1, 12 do picked[i] = WORDS[math.random(#WORDS)] end
local mnemonic = table.concat(picked, " ")
print("[phone] mnemonic to send: " .. mnemonic)

local box, why = crypto.seal { pk_gateway = pk, sid = sid, plaintext = mnemonic, aead = aead }
if not box then
  io.stderr:write("[phone] cannot seal: ", tostring(why), "\n")
  os.exit(1)
end
print(json.encode { v = 1, sid = sid, pk_d = box.pk_d, nonce = box.nonce, ct = box.ct })
]]

local tmp = io.popen("mktemp -d /tmp/pairstore-demo.XXXXXX"):read("*l")
local path = tmp .. "/pair-sessions.json"
local store = pairstore.open(path)

-- Protocol v2 (AES-256-GCM) needs AES-NI in libsodium; without it fall back to v1, loudly.
local AEAD = crypto.aead_available("aes-256-gcm") and "aes-256-gcm" or "chacha20-poly1305"

local function main()
  if AEAD ~= "aes-256-gcm" then
    print("note: this CPU has no AES-256-GCM in libsodium; the demo uses protocol v1 (ChaCha20-Poly1305)")
  end
  heading(1, "Gateway: create a pairing session")
  local s = assert(store:create { mode = "generate", operator = { channel = "cli" } })
  local url = pairstore.pairing_url("https://pair.example/pair", s)
  print("sessions file: " .. path)
  print("sid:           " .. s.sid)
  print("code:          " .. s.secondaryCode .. "   (shown to the operator only)")
  print("pairing URL:   " .. url)
  print()
  io.write(assert(qr.render(url)))

  heading(2, "Phone (a separate " .. require("pairstore.compat").runtime .. " process): enter the code, seal a 12-word mnemonic")
  local script = tmp .. "/phone.lua"
  local f = assert(io.open(script, "w"))
  f:write(PHONE)
  f:close()
  -- The child finds the modules the way this process did.
  local cmd = string.format("LUA_PATH=%s LUA_CPATH=%s %s %s %s %s %s %s %s",
    q(package.path), q(package.cpath), require("pairstore.compat").runtime, q(script), q(s.sid), q(s.pkGatewayB64), q(s.secondaryCode), q(path), q(AEAD))
  local p = assert(io.popen(cmd, "r"))
  local lines = {}
  for l in p:lines() do lines[#lines + 1] = l end
  local ok = p:close()
  local body_text, sent
  for _, l in ipairs(lines) do
    if l:sub(1, 1) == "{" then
      body_text = l
      print("[phone] POST /respond " .. l)
    else
      print(l)
      sent = l:match("^%[phone%] mnemonic to send: (.*)$") or sent
    end
  end
  if not ok or not body_text then error("the phone process failed") end

  heading(3, "Gateway: store:respond() checks, consumes and decrypts in one locked transaction")
  local body = json.decode(body_text)
  local plaintext, consumed = store:respond(s.sid, body, { aead = AEAD })
  if not plaintext then error("respond failed: " .. tostring(consumed)) end
  print("status:          " .. consumed.status)
  print("opened mnemonic: " .. plaintext)
  print("matches what the phone sealed: " .. (plaintext == sent and "yes" or "NO"))
  if plaintext ~= sent then error("the opened mnemonic differs from the one sent") end
  local _, replay = store:respond(s.sid, body, { aead = AEAD })
  print("the same response again:        " .. tostring(replay))

  heading(4, "Gateway: import the key, then mark the session completed")
  local done = assert(store:transition(s.sid, "completed"))
  print("status: " .. done.status)

  heading(5, "The store, as an operator sees it (redacted)")
  for _, x in ipairs(assert(store:list_all())) do
    local r = pairstore.redact(x)
    print(string.format("%s  %-9s  mode %s  code %s  sk %s", r.sid, r.status, r.mode, r.secondaryCode, r.skGatewayB64))
  end
  print()
  print("pairing complete")
end

local ok, err = pcall(main)
store:close()
os.execute("rm -rf " .. q(tmp))
if not ok then
  io.stderr:write("pairing_flow.lua: ", tostring(err), "\n")
  os.exit(1)
end
