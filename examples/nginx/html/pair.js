// pair.js: the phone's side of a pairstore pairing, with the browser's own WebCrypto only.
// The page is opened as <url>?sid=SID#pk=PK (pairstore.pairing_url; the key never reaches a
// server log), under whatever URL serves it (//pair, /pair/pair.html, ...): its API is where
// the server says, <meta name="pairstore-api" content="/pair"> (a path on the page's own
// origin; never derived from the address bar). On submit: GET <api>/start?sid=&c= (the code
// check), then X25519 with a fresh key pair, HKDF-SHA256 (salt = the sid's text, info
// "totalreclaw-pair-v2", 32 bytes), AES-256-GCM (random 12-byte nonce, additional data = the
// sid's text), and POST <api>/respond {v: 1, sid, pk_d, nonce, ct}, all binary fields
// base64url unpadded.
// window.PairCrypto exposes the crypto steps for the known-answer test (spec/browser).
"use strict";

(function () {
  const INFO = "totalreclaw-pair-v2";
  const MAX_PLAINTEXT = 2048 - 16; // the gateway takes ct of 17..2048 bytes (tag included)
  const utf8 = new TextEncoder();
  const subtle = globalThis.crypto && globalThis.crypto.subtle;

  // ---- base64url without padding -------------------------------------------------------

  const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

  function b64uEncode(bytes) {
    let out = "";
    let i = 0;
    for (; i + 2 < bytes.length; i += 3) {
      const n = (bytes[i] << 16) | (bytes[i + 1] << 8) | bytes[i + 2];
      out += ALPHABET[n >> 18] + ALPHABET[(n >> 12) & 63] + ALPHABET[(n >> 6) & 63] + ALPHABET[n & 63];
    }
    if (bytes.length - i === 1) {
      const n = bytes[i] << 16;
      out += ALPHABET[n >> 18] + ALPHABET[(n >> 12) & 63];
    } else if (bytes.length - i === 2) {
      const n = (bytes[i] << 16) | (bytes[i + 1] << 8);
      out += ALPHABET[n >> 18] + ALPHABET[(n >> 12) & 63] + ALPHABET[(n >> 6) & 63];
    }
    return out;
  }

  // Canonical unpadded base64url only (what the gateway itself accepts); null otherwise, or
  // when `want` is given and the decoded length differs.
  function b64uDecode(text, want) {
    if (typeof text !== "string" || text.length % 4 === 1 || !/^[A-Za-z0-9_-]*$/.test(text)) return null;
    const len = Math.floor(text.length * 3 / 4);
    if (want !== undefined && len !== want) return null;
    const out = new Uint8Array(len);
    let bits = 0, acc = 0, o = 0;
    for (const ch of text) {
      acc = (acc << 6) | ALPHABET.indexOf(ch);
      bits += 6;
      if (bits >= 8) {
        bits -= 8;
        out[o++] = (acc >> bits) & 255;
      }
      acc &= (1 << bits) - 1;
    }
    if (acc !== 0) return null; // bits past the last byte must be zero
    return out;
  }

  // ---- the pairing crypto --------------------------------------------------------------

  async function supportsX25519() {
    if (!subtle) return false;
    try {
      await subtle.generateKey({ name: "X25519" }, false, ["deriveBits"]);
      return true;
    } catch (e) {
      return false;
    }
  }

  function importGatewayKey(pkBytes) {
    return subtle.importKey("raw", pkBytes, { name: "X25519" }, false, []);
  }

  // X25519(privateKey, publicKey): 32 bytes. WebCrypto refuses a low-order peer key (an
  // all-zero result), as libsodium does on the gateway.
  async function sharedSecret(privateKey, publicKey) {
    return new Uint8Array(await subtle.deriveBits({ name: "X25519", public: publicKey }, privateKey, 256));
  }

  // HKDF-SHA256(ikm = shared, salt = sid as UTF-8 text, info = INFO): the 32-byte AEAD key.
  async function aeadKeyBytes(shared, sid) {
    const ikm = await subtle.importKey("raw", shared, "HKDF", false, ["deriveBits"]);
    const bits = await subtle.deriveBits(
      { name: "HKDF", hash: "SHA-256", salt: utf8.encode(sid), info: utf8.encode(INFO) }, ikm, 256);
    return new Uint8Array(bits);
  }

  // AES-256-GCM, additional data = sid as UTF-8 text: ciphertext || 16-byte tag.
  async function aesGcmSeal(keyBytes, nonce, sid, plaintextBytes) {
    const key = await subtle.importKey("raw", keyBytes, { name: "AES-GCM" }, false, ["encrypt"]);
    const ct = await subtle.encrypt(
      { name: "AES-GCM", iv: nonce, additionalData: utf8.encode(sid), tagLength: 128 }, key, plaintextBytes);
    return new Uint8Array(ct);
  }

  // seal({ pkGateway (base64url), sid, plaintext (string), device?, nonce? (12 bytes) })
  //   -> { pk_d, nonce, ct } (base64url). device = { privateKey, publicKeyBytes } is for the
  // known-answer test; without it a fresh, non-extractable X25519 key pair is made.
  async function seal(args) {
    const pkBytes = b64uDecode(args.pkGateway, 32);
    if (!pkBytes) throw new Error("the gateway key is not 32 bytes of base64url");
    let device = args.device;
    if (!device) {
      const pair = await subtle.generateKey({ name: "X25519" }, false, ["deriveBits"]);
      device = {
        privateKey: pair.privateKey,
        publicKeyBytes: new Uint8Array(await subtle.exportKey("raw", pair.publicKey)),
      };
    }
    const nonce = args.nonce || crypto.getRandomValues(new Uint8Array(12));
    const shared = await sharedSecret(device.privateKey, await importGatewayKey(pkBytes));
    const key = await aeadKeyBytes(shared, args.sid);
    shared.fill(0);
    const pt = utf8.encode(args.plaintext);
    let ct;
    try {
      ct = await aesGcmSeal(key, nonce, args.sid, pt);
    } finally {
      key.fill(0);
      pt.fill(0);
    }
    return { pk_d: b64uEncode(device.publicKeyBytes), nonce: b64uEncode(nonce), ct: b64uEncode(ct) };
  }

  globalThis.PairCrypto = Object.freeze({
    INFO, b64uEncode, b64uDecode, supportsX25519, importGatewayKey, sharedSecret, aeadKeyBytes,
    aesGcmSeal, seal,
  });

  // ---- the page ------------------------------------------------------------------------

  if (typeof document === "undefined") return;

  // Test words only (64 words: each index is 6 bits of one random byte, unbiased).
  const WORDS = (
    "acid amber anchor apple arrow atlas bamboo basil beacon berry bison blossom breeze cactus " +
    "canyon cedar cherry cobalt comet coral crystal dawn delta desert dolphin ember falcon fern " +
    "fjord forest galaxy garnet glacier granite harbor hazel heron island ivory jade jasmine " +
    "juniper kettle lagoon lantern lemon lotus maple meadow meteor nectar oasis ocean olive " +
    "orbit otter pebble pepper quartz raven river saffron sequoia willow"
  ).split(" ");
  if (WORDS.length !== 64 || new Set(WORDS).size !== 64) throw new Error("pair.js: the word list must hold 64 distinct words");

  const MESSAGES = {
    bad_code: "The code is the 6 digits shown by the gateway.",
    wrong_code: "Wrong code. Check the 6 digits shown by the gateway and try again.",
    attempts_exhausted: "Too many wrong codes: this pairing is now blocked. Ask the gateway for a new QR code.",
    already_consumed: "This pairing link was already used. Ask the gateway for a new QR code if you need to pair again.",
    expired: "This pairing link has expired. Ask the gateway for a new QR code.",
    rejected: "This pairing was cancelled. Ask the gateway for a new QR code.",
    not_found: "The gateway does not know this pairing link (it may have expired and been removed).",
    not_device_connected: "The code was not checked first; this pairing is now cancelled.",
    decrypt_failed: "The gateway could not open the phrase; this pairing is now cancelled.",
    bad_request: "The gateway refused the request as malformed.",
    busy: "The gateway is busy. Try again in a moment.",
    internal: "The gateway had an internal error.",
    unsupported: "The gateway cannot decrypt AES-256-GCM.",
    network: "The gateway could not be reached. Check the connection and try again.",
    empty_payload: "Enter the recovery phrase (or press Generate).",
    too_long: "The phrase is too long (at most " + MAX_PLAINTEXT + " bytes).",
    crypto_failed: "Encryption failed in this browser.",
  };

  const $ = (id) => document.getElementById(id);
  const form = $("pair-form"), codeIn = $("code"), payloadIn = $("payload");
  const submitBtn = $("submit"), generateBtn = $("generate"), result = $("result"), support = $("support");
  // The API's endpoints: fixed URLs on this page's origin, from the server's <meta>; null
  // when it gives none, or anything but an absolute path ("/x", not "//host" or "x:").
  const api = (() => {
    const meta = document.querySelector('meta[name="pairstore-api"]');
    const path = meta ? meta.getAttribute("content") || "" : "";
    if (!/^\/(?![\/\\])[^?#\s\\]*$/.test(path)) return null;
    const at = (name) => new URL(path.replace(/\/+$/, "") + "/" + name, location.origin);
    const start = at("start"), respond = at("respond");
    return start.origin === location.origin && respond.origin === location.origin ? { start, respond } : null;
  })();
  const sid = new URLSearchParams(location.search).get("sid") || "";
  const pk = new URLSearchParams(location.hash.slice(1)).get("pk") || "";
  let busy = false;

  function show(outcome, text, error) {
    result.dataset.outcome = outcome;
    if (error) result.dataset.error = error; else delete result.dataset.error;
    result.textContent = text;
  }

  function fail(error, status) {
    const text = MESSAGES[error] || ("The gateway answered " + (status ? "HTTP " + status : "an error"));
    show("error", text + " (" + error + ")", error);
  }

  function unusable(text) {
    support.dataset.ok = "false";
    support.textContent = text;
    support.hidden = false;
    submitBtn.disabled = true;
    generateBtn.disabled = true;
  }

  async function getJSON(response) {
    try {
      return await response.json();
    } catch (e) {
      return {};
    }
  }

  generateBtn.addEventListener("click", () => {
    const r = crypto.getRandomValues(new Uint8Array(12));
    payloadIn.value = Array.from(r, (b) => WORDS[b & 63]).join(" ");
    r.fill(0);
  });

  async function pair() {
    const code = codeIn.value.trim();
    if (!/^[0-9]{6}$/.test(code)) return fail("bad_code");
    const phrase = payloadIn.value.trim().split(/\s+/).join(" ");
    if (phrase === "") return fail("empty_payload");
    if (utf8.encode(phrase).length > MAX_PLAINTEXT) return fail("too_long");

    show("working", "Checking the code…");
    let res;
    try {
      res = await fetch(api.start.href + "?sid=" + encodeURIComponent(sid) + "&c=" + encodeURIComponent(code),
        { cache: "no-store", headers: { Accept: "application/json" } });
    } catch (e) {
      return fail("network");
    }
    let body = await getJSON(res);
    if (!res.ok) return fail(body.error || "http_" + res.status, res.status);

    show("working", "Encrypting…");
    let sealed;
    try {
      sealed = await seal({ pkGateway: pk, sid, plaintext: phrase });
    } catch (e) {
      return fail("crypto_failed");
    }

    show("working", "Sending…");
    try {
      res = await fetch(api.respond.href, {
        method: "POST", cache: "no-store",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ v: 1, sid, pk_d: sealed.pk_d, nonce: sealed.nonce, ct: sealed.ct }),
      });
    } catch (e) {
      return fail("network");
    }
    body = await getJSON(res);
    if (!res.ok) return fail(body.error || "http_" + res.status, res.status);
    payloadIn.value = ""; // the phrase is with the gateway now; do not leave it on screen
    show("success", "Paired. The gateway received the phrase" +
      (body.status ? " (" + body.status + ")." : "."));
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (busy) return;
    busy = true;
    submitBtn.disabled = true;
    try {
      await pair();
    } finally {
      busy = false;
      if (support.dataset.ok === "true") submitBtn.disabled = false;
    }
  });

  // What this page needs before anything is typed.
  (async () => {
    submitBtn.disabled = true;
    if (!api) {
      return unusable("This page is misconfigured: the server gives no API path (<meta name=\"pairstore-api\">).");
    }
    if (!/^[0-9a-f]{32}$/.test(sid) || !b64uDecode(pk, 32)) {
      return unusable("This pairing link is incomplete: it needs ?sid=… and #pk=… as in the QR code. Scan the QR code again.");
    }
    if (!window.isSecureContext || !subtle) {
      return unusable("This page needs a secure connection (https) to use the browser's cryptography.");
    }
    if (!(await supportsX25519())) {
      return unusable("This browser does not support X25519 in WebCrypto, which pairing needs. " +
        "Use a current version of Chrome, Edge, Firefox or Safari.");
    }
    support.dataset.ok = "true";
    submitBtn.disabled = false;
  })();
})();
