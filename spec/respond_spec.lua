-- Specs for store:respond(): shape checks, consume's outcomes, not_device_connected,
-- decryption (fixture vectors and random round trips), and what each leaves stored; on both backends.
local crypto = require "pairstore.crypto"
local helpers = require "helpers"
local json = helpers.json

local T0 = 1764300000000
local VECTORS = helpers.read_json(helpers.FIXTURES .. "/pairing-vectors.json")
local AES = crypto.aead_available("aes-256-gcm")

local function case(name)
  for _, c in ipairs(VECTORS.cases) do
    if c.name == name then return c end
  end
  error("no fixture case " .. name)
end

local function unhex(s)
  return (s:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end

-- base64url without padding, both ways (independent of the code under test).
local b64u, unb64u = helpers.b64u_encode, helpers.b64u_decode

-- A store of backend whose next session has the fixture's sid and gateway key, and code
-- "123456": store, clock, where (see helpers.open_store).
local function fixture_store_on(backend, c, extra)
  local clock = helpers.clock(T0)
  local opts = {
    now = clock.now, durable = false,
    rng = {
      sid = function() return unhex(c.sid) end,
      secret_key = function() return unb64u(c.sk_gateway_b64u) end,
      code = function() return "123456" end,
    },
  }
  for k, v in pairs(extra or {}) do opts[k] = v end
  local store, where = helpers.open_store(backend, opts)
  return store, clock, where
end

local function plain_store_on(backend)
  local clock = helpers.clock(T0)
  local store, where = helpers.open_store(backend, { now = clock.now, durable = false })
  return store, clock, where
end

local function fixture_body(c, ct)
  return { v = 1, sid = c.sid, pk_d = c.pk_device_b64u, nonce = c.nonce_b64u, ct = ct or c.ct_b64u }
end

local function sealed(s, plaintext, aead)
  local box = assert(crypto.seal { pk_gateway = s.pkGatewayB64, sid = s.sid, plaintext = plaintext, aead = aead })
  return { v = 1, sid = s.sid, pk_d = box.pk_d, nonce = box.nonce, ct = box.ct }
end

local function assert_outcome(code, ...)
  local v, msg, c = ...
  assert.are.equal(3, select("#", ...))
  assert.is_nil(v)
  assert.are.equal(code, msg)
  assert.are.equal(code, c)
end

local stored = helpers.stored

for _, backend in ipairs(helpers.backends()) do
  describe("[" .. backend .. "]", function()
    local function fixture_store(c, extra) return fixture_store_on(backend, c, extra) end
    local function plain_store() return plain_store_on(backend) end

    describe("store:respond()", function()
      after_each(helpers.cleanup)

      describe("with the fixture vectors", function()
        it("opens the v2 (AES-256-GCM) vector and leaves the session consumed", function()
          if not AES then return end -- this CPU has no AES-256-GCM: see the 'unsupported' spec
          local c = case("v2-aes256gcm-12-words")
          local store, clock, where = fixture_store(c)
          local s = assert(store:create {})
          assert.are.equal(c.sid, s.sid)
          assert.are.equal(c.pk_gateway_b64u, s.pkGatewayB64)
          assert(store:verify_code(s.sid, "123456"))
          clock.advance(5000)

          local plaintext, session = store:respond(c.sid, fixture_body(c))
          assert.are.equal(c.plaintext, plaintext)
          assert.are.equal("consumed", session.status)
          assert.are.equal(T0 + 5000, session.lastStatusChangeAtMs)
          assert.are.equal(c.sid, session.sid)
          for k, v in pairs(session) do
            assert.are_not.equal(plaintext, v, "the plaintext leaked into field " .. k)
          end
          local onfile = stored(where, c.sid)
          assert.are.equal("consumed", onfile.status)
          assert.are.equal(T0 + 5000, onfile.lastStatusChangeAtMs)
          assert.is_nil(helpers.snapshot(where):find(c.plaintext, 1, true), "the plaintext was stored")
          -- The returned session is a copy: editing it changes nothing stored.
          session.status = "awaiting_scan"
          assert.are.equal("consumed", store:get(c.sid).status)

          clock.advance(1000)
          local done = assert(store:transition(c.sid, "completed"))
          assert.are.equal("completed", done.status)
          assert.are.equal(T0 + 6000, done.lastStatusChangeAtMs)
        end)

        it("opens the v1 (ChaCha20-Poly1305) vectors with aead = 'chacha20-poly1305'", function()
          for _, name in ipairs { "v1-chacha20poly1305-12-words", "v1-chacha20poly1305-24-words" } do
            local c = case(name)
            local store = fixture_store(c)
            assert(store:create {})
            assert(store:verify_code(c.sid, "123456"))
            local plaintext, session = store:respond(c.sid, fixture_body(c), { aead = "chacha20-poly1305" })
            assert.are.equal(c.plaintext, plaintext)
            assert.are.equal("consumed", session.status)
          end
        end)

        it("opens the 24-word v2 vector", function()
          if not AES then return end
          local c = case("v2-aes256gcm-24-words")
          local store = fixture_store(c)
          assert(store:create {})
          assert(store:verify_code(c.sid, "123456"))
          assert.are.equal(c.plaintext, (store:respond(c.sid, fixture_body(c))))
        end)

        it("returns decrypt_failed for the tampered ciphertext and rejects the session", function()
          if not AES then return end
          local c = case(VECTORS.tampered.case)
          local store, clock, where = fixture_store(c)
          assert(store:create {})
          assert(store:verify_code(c.sid, "123456"))
          clock.advance(7000)
          assert_outcome("decrypt_failed", store:respond(c.sid, fixture_body(c, VECTORS.tampered.ct_b64u)))
          local onfile = stored(where, c.sid)
          assert.are.equal("rejected", onfile.status)
          assert.are.equal(T0 + 7000, onfile.lastStatusChangeAtMs)
          -- The genuine payload cannot be used afterwards.
          assert_outcome("rejected", store:respond(c.sid, fixture_body(c)))
        end)

        it("returns decrypt_failed when the protocol is the wrong one (v1 payload opened as v2)", function()
          if not AES then return end
          local c = case("v1-chacha20poly1305-12-words")
          local store = fixture_store(c)
          assert(store:create {})
          assert(store:verify_code(c.sid, "123456"))
          assert_outcome("decrypt_failed", store:respond(c.sid, fixture_body(c), { aead = "aes-256-gcm" }))
          assert.are.equal("rejected", store:get(c.sid).status)
        end)
      end)

      describe("round trips with random keys", function()
        for _, aead in ipairs(crypto.AEADS) do
          it("opens what crypto.seal sealed with " .. aead, function()
            if not crypto.aead_available(aead) then return end
            local store = plain_store()
            for i = 1, 5 do
              local s = assert(store:create {})
              assert(store:verify_code(s.sid, s.secondaryCode))
              local words = {}
              for w = 1, 12 + (i % 2) * 12 do words[w] = "word" .. math.random(1, 2048) end
              local mnemonic = table.concat(words, " ")
              local plaintext, session = store:respond(s.sid, sealed(s, mnemonic, aead), { aead = aead })
              assert.are.equal(mnemonic, plaintext)
              assert.are.equal("consumed", session.status)
            end
          end)
        end

        it("defaults to AES-256-GCM (a v1 payload without opts fails)", function()
          if not AES then return end
          local store = plain_store()
          local s = assert(store:create {})
          assert(store:verify_code(s.sid, s.secondaryCode))
          assert_outcome("decrypt_failed", store:respond(s.sid, sealed(s, "a b c", "chacha20-poly1305")))
        end)

        it("rejects a payload sealed for another session", function()
          local store, _, where = plain_store()
          local a = assert(store:create {})
          local b = assert(store:create {})
          assert(store:verify_code(a.sid, a.secondaryCode))
          local body = sealed(b, "for b", "chacha20-poly1305")
          body.sid = a.sid
          assert_outcome("decrypt_failed", store:respond(a.sid, body, { aead = "chacha20-poly1305" }))
          assert.are.equal("rejected", stored(where, a.sid).status)
          assert.are.equal("awaiting_scan", stored(where, b.sid).status)
        end)
      end)

      describe("consume's outcomes", function()
        local store, clock, where, s, body
        before_each(function()
          store, clock, where = plain_store()
          s = assert(store:create {})
          body = sealed(s, "abandon ability able", "chacha20-poly1305")
        end)
        local OPTS = { aead = "chacha20-poly1305" }

        it("returns not_found for an unknown sid and writes nothing", function()
          local before = helpers.snapshot(where)
          local other = ("ab"):rep(16)
          body.sid = other
          assert_outcome("not_found", store:respond(other, body, OPTS))
          assert.are.equal(before, helpers.snapshot(where))
        end)

        it("returns expired once the TTL has passed (strictly after expiresAtMs)", function()
          assert(store:verify_code(s.sid, s.secondaryCode))
          clock.set(s.expiresAtMs + 1)
          assert_outcome("expired", store:respond(s.sid, body, OPTS))
          local onfile = stored(where, s.sid)
          assert.are.equal("expired", onfile.status)
          assert.are.equal(s.expiresAtMs, onfile.lastStatusChangeAtMs)
        end)

        it("still accepts the response at exactly expiresAtMs", function()
          assert(store:verify_code(s.sid, s.secondaryCode))
          clock.set(s.expiresAtMs)
          assert.are.equal("abandon ability able", (store:respond(s.sid, body, OPTS)))
        end)

        it("returns already_consumed for a replay, leaving the session as it was", function()
          assert(store:verify_code(s.sid, s.secondaryCode))
          clock.advance(1000)
          assert(store:respond(s.sid, body, OPTS))
          clock.advance(1000)
          assert_outcome("already_consumed", store:respond(s.sid, body, OPTS))
          local onfile = stored(where, s.sid)
          assert.are.equal("consumed", onfile.status)
          assert.are.equal(T0 + 1000, onfile.lastStatusChangeAtMs)
        end)

        it("returns already_consumed for a completed session, leaving it completed", function()
          assert(store:verify_code(s.sid, s.secondaryCode))
          assert(store:respond(s.sid, body, OPTS))
          clock.advance(500)
          assert(store:transition(s.sid, "completed"))
          clock.advance(500)
          assert_outcome("already_consumed", store:respond(s.sid, body, OPTS))
          local onfile = stored(where, s.sid)
          assert.are.equal("completed", onfile.status)
          assert.are.equal(T0 + 500, onfile.lastStatusChangeAtMs)
        end)

        it("returns rejected for a rejected session, leaving its timestamp", function()
          assert(store:verify_code(s.sid, s.secondaryCode))
          clock.advance(100)
          assert(store:reject(s.sid))
          clock.advance(100)
          assert_outcome("rejected", store:respond(s.sid, body, OPTS))
          local onfile = stored(where, s.sid)
          assert.are.equal("rejected", onfile.status)
          assert.are.equal(T0 + 100, onfile.lastStatusChangeAtMs)
        end)

        it("returns rejected after the code attempts ran out", function()
          local bad = s.secondaryCode == "000000" and "111111" or "000000"
          for _ = 1, 5 do store:verify_code(s.sid, bad) end
          assert_outcome("rejected", store:respond(s.sid, body, OPTS))
        end)

        it("checks expiry before the status (expired wins over already_consumed)", function()
          assert(store:verify_code(s.sid, s.secondaryCode))
          assert(store:respond(s.sid, body, OPTS))
          clock.set(s.expiresAtMs + 1)
          assert_outcome("expired", store:respond(s.sid, body, OPTS))
          assert.are.equal("consumed", stored(where, s.sid).status)
        end)

        it("returns not_device_connected when the code was never verified, and rejects the session", function()
          clock.advance(3000)
          assert_outcome("not_device_connected", store:respond(s.sid, body, OPTS))
          local onfile = stored(where, s.sid)
          assert.are.equal("rejected", onfile.status)
          assert.are.equal(T0 + 3000, onfile.lastStatusChangeAtMs)
          -- Verifying the code afterwards does not revive it.
          assert_outcome("rejected", store:verify_code(s.sid, s.secondaryCode))
          assert_outcome("rejected", store:respond(s.sid, body, OPTS))
        end)

        it("returns not_device_connected before trying to decrypt (even a garbage payload)", function()
          body.ct = b64u(("\0"):rep(40))
          assert_outcome("not_device_connected", store:respond(s.sid, body, OPTS))
          assert.are.equal("rejected", stored(where, s.sid).status)
        end)
      end)

      describe("shape checks", function()
        local store, where, s, good
        before_each(function()
          local st, _, p = plain_store()
          store, where = st, p
          s = assert(store:create {})
          assert(store:verify_code(s.sid, s.secondaryCode))
          good = sealed(s, "x y z", "chacha20-poly1305")
        end)

        local function with(field, value)
          local b = {}
          for k, v in pairs(good) do b[k] = v end
          b[field] = value
          return b
        end

        local function assert_bad(body, sid)
          local before = helpers.snapshot(where)
          assert_outcome("bad_request", store:respond(sid or s.sid, body, { aead = "chacha20-poly1305" }))
          assert.are.equal(before, helpers.snapshot(where), "a bad request must not touch the file")
          assert.are.equal("device_connected", store:get(s.sid).status)
        end

        it("rejects a body that is not a table", function()
          assert_bad(nil)
          assert_bad("{}")
          assert_bad(42)
        end)

        it("requires v == 1", function()
          assert_bad(with("v", nil))
          assert_bad(with("v", 2))
          assert_bad(with("v", "1"))
          assert_bad(with("v", 1.5))
        end)

        it("accepts v as the float 1.0 that a JSON decoder gives", function()
          local b = json.decode(json.encode(good))
          assert.are.equal("x y z", (store:respond(s.sid, b, { aead = "chacha20-poly1305" })))
        end)

        it("requires body.sid: 32 lowercase hex, equal to the argument", function()
          assert_bad(with("sid", nil))
          assert_bad(with("sid", s.sid:upper()))
          assert_bad(with("sid", s.sid:sub(1, 31)))
          assert_bad(with("sid", s.sid .. "0"))
          assert_bad(with("sid", ("g"):rep(32)))
          assert_bad(with("sid", ("ab"):rep(16)))          -- well formed, but not the argument
          assert_bad(good, ("ab"):rep(16))                 -- the argument differs from body.sid
          -- the argument itself must be a sid: it raises, as every store method does
          assert.has_error(function() store:respond(("AB"):rep(16), with("sid", ("ab"):rep(16))) end)
          assert.has_error(function() store:respond(s.sid .. "\0", good) end)
        end)

        it("requires pk_d to be 32 bytes of canonical unpadded base64url", function()
          assert_bad(with("pk_d", nil))
          assert_bad(with("pk_d", 7))
          assert_bad(with("pk_d", b64u(("\1"):rep(31))))
          assert_bad(with("pk_d", b64u(("\1"):rep(33))))
          assert_bad(with("pk_d", good.pk_d .. "="))                       -- padding
          assert_bad(with("pk_d", (good.pk_d:gsub("^.", "+"))))            -- standard alphabet
          assert_bad(with("pk_d", good.pk_d:sub(1, 42) .. "B"))            -- non-zero trailing bits
          assert_bad(with("pk_d", " " .. good.pk_d:sub(2)))
        end)

        it("requires nonce to be 12 bytes", function()
          assert_bad(with("nonce", nil))
          assert_bad(with("nonce", b64u(("\2"):rep(11))))
          assert_bad(with("nonce", b64u(("\2"):rep(13))))
          assert_bad(with("nonce", b64u(("\2"):rep(24))))
        end)

        it("requires ct to be 17..2048 bytes", function()
          assert_bad(with("ct", nil))
          assert_bad(with("ct", ""))
          assert_bad(with("ct", b64u(("\3"):rep(16))))
          assert_bad(with("ct", b64u(("\3"):rep(2049))))
          assert_bad(with("ct", good.ct .. "A"))                           -- 4n+1 characters
        end)

        it("lets the boundary lengths 17 and 2048 through to decryption", function()
          assert_outcome("decrypt_failed", store:respond(s.sid, with("ct", b64u(("\3"):rep(17))), { aead = "chacha20-poly1305" }))
          local s2 = assert(store:create {})
          assert(store:verify_code(s2.sid, s2.secondaryCode))
          local b = sealed(s2, ("w"):rep(2048 - 16), "chacha20-poly1305")
          assert.are.equal(2048, #unb64u(b.ct))
          assert.are.equal(("w"):rep(2032), (store:respond(s2.sid, b, { aead = "chacha20-poly1305" })))
        end)

        it("checks the shape before the session's status (bad_request even for unknown sids)", function()
          local other = ("cd"):rep(16)
          assert_outcome("bad_request", store:respond(other, with("v", 0)))
        end)
      end)

      describe("programming errors", function()
        local store, s
        before_each(function()
          store = plain_store()
          s = assert(store:create {})
        end)

        it("raises when sid is not a string", function()
          assert.has_error(function() store:respond(nil, {}) end, "pairstore.respond: sid must be a string, got nil")
          assert.has_error(function() store:respond(42, {}) end, "pairstore.respond: sid must be a string, got number")
        end)

        it("raises on bad options", function()
          assert.has_error(function() store:respond(s.sid, {}, "aes") end, "pairstore.respond: opts must be a table or nil")
          assert.has_error(function() store:respond(s.sid, {}, { aead = "rot13" }) end,
            "pairstore.respond: unknown aead rot13")
        end)
      end)

      describe("failures of the store", function()
        it("passes the update's own failure through (here: called from inside a mutator)", function()
          local store = plain_store()
          local s = assert(store:create {})
          assert(store:verify_code(s.sid, s.secondaryCode))
          local body = sealed(s, "inner", "chacha20-poly1305")
          local r
          assert(store:update(s.sid, function()
            r = helpers.compat.pack(store:respond(s.sid, body, { aead = "chacha20-poly1305" }))
          end))
          assert.are.equal(3, r.n)
          assert.is_nil(r[1])
          if backend == "file" then assert.matches("holds the lock", r[2]) end
          assert.are.equal("reentrant", r[3])
          assert.are.equal("device_connected", store:get(s.sid).status)
        end)

        it("passes a failing clock through as a callback failure and changes nothing", function()
          local broken = false
          local store, where = helpers.open_store(backend, { durable = false, now = function()
            if broken then error("clock broke") end
            return T0
          end })
          local s = assert(store:create {})
          assert(store:verify_code(s.sid, s.secondaryCode))
          local before = helpers.snapshot(where)
          broken = true
          local v, msg, code = store:respond(s.sid, sealed(s, "p", "chacha20-poly1305"), { aead = "chacha20-poly1305" })
          assert.is_nil(v)
          assert.matches("clock broke", msg)
          assert.are.equal("callback", code)
          assert.are.equal(before, helpers.snapshot(where))
        end)
      end)

      if not AES then
        it("returns unsupported without AES-256-GCM and leaves the session untouched", function()
          local store, _, where = plain_store()
          local s = assert(store:create {})
          assert(store:verify_code(s.sid, s.secondaryCode))
          local b = sealed(s, "x", "chacha20-poly1305")
          assert_outcome("unsupported", store:respond(s.sid, b))
          assert.are.equal("device_connected", stored(where, s.sid).status)
        end)
      end

      describe("between processes", function()
        it("lets exactly one of several concurrent responders open the payload", function()
          local dir = helpers.tmpdir() -- the children's outputs and start signal
          local store, where = helpers.open_store(backend)
          local s = assert(store:create {})
          assert(store:verify_code(s.sid, s.secondaryCode))
          local body = json.encode(sealed(s, "only once", "chacha20-poly1305"))
          local chunk = string.format([[
            local pairstore = require "pairstore"
            local json = require("cjson").new()
            local store = %s
            while io.open(%q) == nil do os.execute("sleep 0.01") end
            local pt, err = store:respond(%q, json.decode(%q), { aead = "chacha20-poly1305" })
            io.write(pt and ("OPENED " .. pt) or ("FAILED " .. tostring(err)))
          ]], helpers.open_expr(where), dir .. "/go", s.sid, body)
          local pids, outs, scripts = {}, {}, {}
          for i = 1, 4 do
            outs[i] = dir .. "/out" .. i
            pids[i], scripts[i] = helpers.spawn_lua(chunk, outs[i])
          end
          finally(function() for i = 1, 4 do os.remove(scripts[i]) end end)
          helpers.write(dir .. "/go", "")
          for i = 1, 4 do assert.is_true(helpers.wait_exit(pids[i], 30)) end
          local opened, consumed = 0, 0
          for i = 1, 4 do
            local o = helpers.read(outs[i])
            if o == "OPENED only once" then opened = opened + 1
            elseif o == "FAILED already_consumed" then consumed = consumed + 1
            else error("unexpected child output: " .. tostring(o)) end
          end
          assert.are.equal(1, opened)
          assert.are.equal(3, consumed)
          assert.are.equal("consumed", store:get(s.sid).status)
        end)
      end)
    end)
  end)
end
