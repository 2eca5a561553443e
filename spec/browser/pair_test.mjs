// pair_test.mjs: the pairing page (examples/nginx/html) in Debian's headless Chromium, driven
// by playwright-core. Run by spec/browser/run.sh, which starts the nginx example and passes:
//   PAIR_TARGETS   JSON [{ name, base, operator, payload_dir }, ...]: one per backend; base is
//                  the page's origin (http://127.0.0.1:PORT), operator the URL that creates a
//                  session (POST, answers 201 {sid, code, url}), payload_dir where the
//                  gateway's on_payload writes the opened plaintext (DIR/<sid>), access_log
//                  (optional) nginx's access log
//   SHOT_DIR       where the screenshots of each step go (run.sh removes it afterwards)
//   KEEP_DIR       where the last screenshot of a failed check is kept
//   VECTORS        spec/fixtures/pairing-vectors.json
//   CHROMIUM       the browser (default /usr/bin/chromium)
// Prints one line per check and a closing "N passed, N failed"; exits 1 on any failure.
import { chromium } from "playwright-core";
import fs from "node:fs";
import path from "node:path";

const TARGETS = JSON.parse(process.env.PAIR_TARGETS || "[]");
const SHOT_DIR = process.env.SHOT_DIR || fs.mkdtempSync("/tmp/pairstore-shots.");
const KEEP_DIR = process.env.KEEP_DIR || "/tmp";
const VECTORS = JSON.parse(fs.readFileSync(process.env.VECTORS || "spec/fixtures/pairing-vectors.json", "utf8"));
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const CHECK_MS = 30000;  // one check, at most
const STEP_MS = 10000;   // one page action or wait, at most

let passed = 0, failed = 0;
let keptDir = null; // made on the first failure
const sent = []; // every request the pages made: its URL and body
const started = Date.now();

