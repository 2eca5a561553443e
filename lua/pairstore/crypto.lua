-- pairstore.crypto: the pairing crypto (X25519 + HKDF-SHA256 + AEAD) over the C core.
-- Keys, nonces and ciphertexts are base64url without padding.

local core = require "pairstore.core"
local compat = require "pairstore.compat"

local crypto = {}

crypto.AEADS = { "aes-256-gcm", "chacha20-poly1305" }

local DEFAULT_AEAD = "aes-256-gcm"
local KNOWN_AEAD = { ["aes-256-gcm"] = true, ["chacha20-poly1305"] = true }

-- The helpers below raise at level 3: the caller of the public function that called them.

local function check_table(fname, t)
  if type(t) ~= "table" then
    error(("pairstore.crypto.%s: expected a table argument, got %s"):format(fname, type(t)), 3)
  end
end

local function need_string(fname, t, key)
  local v = t[key]
  if type(v) ~= "string" then
    error(("pairstore.crypto.%s: field '%s' must be a string, got %s"):format(fname, key, type(v)), 3)
  end
  return v
end

local function opt_string(fname, t, key)
  local v = t[key]
  if v ~= nil and type(v) ~= "string" then
    error(("pairstore.crypto.%s: field '%s' must be a string or nil, got %s"):format(fname, key, type(v)), 3)
  end
  return v
end

local function check_aead(fname, aead)
  if aead == nil then return DEFAULT_AEAD end
  if type(aead) ~= "string" or not KNOWN_AEAD[aead] then
    error(("pairstore.crypto.%s: unknown aead %q (expected \"aes-256-gcm\" or \"chacha20-poly1305\")")
      :format(fname, tostring(aead)), 3)
  end
  return aead
end

local function check_arg(fname, n, v)
  if type(v) ~= "string" then
    error(("pairstore.crypto.%s: argument #%d must be a string, got %s"):format(fname, n, type(v)), 3)
  end
end

--- A fresh X25519 key pair: sk_b64u, pk_b64u.
function crypto.keypair()
  return core.crypto_keypair()
end

--- The X25519 public key of a secret key.
function crypto.public_key(sk)
  check_arg("public_key", 1, sk)
  local ok, pk = pcall(core.crypto_public_key, sk)
  if not ok then -- the C check's message, raised at the caller's level
    error("pairstore.crypto.public_key: " .. (tostring(pk):match("%((.*)%)$") or tostring(pk)), 2)
  end
  return pk
end

--- RFC 5869 HKDF-SHA256 over raw byte strings; length 1..8160.
function crypto.hkdf_sha256(ikm, salt, info, length)
  check_arg("hkdf_sha256", 1, ikm)
  check_arg("hkdf_sha256", 2, salt)
  check_arg("hkdf_sha256", 3, info)
  if not compat.is_integer(length) or length < 1 or length > 8160 then
    error("pairstore.crypto.hkdf_sha256: length must be an integer in 1..8160", 2)
  end
  return (core.crypto_hkdf_sha256(ikm, salt, info, length))
end

--- Whether this build/CPU can use the named AEAD.
function crypto.aead_available(aead)
  if type(aead) ~= "string" or not KNOWN_AEAD[aead] then
    error(("pairstore.crypto.aead_available: unknown aead %q"):format(tostring(aead)), 2)
  end
  return core.crypto_aead_available(aead)
end

--- Encrypts like the phone does (used by tests and tooling).
-- args: pk_gateway, sid, plaintext, aead (default aes-256-gcm), sk_device?, nonce?
-- Returns { pk_d, nonce, ct } or nil, code, code.
function crypto.seal(args)
  check_table("seal", args)
  local pk_gateway = need_string("seal", args, "pk_gateway")
  local sid = need_string("seal", args, "sid")
  local plaintext = need_string("seal", args, "plaintext")
  local aead = check_aead("seal", args.aead)
  local sk_device = opt_string("seal", args, "sk_device")
  local nonce = opt_string("seal", args, "nonce")
  local pk_d, n, ct = core.crypto_seal(pk_gateway, sid, plaintext, aead, sk_device, nonce)
  if pk_d == nil then
    return nil, n, ct
  end
  return { pk_d = pk_d, nonce = n, ct = ct }
end

--- Decrypts what a phone sent.
-- args: sk_gateway, pk_device, sid, nonce, ct, aead (default aes-256-gcm)
-- Returns plaintext or nil, "decrypt_failed", "decrypt_failed" (nil, "unsupported", ... when
-- AES-256-GCM is unavailable).
function crypto.open(args)
  check_table("open", args)
  local sk_gateway = need_string("open", args, "sk_gateway")
  local pk_device = need_string("open", args, "pk_device")
  local sid = need_string("open", args, "sid")
  local nonce = need_string("open", args, "nonce")
  local ct = need_string("open", args, "ct")
  local aead = check_aead("open", args.aead)
  return core.crypto_open(sk_gateway, pk_device, sid, nonce, ct, aead)
end

return crypto
