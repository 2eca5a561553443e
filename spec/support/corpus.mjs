// corpus.mjs — a generated corpus of sessions files as the reference writes them
// (JSON.stringify), each with one operation and the file the reference would write after it.
//
//   node corpus.mjs DIR SEED COUNT
//
// For case i it writes DIR/i.before.json, DIR/i.after.json and DIR/i.op.json: the operation
// ({op, sid, now, ...}) that the Lua spec runs with pairstore on a copy of before; pairstore's
// result must equal after byte for byte. The values come from the same named table as the
// spec's (VALUES), so both sides mean the same number or string.
import { writeFileSync } from "node:fs";

const [dir, seedArg, countArg] = process.argv.slice(2);
let seed = Number(seedArg) >>> 0 || 1;
const count = Number(countArg) || 20;
function rnd(n) { // xorshift32: the same corpus for the same seed
  seed ^= seed << 13; seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5; seed >>>= 0;
  return seed % n;
}
const pick = (a) => a[rnd(a.length)];

// Values a mutator may set (the spec has the same names with Lua's values). Not an integral
// float beyond 2^53: pairstore stores that as the Lua integer it equals and writes its exact
// digits (2^60 as 1152921504606846976, which reads back as that integer), where
// JSON.stringify writes 1152921504606847000 (the same double, another integer).
const VALUES = {
  pointthree: 0.1 + 0.2, big53: 2 ** 53, e21: 1e21, tiny: 1.5e-7, neg: -12.5, int: 42,
  third: 1 / 3, huge: 1.7976931348623157e308, small: 5e-324, ms: 1764300123456.25,
  str: "plain", esc: "q\"b\\s\n\t\u0007é😀\u2028", yes: true, no: false, nul: null,
  obj: { a: 1, b: [1, "x", { c: null }] }, arr: [0.5, "y", [2]],
};

// Exotic values already in the file (as JSON.stringify writes them).
const cut = "😀".slice(0, 1); // a string cut inside a surrogate pair
const EXOTIC = [
  [], {}, [[]], { "": {} }, 0.1 + 0.2, 2 ** 60, -(2 ** 60), 2 ** 53 + 2, 1e21, 1.5e-7, -0, 0,
  123456789.123, 5e-324, "with " + cut, cut + "x" + cut, "\ud800\udc00", "\udc00", "é😀\u2028",
  "\u0000\u001f\"\\/", "", true, false, null,
  { z: 1, a: { y: 2, b: [1, { q: null, p: [] }] } }, [1, [2, [3, [4, {}]]]],
  { "key with \"quotes\"": 1, "\u00e9": 2, "😀": 3 },
];

const T0 = 1764300000000;
function hex(n) { let s = ""; for (let i = 0; i < n; i++) s += "0123456789abcdef"[rnd(16)]; return s; }
function b64() { let s = ""; const a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"; for (let i = 0; i < 43; i++) s += a[rnd(64)]; return s; }
function code() { let s = ""; for (let i = 0; i < 6; i++) s += rnd(10); return s; }
function unknowns(o, n) {
  for (let i = 0; i < n; i++) o[pick(["zeta", "alpha", "meta", "x" + rnd(100), "ünï", "k" + i])] = pick(EXOTIC);
}

function session(status) {
  const created = T0 + rnd(50000);
  const ctx = {};
  // keys inside operatorContext in a person's order, not the reference's
  for (const k of pick([["channel", "senderId", "accountId"], ["accountId", "channel"], ["senderId", "channel", "team"]]))
    ctx[k] = k === "team" ? pick(EXOTIC) : pick(["telegram", "cli", "with " + cut, "é😀", "a\"b"]);
  const s = {
    sid: hex(32), skGatewayB64: b64(), pkGatewayB64: b64(), createdAtMs: created,
    expiresAtMs: created + pick([900000, 600000.5, 3600000]), secondaryCode: code(),
    secondaryCodeAttempts: rnd(3), operatorContext: ctx, mode: pick(["generate", "import"]),
    status, lastStatusChangeAtMs: created,
  };
  unknowns(s, rnd(4));
  if (rnd(3) === 0) { // a person reordered it: unknown first, known keys shuffled
    const keys = Object.keys(s).sort(() => rnd(3) - 1);
    const o = {};
    for (const k of keys) o[k] = s[k];
    return o;
  }
  return s;
}

for (let i = 1; i <= count; i++) {
  const sessions = [];
  const n = 2 + rnd(3);
  for (let j = 0; j < n; j++) sessions.push(session(pick(["awaiting_scan", "awaiting_scan", "device_connected"])));
  const target = sessions[rnd(n)];
  const now = T0 + 60000;
  const before = JSON.stringify({ version: 1, sessions });
  let op;
  switch (rnd(6)) {
    case 0:
      op = { op: "transition", sid: target.sid, status: "rejected", now };
      target.status = "rejected"; target.lastStatusChangeAtMs = now;
      break;
    case 1:
      op = { op: "register_failed_code", sid: target.sid, now };
      target.secondaryCodeAttempts += 1;
      break;
    case 2:
      op = { op: "consume", sid: target.sid, now };
      target.status = "consumed"; target.lastStatusChangeAtMs = now;
      break;
    case 3: { // set a known key's nested value, or an unknown key (existing or new)
      const name = pick(Object.keys(VALUES));
      const key = pick(["zeta", "alpha", "brandnew", "operatorContext.senderId", "operatorContext.team"]);
      op = { op: "set", sid: target.sid, key, value: name, now };
      const v = structuredClone(VALUES[name]);
      if (key.startsWith("operatorContext.")) target.operatorContext[key.slice(16)] = v;
      else target[key] = v;
      break;
    }
    case 4: { // delete an unknown key
      const known = new Set(["sid", "skGatewayB64", "pkGatewayB64", "createdAtMs", "expiresAtMs", "secondaryCode",
        "secondaryCodeAttempts", "operatorContext", "mode", "status", "lastStatusChangeAtMs"]);
      const key = pick(Object.keys(target).filter((k) => !known.has(k)).concat(["absent"]));
      op = { op: "delete", sid: target.sid, key, now };
      delete target[key];
      break;
    }
    default: // expire it: the moment it expired, not now (the reference's pruning)
      op = { op: "expire", sid: target.sid, now: Math.floor(target.expiresAtMs) + 1 };
      for (const s of sessions) // pruning at that time expires every session past its time
        if (op.now > s.expiresAtMs) { s.status = "expired"; s.lastStatusChangeAtMs = s.expiresAtMs; }
  }
  writeFileSync(`${dir}/${i}.before.json`, before);
  writeFileSync(`${dir}/${i}.after.json`, JSON.stringify({ version: 1, sessions }));
  writeFileSync(`${dir}/${i}.op.json`, JSON.stringify(op));
}