function assert(cond, msg) { if (!cond) throw new Error(msg); }
function eq(got, want, what) {
  if (got !== want) throw new Error(`${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
}
const b64uLen = (n) => Math.ceil(n * 4 / 3); // unpadded base64url length of n bytes

// ---- the checks' plumbing ---------------------------------------------------------------

// Each check gets a fresh page; shot(step) saves a screenshot and remembers it as the last.
async function check(browser, name, fn) {
  const t0 = Date.now();
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  page.on("request", (r) => sent.push(r.url() + " " + (r.postData() || "")));
  page.on("console", (m) => { if (/Content Security Policy/i.test(m.text())) errors.push(m.text()); });
  let last = null, n = 0;
  const slug = name.replace(/[^A-Za-z0-9]+/g, "-").replace(/^-|-$/g, "").toLowerCase();
  const shot = async (step) => {
    const file = path.join(SHOT_DIR, `${slug}-${String(++n).padStart(2, "0")}-${step}.png`);
    await page.screenshot({ path: file, fullPage: true });
    last = file;
  };
  let timer;
  try {
    await Promise.race([
      fn(page, shot),
      new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out after ${CHECK_MS} ms`)), CHECK_MS); }),
    ]);
    assert(errors.length === 0, "errors in the page: " + errors.join("; "));
    passed++;
    console.log(`ok    ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    failed++;
    console.log(`FAIL  ${name} (${Date.now() - t0} ms): ${e.message}`);
    try { await shot("failure"); } catch (_) { /* the page may be gone */ }
    if (last) {
      keptDir = keptDir || fs.mkdtempSync(path.join(KEEP_DIR, "pairstore-browser-failed."));
      const kept = path.join(keptDir, path.basename(last));
      fs.copyFileSync(last, kept);
      console.log(`      last screenshot: ${kept}`);
    }
  } finally {
    clearTimeout(timer);
    await context.close().catch(() => {});
  }
}

// A session from the operator endpoint: { sid, code, url }.
async function newSession(t) {
  const res = await fetch(t.operator, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}",
    signal: AbortSignal.timeout(STEP_MS) });
  const text = await res.text();
  eq(res.status, 201, `operator endpoint ${t.operator} status (${text.slice(0, 200)})`);
  const body = JSON.parse(text);
  assert(/^[0-9a-f]{32}$/.test(body.sid) && /^[0-9]{6}$/.test(body.code) && typeof body.url === "string",
    "operator endpoint answer: " + JSON.stringify(body));
  const u = new URL(body.url);
  eq(u.searchParams.get("sid"), body.sid, "sid in the pairing URL");
  assert(/^pk=[A-Za-z0-9_-]{43}$/.test(u.hash.slice(1)), "the pairing URL's fragment is #pk=<43 characters>: " + u.hash);
  (t.keys_seen = t.keys_seen || []).push(u.hash.slice(4));
  // The page is opened on the test server whatever host the URL was made for.
  body.open = t.base + u.pathname + u.search + u.hash;
  return body;
}

async function status(t, sid) {
  const res = await fetch(`${t.base}/pair/status?sid=${sid}`, { signal: AbortSignal.timeout(STEP_MS) });
  return (await res.json()).status;
}

function payloadFile(t, sid) {
  const f = path.join(t.payload_dir, sid);
  return fs.existsSync(f) ? fs.readFileSync(f) : null;
}

function otherCode(code) { return String((Number(code) + 1) % 1000000).padStart(6, "0"); }

// Opens the pairing URL and waits until the page has decided whether it can pair.
async function open(page, url) {
  await page.goto(url);
  await page.waitForSelector("#support[data-ok]", { state: "attached" });
  return page.getAttribute("#support", "data-ok");
}

// Submits and waits for a final outcome (success or error); returns { outcome, error, text }.
async function submit(page) {
  await page.click("#submit");
  await page.waitForSelector('#result[data-outcome="success"], #result[data-outcome="error"]', { state: "attached" });
  return page.$eval("#result", (r) => ({ outcome: r.dataset.outcome, error: r.dataset.error || null, text: r.textContent }));
}

// The body the page POSTs to /pair/respond, captured on its way out.
function captureRespond(page) {
  const bodies = [];
  page.on("request", (r) => { if (r.method() === "POST" && new URL(r.url()).pathname.endsWith("/respond")) bodies.push(r.postData()); });
  return bodies;
}

// ---- the known-answer check (in the page the server serves) ------------------------------

// Runs in the page: the vectors' fixed device keys imported as PKCS#8, X25519, HKDF and
// AES-256-GCM through pair.js's own functions, plus opening on the gateway's side.
async function katInPage(v) {
  const P = globalThis.PairCrypto;
  const s = crypto.subtle;
  const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  const PKCS8_X25519 = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20];
  const importSk = (b64) => s.importKey("pkcs8", new Uint8Array([...PKCS8_X25519, ...P.b64uDecode(b64, 32)]),
    { name: "X25519" }, true, ["deriveBits"]);
  const out = { keypairs: [], cases: [] };
  for (const kp of v.keypairs) out.keypairs.push((await s.exportKey("jwk", await importSk(kp.sk_b64u))).x);
  for (const c of v.cases.filter((x) => x.aead === "aes-256-gcm")) {
    const sk = await importSk(c.sk_device_b64u);
    const pkD = (await s.exportKey("jwk", sk)).x;
    const shared = await P.sharedSecret(sk, await P.importGatewayKey(P.b64uDecode(c.pk_gateway_b64u, 32)));
    const key = await P.aeadKeyBytes(shared, c.sid);
    const sealed = await P.seal({
      pkGateway: c.pk_gateway_b64u, sid: c.sid, plaintext: c.plaintext,
      device: { privateKey: sk, publicKeyBytes: P.b64uDecode(pkD, 32) }, nonce: P.b64uDecode(c.nonce_b64u, 12),
    });
    // the gateway's side, in WebCrypto too: opens the vector's ct, refuses the tampered one
    const gk = await P.aeadKeyBytes(await P.sharedSecret(await importSk(c.sk_gateway_b64u),
      await P.importGatewayKey(P.b64uDecode(c.pk_device_b64u, 32))), c.sid);
    const aes = await s.importKey("raw", gk, "AES-GCM", false, ["decrypt"]);
    const openCt = async (ct) => {
      try {
        return new TextDecoder().decode(await s.decrypt(
          { name: "AES-GCM", iv: P.b64uDecode(c.nonce_b64u, 12), additionalData: new TextEncoder().encode(c.sid) },
          aes, P.b64uDecode(ct)));
      } catch (e) { return "refused: " + e.name; }
    };
    const tampered = v.tampered.case === c.name ? await openCt(v.tampered.ct_b64u) : null;
    out.cases.push({ name: c.name, pk_d: pkD, shared: hex(shared), key: hex(key), sealed,
      opened: await openCt(c.ct_b64u), tampered });
  }
  // base64url as the gateway reads it: canonical and unpadded only
  out.b64u = [P.b64uEncode(new Uint8Array([1, 2, 3, 4])), P.b64uDecode("AQIDBA") !== null, P.b64uDecode("AQIDBB"),
    P.b64uDecode("AQIDBA=="), P.b64uDecode("A"), P.b64uDecode("AQID+A")];
  return out;
}

async function knownAnswers(page, t) {
  // The served page, with a well-formed link (the session need not exist).
  await open(page, `${t.base}/pair?sid=${VECTORS.cases[0].sid}#pk=${VECTORS.cases[0].pk_gateway_b64u}`);
  const got = await page.evaluate(katInPage, VECTORS);
  VECTORS.keypairs.forEach((kp, i) => eq(got.keypairs[i], kp.pk_b64u, `public key of keypair ${i}`));
  const cases = VECTORS.cases.filter((x) => x.aead === "aes-256-gcm");
  assert(cases.length >= 2 && got.cases.length === cases.length, "the v2 vectors were all run");
  cases.forEach((c, i) => {
    const g = got.cases[i];
    eq(g.pk_d, c.pk_device_b64u, `${c.name}: device public key`);
    eq(g.shared, c.shared_secret_hex, `${c.name}: X25519 shared secret`);
    eq(g.key, c.aead_key_hex, `${c.name}: HKDF-SHA256 key`);
    eq(g.sealed.pk_d, c.pk_device_b64u, `${c.name}: sealed pk_d`);
    eq(g.sealed.nonce, c.nonce_b64u, `${c.name}: sealed nonce`);
    eq(g.sealed.ct, c.ct_b64u, `${c.name}: sealed ct`);
    eq(g.opened, c.plaintext, `${c.name}: the vector's ct opened with the gateway key`);
    if (VECTORS.tampered.case === c.name) eq(g.tampered, "refused: OperationError", `${c.name}: tampered ct`);
  });
  eq(JSON.stringify(got.b64u), JSON.stringify(["AQIDBA", true, null, null, null, null]), "base64url strictness");
}

