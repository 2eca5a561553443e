-- Specs for pairstore.crypto: fixture vectors, RFC 5869 HKDF vectors, round trips and
-- failure modes of seal/open.

local crypto = require "pairstore.crypto"
local helpers = require "helpers"

local function read_fixture()
  return helpers.read_json(helpers.FIXTURES .. "/pairing-vectors.json")
end

local function unhex(s)
  return (s:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end

local function tohex(s)
  return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

local function bytes(from, to)
  local t = {}
  for b = from, to do t[#t + 1] = string.char(b) end
  return table.concat(t)
end

local b64u_encode, b64u_decode = helpers.b64u_encode, helpers.b64u_decode

local function flip_byte(b64, pos)
  local raw = b64u_decode(b64)
  local b = raw:byte(pos)
  b = b % 2 == 1 and b - 1 or b + 1 -- the lowest bit flipped
  return b64u_encode(raw:sub(1, pos - 1) .. string.char(b) .. raw:sub(pos + 1))
end

local function assert_decrypt_failed(a, b, c)
  assert.is_nil(a)
  assert.are.equal("decrypt_failed", b)
  assert.are.equal("decrypt_failed", c)
end

local SID = "0123456789abcdef0123456789abcdef"
local ZERO_KEY = b64u_encode(string.rep("\0", 32))

describe("pairstore.crypto", function()
  local fx = read_fixture()

  describe("spec helpers", function()
    it("base64url codec round-trips", function()
      for n = 0, 40 do
        local s = bytes(0, n - 1)
        assert.are.equal(s, b64u_decode(b64u_encode(s)))
      end
      assert.are.equal(43, #ZERO_KEY)
      assert.are.equal("AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA", b64u_encode(bytes(1, 32)))
    end)
  end)

  describe("module shape", function()
    it("lists the AEADs", function()
      assert.are.same({ "aes-256-gcm", "chacha20-poly1305" }, crypto.AEADS)
    end)

    it("reports AES-256-GCM availability (true on this CPU)", function()
      assert.is_true(crypto.aead_available("aes-256-gcm"))
      assert.is_true(crypto.aead_available("chacha20-poly1305"))
      assert.has_error(function() crypto.aead_available("aes-128-gcm") end)
      assert.has_error(function() crypto.aead_available(nil) end)
    end)
  end)

  describe("keys", function()
    it("derives every fixture public key from its secret key", function()
      assert.is_true(#fx.keypairs > 0)
      for _, kp in ipairs(fx.keypairs) do
        assert.are.equal(kp.pk_b64u, crypto.public_key(kp.sk_b64u))
      end
    end)

    it("derives the gateway and device public keys of every case", function()
      for _, c in ipairs(fx.cases) do
        assert.are.equal(c.pk_gateway_b64u, crypto.public_key(c.sk_gateway_b64u))
        assert.are.equal(c.pk_device_b64u, crypto.public_key(c.sk_device_b64u))
      end
    end)

    it("makes fresh, consistent key pairs", function()
      local sk1, pk1 = crypto.keypair()
      local sk2, pk2 = crypto.keypair()
      assert.are.equal(43, #sk1)
      assert.are.equal(43, #pk1)
      assert.are_not.equal(sk1, sk2)
      assert.are_not.equal(pk1, pk2)
      assert.are.equal(pk1, crypto.public_key(sk1))
      assert.are.equal(pk2, crypto.public_key(sk2))
    end)

    it("rejects malformed secret keys", function()
      local sk = fx.keypairs[1].sk_b64u
      assert.has_error(function() crypto.public_key(nil) end)
      assert.has_error(function() crypto.public_key(42) end)
      assert.has_error(function() crypto.public_key("") end)
      assert.has_error(function() crypto.public_key(sk .. "=") end)          -- padding
      assert.has_error(function() crypto.public_key(sk:sub(1, 42)) end)      -- short
      assert.has_error(function() crypto.public_key(sk .. "A") end)          -- long
      assert.has_error(function() crypto.public_key(sk:sub(1, 42) .. "F") end) -- non-canonical
      assert.has_error(function() crypto.public_key(sk:sub(1, 10) .. "+" .. sk:sub(12)) end)
    end)
  end)

  describe("hkdf_sha256", function()
    -- RFC 5869 appendix A, SHA-256 test cases 1-3.
    it("matches RFC 5869 test case 1", function()
      local okm = crypto.hkdf_sha256(string.rep("\11", 22), bytes(0x00, 0x0c), bytes(0xf0, 0xf9), 42)
      assert.are.equal("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
        .. "34007208d5b887185865", tohex(okm))
    end)

    it("matches RFC 5869 test case 2", function()
      local okm = crypto.hkdf_sha256(bytes(0x00, 0x4f), bytes(0x60, 0xaf), bytes(0xb0, 0xff), 82)
      assert.are.equal("b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
        .. "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
        .. "cc30c58179ec3e87c14c01d5c1f3434f1d87", tohex(okm))
    end)

    it("matches RFC 5869 test case 3 (empty salt and info)", function()
      local okm = crypto.hkdf_sha256(string.rep("\11", 22), "", "", 42)
      assert.are.equal("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
        .. "9d201395faa4b61a96c8", tohex(okm))
    end)

    it("gives prefixes of the same stream for shorter lengths, up to 8160 bytes", function()
      local long = crypto.hkdf_sha256("ikm", "salt", "info", 8160)
      assert.are.equal(8160, #long)
      for _, n in ipairs({ 1, 31, 32, 33, 64, 100 }) do
        assert.are.equal(long:sub(1, n), crypto.hkdf_sha256("ikm", "salt", "info", n))
      end
    end)

    it("rejects bad lengths and arguments", function()
      assert.has_error(function() crypto.hkdf_sha256("a", "b", "c", 0) end)
      assert.has_error(function() crypto.hkdf_sha256("a", "b", "c", 8161) end)
      assert.has_error(function() crypto.hkdf_sha256("a", "b", "c", 1.5) end)
      assert.has_error(function() crypto.hkdf_sha256("a", nil, "c", 32) end)
      assert.has_error(function() crypto.hkdf_sha256(1, "b", "c", 32) end)
    end)

    it("derives every fixture case's AEAD key from its shared secret", function()
      for _, c in ipairs(fx.cases) do
        local key = crypto.hkdf_sha256(unhex(c.shared_secret_hex), c.sid, c.hkdf_info, 32)
        assert.are.equal(c.aead_key_hex, tohex(key))
      end
    end)
  end)

  describe("fixture cases", function()
    it("has v2 and v1 cases", function()
      local seen = {}
      for _, c in ipairs(fx.cases) do seen[c.aead] = true end
      assert.is_true(seen["aes-256-gcm"])
      assert.is_true(seen["chacha20-poly1305"])
    end)

    for _, c in ipairs(fx.cases) do
      it("seal reproduces " .. c.name, function()
        local out = assert(crypto.seal {
          pk_gateway = c.pk_gateway_b64u, sid = c.sid, plaintext = c.plaintext,
          aead = c.aead, sk_device = c.sk_device_b64u, nonce = c.nonce_b64u,
        })
        assert.are.equal(c.pk_device_b64u, out.pk_d)
        assert.are.equal(c.nonce_b64u, out.nonce)
        assert.are.equal(c.ct_b64u, out.ct)
      end)

      it("open decrypts " .. c.name, function()
        local pt = crypto.open {
          sk_gateway = c.sk_gateway_b64u, pk_device = c.pk_device_b64u, sid = c.sid,
          nonce = c.nonce_b64u, ct = c.ct_b64u, aead = c.aead,
        }
        assert.are.equal(c.plaintext, pt)
        -- ECDH is symmetric: the device side can open it too.
        assert.are.equal(c.plaintext, crypto.open {
          sk_gateway = c.sk_device_b64u, pk_device = c.pk_gateway_b64u, sid = c.sid,
          nonce = c.nonce_b64u, ct = c.ct_b64u, aead = c.aead,
        })
      end)

      it("open fails with the other aead for " .. c.name, function()
        local other = c.aead == "aes-256-gcm" and "chacha20-poly1305" or "aes-256-gcm"
        assert_decrypt_failed(crypto.open {
          sk_gateway = c.sk_gateway_b64u, pk_device = c.pk_device_b64u, sid = c.sid,
          nonce = c.nonce_b64u, ct = c.ct_b64u, aead = other,
        })
      end)
    end

    it("rejects the tampered ciphertext", function()
      local t = fx.tampered
      local base
      for _, c in ipairs(fx.cases) do
        if c.name == t.case then base = c end
      end
      assert.is_table(base)
      assert.are.equal("decrypt_failed", t.expect)
      assert.are_not.equal(base.ct_b64u, t.ct_b64u)
      assert_decrypt_failed(crypto.open {
        sk_gateway = base.sk_gateway_b64u, pk_device = base.pk_device_b64u, sid = base.sid,
        nonce = base.nonce_b64u, ct = t.ct_b64u, aead = base.aead,
      })
    end)

    it("defaults to aes-256-gcm", function()
      local c
      for _, x in ipairs(fx.cases) do
        if x.aead == "aes-256-gcm" then c = x break end
      end
      local out = crypto.seal {
        pk_gateway = c.pk_gateway_b64u, sid = c.sid, plaintext = c.plaintext,
        sk_device = c.sk_device_b64u, nonce = c.nonce_b64u,
      }
      assert.are.equal(c.ct_b64u, out.ct)
      assert.are.equal(c.plaintext, crypto.open {
        sk_gateway = c.sk_gateway_b64u, pk_device = c.pk_device_b64u, sid = c.sid,
        nonce = c.nonce_b64u, ct = c.ct_b64u,
      })
    end)
  end)

  for _, aead in ipairs(crypto.AEADS) do
    describe("round trips with " .. aead, function()
      local sk_g, pk_g, sealed, msg

      before_each(function()
        sk_g, pk_g = crypto.keypair()
        msg = "secret phrase " .. ("x"):rep(50)
        sealed = assert(crypto.seal { pk_gateway = pk_g, sid = SID, plaintext = msg, aead = aead })
      end)

      local function open_with(over)
        local a = {
          sk_gateway = sk_g, pk_device = sealed.pk_d, sid = SID,
          nonce = sealed.nonce, ct = sealed.ct, aead = aead,
        }
        for k, v in pairs(over or {}) do a[k] = v end
        return crypto.open(a)
      end

      it("opens what it sealed, for 1, 100 and 2000 byte plaintexts", function()
        for _, n in ipairs({ 1, 100, 2000 }) do
          local pt = ("\0\1\2\255abc"):rep(400):sub(1, n)
          local s = assert(crypto.seal { pk_gateway = pk_g, sid = SID, plaintext = pt, aead = aead })
          assert.are.equal(#b64u_encode(("x"):rep(n + 16)), #s.ct)
          assert.are.equal(pt, crypto.open {
            sk_gateway = sk_g, pk_device = s.pk_d, sid = SID, nonce = s.nonce, ct = s.ct, aead = aead,
          })
        end
        assert.are.equal(msg, open_with())
      end)

      it("uses a fresh 12-byte nonce and device key each call", function()
        local other = assert(crypto.seal { pk_gateway = pk_g, sid = SID, plaintext = msg, aead = aead })
        assert.are.equal(16, #sealed.nonce)
        assert.are.equal(12, #b64u_decode(sealed.nonce))
        assert.are.equal(43, #sealed.pk_d)
        assert.are_not.equal(sealed.nonce, other.nonce)
        assert.are_not.equal(sealed.pk_d, other.pk_d)
        assert.are_not.equal(sealed.ct, other.ct)
      end)

      it("fails with a wrong sid (AAD)", function()
        assert_decrypt_failed(open_with { sid = "ffffffffffffffffffffffffffffffff" })
        assert_decrypt_failed(open_with { sid = "" })
      end)

      it("fails with a wrong gateway key", function()
        local other_sk = crypto.keypair()
        assert_decrypt_failed(open_with { sk_gateway = other_sk })
      end)

      it("fails with a wrong device key or nonce", function()
        local _, other_pk = crypto.keypair()
        assert_decrypt_failed(open_with { pk_device = other_pk })
        assert_decrypt_failed(open_with { nonce = flip_byte(sealed.nonce, 1) })
      end)

      it("fails when any ciphertext byte is flipped", function()
        local n = #b64u_decode(sealed.ct)
        for _, pos in ipairs({ 1, 10, n - 16, n - 15, n }) do
          assert_decrypt_failed(open_with { ct = flip_byte(sealed.ct, pos) })
        end
      end)

      it("fails when the ciphertext is truncated or too short", function()
        local raw = b64u_decode(sealed.ct)
        assert_decrypt_failed(open_with { ct = b64u_encode(raw:sub(1, -2)) })
        assert_decrypt_failed(open_with { ct = b64u_encode(raw:sub(1, 17)) })
        assert_decrypt_failed(open_with { ct = b64u_encode(raw:sub(1, 16)) })
        assert_decrypt_failed(open_with { ct = "" })
        assert_decrypt_failed(open_with { ct = b64u_encode(raw .. "\0") })
      end)

      it("fails for low-order device keys", function()
        assert_decrypt_failed(open_with { pk_device = ZERO_KEY })
        assert_decrypt_failed(open_with { pk_device = b64u_encode("\1" .. ("\0"):rep(31)) })
      end)

      it("fails for malformed base64url from the phone", function()
        assert_decrypt_failed(open_with { pk_device = sealed.pk_d .. "=" })
        assert_decrypt_failed(open_with { pk_device = sealed.pk_d:sub(1, 42) })
        assert_decrypt_failed(open_with { pk_device = "not base64url at all!" })
        assert_decrypt_failed(open_with { nonce = sealed.nonce .. "A" })
        assert_decrypt_failed(open_with { nonce = sealed.nonce:sub(1, 15) })
        assert_decrypt_failed(open_with { nonce = "AAAAAAAAAAAAAAA+" })
        assert_decrypt_failed(open_with { ct = sealed.ct .. "=" })
        assert_decrypt_failed(open_with { ct = sealed.ct .. "A" })
        assert_decrypt_failed(open_with { ct = "*" .. sealed.ct:sub(2) })
        assert_decrypt_failed(open_with { ct = sealed.ct:sub(1, 10) .. "/" .. sealed.ct:sub(12) })
      end)

      it("fails to seal to a low-order gateway key", function()
        assert_decrypt_failed(crypto.seal { pk_gateway = ZERO_KEY, sid = SID, plaintext = "x", aead = aead })
      end)
    end)
  end

  describe("argument errors", function()
    local sk_g, pk_g = crypto.keypair()
    local good_seal = { pk_gateway = pk_g, sid = SID, plaintext = "hello" }

    local function with(t, over)
      local a = {}
      for k, v in pairs(t) do a[k] = v end
      for k, v in pairs(over) do a[k] = v end
      return a
    end

    it("seal raises on bad arguments", function()
      assert.has_error(function() crypto.seal() end)
      assert.has_error(function() crypto.seal("x") end)
      assert.has_error(function() crypto.seal(with(good_seal, { pk_gateway = false })) end)
      assert.has_error(function() crypto.seal(with(good_seal, { sid = 12 })) end)
      assert.has_error(function() crypto.seal(with(good_seal, { plaintext = {} })) end)
      assert.has_error(function() crypto.seal(with(good_seal, { plaintext = "" })) end)
      assert.has_error(function() crypto.seal(with(good_seal, { aead = "aes-128-gcm" })) end)
      assert.has_error(function() crypto.seal(with(good_seal, { aead = 1 })) end)
      assert.has_error(function() crypto.seal(with(good_seal, { sk_device = 1 })) end)
      assert.has_error(function() crypto.seal(with(good_seal, { nonce = 1 })) end)
      assert.has_error(function() crypto.seal(with(good_seal, { pk_gateway = "abc" })) end)
      assert.has_error(function() crypto.seal(with(good_seal, { pk_gateway = pk_g .. "=" })) end)
      assert.has_error(function() crypto.seal(with(good_seal, { sk_device = "abc" })) end)
      assert.has_error(function() crypto.seal(with(good_seal, { nonce = "AAAA" })) end)
      assert.has_error(function() crypto.seal(with(good_seal, { nonce = ZERO_KEY })) end)
      assert.is_table(crypto.seal(good_seal))
    end)

    it("seal reports errors at the caller's level", function()
      local ok, err = pcall(crypto.seal, "x")
      assert.is_false(ok)
      assert.matches("expected a table", err)
      local _, err2 = pcall(function() crypto.seal(with(good_seal, { aead = "rot13" })) end)
      assert.matches("crypto_spec", err2)
      assert.matches("unknown aead", err2)
    end)

    it("open raises on bad argument types, unknown aead and a malformed own key", function()
      local s = assert(crypto.seal(good_seal))
      local good_open = { sk_gateway = sk_g, pk_device = s.pk_d, sid = SID, nonce = s.nonce, ct = s.ct }
      assert.are.equal("hello", crypto.open(good_open))
      assert.has_error(function() crypto.open() end)
      assert.has_error(function() crypto.open(42) end)
      for _, k in ipairs({ "sk_gateway", "pk_device", "sid", "nonce", "ct" }) do
        assert.has_error(function() crypto.open(with(good_open, { [k] = 7 })) end)
      end
      assert.has_error(function() crypto.open(with(good_open, { aead = "chacha" })) end)
      assert.has_error(function() crypto.open(with(good_open, { sk_gateway = "short" })) end)
    end)

    it("error messages carry no key material", function()
      local _, err = pcall(crypto.public_key, sk_g:sub(1, 42) .. "!")
      assert.is_string(err)
      assert.is_nil(err:find(sk_g:sub(1, 20), 1, true))
      local _, err2 = pcall(crypto.seal, with(good_seal, { sk_device = sk_g .. "A" }))
      assert.is_nil(err2:find(sk_g:sub(1, 20), 1, true))
    end)
  end)
end)