// ---- the flow against the server --------------------------------------------------------

const PHRASE = "legal winner thank year wave sausage worth useful legal winner thank yellow";

async function pairs(page, shot, t) {
  const s = await newSession(t);
  const bodies = captureRespond(page);
  eq(await open(page, s.open), "true", "the page can pair (#support data-ok)");
  await shot("opened");
  await page.fill("#code", s.code);
  await page.fill("#payload", "  " + PHRASE.replace(/ /g, "  \n ") + "\n"); // the page normalises spaces
  await shot("filled");
  const r = await submit(page);
  await shot("submitted");
  eq(r.outcome, "success", "outcome (" + r.text + ")");
  const file = payloadFile(t, s.sid);
  assert(file !== null, `the gateway wrote no payload file ${t.payload_dir}/${s.sid}`);
  eq(file.toString("utf8"), PHRASE, "the plaintext the gateway opened");
  eq(await status(t, s.sid), "completed", "status after pairing");
  eq(await page.inputValue("#payload"), "", "the phrase is cleared from the page after success");

  // What went over the wire: the protocol's body, nothing else.
  eq(bodies.length, 1, "POSTs to /pair/respond");
  const b = JSON.parse(bodies[0]);
  eq(JSON.stringify(Object.keys(b)), JSON.stringify(["v", "sid", "pk_d", "nonce", "ct"]), "body keys");
  eq(b.v, 1, "body v");
  eq(b.sid, s.sid, "body sid");
  assert(/^[A-Za-z0-9_-]{43}$/.test(b.pk_d), "pk_d is 32 bytes of base64url");
  assert(/^[A-Za-z0-9_-]{16}$/.test(b.nonce), "nonce is 12 bytes of base64url");
  eq(b.ct.length, b64uLen(Buffer.byteLength(PHRASE) + 16), "ct length (plaintext + 16-byte tag)");
  return { s, body: bodies[0] };
}

async function pairsThenAlreadyUsed(page, shot, t) {
  const { s, body } = await pairs(page, shot, t);
  // The same person submits again: the server says the session is used up.
  await page.fill("#payload", PHRASE);
  const r = await submit(page);
  await shot("second-submit");
  eq(r.outcome, "error", "second submit outcome");
  eq(r.error, "already_consumed", "second submit error");
  assert(/already used/i.test(r.text), "the page says 'already used': " + r.text);
  // The exact body replayed: 409 already_consumed, and nothing new reaches the gateway.
  const replay = await page.evaluate(async (b) => {
    const res = await fetch("/pair/respond", { method: "POST", headers: { "Content-Type": "application/json" }, body: b });
    return { status: res.status, body: await res.json() };
  }, body);
  eq(replay.status, 409, "replayed body status");
  eq(replay.body.error, "already_consumed", "replayed body error");
  eq(payloadFile(t, s.sid).toString("utf8"), PHRASE, "payload file after the replay");
}

async function wrongCode(page, shot, t) {
  const s = await newSession(t);
  await open(page, s.open);
  await page.fill("#code", otherCode(s.code));
  await page.fill("#payload", PHRASE);
  await shot("filled");
  const r = await submit(page);
  await shot("wrong-code");
  eq(r.outcome, "error", "outcome");
  eq(r.error, "wrong_code", "the server's error");
  assert(r.text.includes("wrong_code") && /wrong code/i.test(r.text), "the page shows the error: " + r.text);
  eq(payloadFile(t, s.sid), null, "no payload after a wrong code");
  eq(await status(t, s.sid), "awaiting_scan", "status after one wrong code");
  // The right code afterwards still pairs: the page stopped before sending anything.
  await page.fill("#code", s.code);
  const ok = await submit(page);
  await shot("right-code");
  eq(ok.outcome, "success", "outcome with the right code (" + ok.text + ")");
  eq(payloadFile(t, s.sid).toString("utf8"), PHRASE, "the plaintext the gateway opened");
}

async function attemptsExhausted(page, shot, t) {
  const s = await newSession(t);
  await open(page, s.open);
  await page.fill("#payload", PHRASE);
  const bad = otherCode(s.code);
  let r;
  for (let i = 1; i <= 5; i++) {
    await page.fill("#code", bad);
    r = await submit(page);
    if (i < 5) eq(r.error, "wrong_code", `wrong code #${i}`);
  }
  await shot("fifth-wrong-code");
  eq(r.error, "attempts_exhausted", "the fifth wrong code");
  assert(r.text.includes("attempts_exhausted"), "the page shows the server's error: " + r.text);
  await page.fill("#code", s.code);
  r = await submit(page);
  await shot("right-code-too-late");
  eq(r.error, "rejected", "the right code after the lockout");
  eq(payloadFile(t, s.sid), null, "no payload for a rejected session");
  eq(await status(t, s.sid), "rejected", "status");
}

async function generated(page, shot, t) {
  const s = await newSession(t);
  await open(page, s.open);
  await page.fill("#code", s.code);
  const seen = new Set();
  let words = null;
  for (let i = 0; i < 20; i++) { // 240 words: an empty or missing list entry would show
    await page.click("#generate");
    const w = await page.inputValue("#payload");
    assert(/^[a-z]+( [a-z]+){11}$/.test(w), "Generate gives 12 words: " + JSON.stringify(w));
    assert(w !== words, "Generate gives new words each time");
    words = w;
    for (const x of w.split(" ")) seen.add(x);
  }
  assert(seen.size > 40 && seen.size <= 64, `words drawn from the 64 of the list (${seen.size} distinct seen)`);
  const phrase = await page.inputValue("#payload");
  await shot("generated");
  const r = await submit(page);
  await shot("submitted");
  eq(r.outcome, "success", "outcome (" + r.text + ")");
  eq(payloadFile(t, s.sid).toString("utf8"), phrase, "the plaintext the gateway opened");
}

async function nonAscii(page, shot, t) {
  const s = await newSession(t);
  await open(page, s.open);
  const phrase = "あいこくしん あいさつ あいだ — café ☕ 𝄞";
  await page.fill("#code", s.code);
  await page.fill("#payload", phrase);
  await shot("filled");
  const r = await submit(page);
  await shot("submitted");
  eq(r.outcome, "success", "outcome (" + r.text + ")");
  assert(payloadFile(t, s.sid).equals(Buffer.from(phrase, "utf8")), "the gateway opened the phrase's UTF-8 bytes");
}

async function incompleteLink(page, shot, t) {
  const s = await newSession(t);
  const u = new URL(s.open);
  eq(await open(page, u.origin + u.pathname + u.search), "false", "a link without #pk= cannot pair");
  await shot("no-fragment");
  assert(/incomplete/i.test(await page.textContent("#support")), "the page says the link is incomplete");
  assert(await page.isDisabled("#submit"), "submit is disabled");
  eq(await status(t, s.sid), "awaiting_scan", "nothing was sent");
}

// The page opened under another URL that serves it (nginx merges slashes; the html file by
// its own name): it pairs, and every request it makes goes to its own origin, to the fixed
// endpoints the server's <meta name="pairstore-api"> names, whatever the address bar says.
const PAGE_FILES = new Set(["/pair/pair.css", "/pair/pair.js", "/favicon.ico"]);
const API = new Set(["/pair/start", "/pair/respond"]);

async function servedUnder(page, shot, t, pagePath) {
  const s = await newSession(t);
  const u = new URL(s.open);
  const url = t.base + pagePath + u.search + u.hash;
  const requests = [];
  page.on("request", (r) => requests.push(r.url()));
  eq(await open(page, url), "true", `the page can pair, opened as ${pagePath}`);
  await page.fill("#code", s.code);
  await page.fill("#payload", PHRASE);
  const r = await submit(page);
  await shot("submitted");
  eq(r.outcome, "success", `outcome under ${pagePath} (${r.text})`);
  eq(payloadFile(t, s.sid).toString("utf8"), PHRASE, "the plaintext the gateway opened");
  const [doc, ...rest] = requests;
  eq(doc, url.replace(/#.*$/, ""), "the first request is the page itself");
  for (const q of rest) {
    const qu = new URL(q);
    eq(qu.origin, t.base, `the origin of a request the page made (${q})`);
    assert(PAGE_FILES.has(qu.pathname) || API.has(qu.pathname), `a request to an unexpected path: ${q}`);
  }
  const apiCalls = rest.filter((q) => API.has(new URL(q).pathname)).map((q) => new URL(q).pathname);
  eq(JSON.stringify(apiCalls), JSON.stringify(["/pair/start", "/pair/respond"]), "the API calls the page made");
}

// Served without its API path (a misconfigured server), the page says so and calls nothing.
async function noApiPath(page, shot, t) {
  const s = await newSession(t);
  await page.route((url) => url.pathname === "/pair", async (route) => {
    const res = await route.fetch();
    const html = (await res.text()).replace(/<meta name="pairstore-api"[^>]*>/, "");
    await route.fulfill({ response: res, body: html });
  });
  const requests = [];
  page.on("request", (r) => requests.push(new URL(r.url()).pathname));
  eq(await open(page, s.open), "false", "the page cannot pair");
  await shot("no-api-path");
  assert(/misconfigured/.test(await page.textContent("#support")), "the page says it is misconfigured");
  assert(await page.isDisabled("#submit"), "submit is disabled");
  assert(!requests.some((p) => API.has(p)), "no API call: " + requests.join(" "));
}

// A browser whose WebCrypto lacks X25519 (simulated: generateKey refuses it) is told so.
async function noX25519(page, shot, t) {
  await page.addInitScript(() => {
    const real = SubtleCrypto.prototype.generateKey;
    SubtleCrypto.prototype.generateKey = function (alg, ...rest) {
      if ((alg && alg.name || alg) === "X25519") return Promise.reject(new DOMException("Unrecognized name.", "NotSupportedError"));
      return real.call(this, alg, ...rest);
    };
  });
  const s = await newSession(t);
  eq(await open(page, s.open), "false", "the page cannot pair");
  await shot("no-x25519");
  assert(/does not support X25519/.test(await page.textContent("#support")), "the page says X25519 is missing");
  assert(await page.isDisabled("#submit"), "submit is disabled");
}

// The gateway's key travels only in the fragment: no request any page made carried it, and
// nginx's access log (which names the path only) does not hold it either.
async function keyNeverSent(page, shot, t) {
  const keys = t.keys_seen || [];
  assert(keys.length >= 5, `sessions made (${keys.length})`);
  const pageLoads = sent.filter((r) => r.startsWith(`${t.base}/pair?sid=`));
  assert(pageLoads.length >= 5, `the pages loaded the pairing URL (${pageLoads.length} requests)`);
  for (const k of keys) {
    const hit = sent.find((r) => r.includes(k));
    assert(!hit, "a request carried the gateway's key: " + hit);
  }
  const log = fs.readFileSync(t.access_log, "utf8");
  assert(log.split("\n").filter((l) => l.includes('"GET /pair"')).length >= 5, "the access log shows the page loads");
  for (const k of keys) assert(!log.includes(k), "a gateway public key is in the access log: " + k);
}

// ---- main -------------------------------------------------------------------------------

async function main() {
  assert(TARGETS.length > 0, "PAIR_TARGETS names no server");
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: process.getuid && process.getuid() === 0 ? ["--no-sandbox"] : [],
    timeout: 30000,
  });
  console.log(`browser: Chromium ${browser.version()} (${CHROMIUM}), launched in ${Date.now() - started} ms`);
  try {
    let x25519 = false;
    await check(browser, "Chromium has X25519 in WebCrypto", async (page, shot) => {
      await page.goto(`${TARGETS[0].base}/pair?sid=${VECTORS.cases[0].sid}#pk=${VECTORS.cases[0].pk_gateway_b64u}`);
      await page.waitForSelector("#support[data-ok]", { state: "attached" });
      await shot("page");
      x25519 = await page.evaluate(() => globalThis.PairCrypto.supportsX25519());
      assert(x25519, `this Chromium (${browser.version()}) lacks X25519 in WebCrypto: the page cannot pair, and says so`);
      eq(await page.getAttribute("#support", "data-ok"), "true", "the page can pair");
      eq(await page.evaluate(() => getComputedStyle(document.body).maxWidth), "544px", "pair.css is applied (body max-width 34rem)");
    });
    if (!x25519) {
      console.log("      (every other check needs X25519: not run, counted as failed)");
      failed += 1 + TARGETS.reduce((n, t) => n + (t.access_log ? 12 : 11), 0);
      return;
    }
    await check(browser, "known answers: pair.js seals the v2 vectors byte for byte", (page) => knownAnswers(page, TARGETS[0]));
    for (const t of TARGETS) {
      await check(browser, `${t.name}: pairs, then a second submit shows "already used"`, (p, s) => pairsThenAlreadyUsed(p, s, t));
      await check(browser, `${t.name}: a wrong code shows the server's error`, (p, s) => wrongCode(p, s, t));
      await check(browser, `${t.name}: five wrong codes show attempts_exhausted`, (p, s) => attemptsExhausted(p, s, t));
      await check(browser, `${t.name}: a generated phrase is opened as generated`, (p, s) => generated(p, s, t));
      await check(browser, `${t.name}: a non-ASCII phrase arrives as its UTF-8 bytes`, (p, s) => nonAscii(p, s, t));
      await check(browser, `${t.name}: a link without the key says so`, (p, s) => incompleteLink(p, s, t));
      await check(browser, `${t.name}: a browser without X25519 is told so`, (p, s) => noX25519(p, s, t));
      for (const pagePath of ["//pair", "/pair/pair.html", "//pair/pair.html"]) {
        await check(browser, `${t.name}: opened as ${pagePath}, pairs calling only its own fixed endpoints`,
          (p, s) => servedUnder(p, s, t, pagePath));
      }
      await check(browser, `${t.name}: served without its API path, says so and calls nothing`, (p, s) => noApiPath(p, s, t));
      if (t.access_log) await check(browser, `${t.name}: no request carried the gateway's key`, (p, s) => keyNeverSent(p, s, t));
    }
  } finally {
    await browser.close();
  }
}

try {
  await main();
} catch (e) {
  failed++;
  console.log("FAIL  " + e.message);
}
console.log(`browser: ${((Date.now() - started) / 1000).toFixed(1)} s`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);
