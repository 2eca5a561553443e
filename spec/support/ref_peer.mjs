#!/usr/bin/env node
// spec/support/ref_peer.mjs: a stand-in for a reference (TypeScript) process in the mixed-process
// tests. It takes the lock, loads, prunes and writes the sessions file the way the reference does
// (as recorded in the reference-behaviour notes: File, Lock, Pruning, Operations). Node.js only,
// no packages; Node 18 or later.
//
//   node ref_peer.mjs create PATH [--now MS]      append a new awaiting_scan session (channel
//                                                 "reference-peer"), print it as one JSON line
//   node ref_peer.mjs incr PATH SID COUNT [--hold-ms N] [--now MS]
//                                                 COUNT times: lock, load, prune, add 1 to the
//                                                 session's secondaryCodeAttempts, write, unlock
//                                                 (--hold-ms: sleep N ms inside each hold);
//                                                 prints "acked COUNT" at the end
//   node ref_peer.mjs hold PATH MS                take the lock, keep it MS ms, release it
//   node ref_peer.mjs dump PATH [--now MS]        print the sessions after load and prune as one
//                                                 JSON array (a listAll: the file is written back
//                                                 only when pruning deleted a session)
//   node ref_peer.mjs write-js PATH < EXPR        evaluate the JavaScript expression (or JSON) on
//                                                 stdin and write JSON.stringify(value) as the
//                                                 whole file, under the lock, temp file + rename;
//                                                 no load, no prune, no validation: for files with
//                                                 exotic values ("\ud83d", 2**60, 0.1+0.2, ...)
//
// --now fixes the clock of the session operations (timestamps, pruning); the lock's staleness
// and deadline and the temp file's name use the real clock, as the reference's do.
// Failures print "ref_peer: <message>" on stderr and exit 1 (usage errors: 2).
//
// Lock: PATH.lock created O_CREAT|O_EXCL with "<pid>\n". While it exists: if its mtime is more
// than 30 000 ms old it is deleted and the create retried at once, otherwise retry every 50 ms;
// after 10 000 ms fail with "pair-session-store: could not acquire lock at PATH.lock within
// 10000ms". Release deletes it. Writes: JSON.stringify (compact, no newline) to
// PATH.tmp-<pid>-<ms>, mode 0600, then rename over PATH; a missing directory is made 0700.
// Where the reference is known to misbehave this peer fails instead: an open error other than
// "exists" on the sentinel and a failed write are errors here (the reference spins on the first
// and ignores the second). An unreadable file still loads as empty, as in the reference.
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';

const STALE_MS = 30000, WAIT_MS = 10000, RETRY_MS = 50;
const RETENTION_MS = 3600000, TTL_MS = 900000;
const TERMINAL = ['completed', 'consumed', 'expired', 'rejected'];

class Usage extends Error {}

function sleep(ms) {
  if (ms > 0) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

// ---- lock ------------------------------------------------------------------------------------
function lock(file) {
  const sentinel = file + '.lock';
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  const started = Date.now();
  for (;;) {
    try {
      fs.writeFileSync(sentinel, process.pid + '\n', { flag: 'wx' });
      return sentinel;
    } catch (e) {
      if (e.code !== 'EEXIST') throw e;
    }
    let mtime;
    try {
      mtime = fs.statSync(sentinel).mtimeMs;
    } catch (e) {
      if (e.code === 'ENOENT') continue; // released meanwhile: create again
      throw e;
    }
    if (Date.now() - mtime > STALE_MS) {
      try { fs.unlinkSync(sentinel); } catch { /* someone else broke it first */ }
      continue;
    }
    if (Date.now() - started >= WAIT_MS) {
      throw new Error(`pair-session-store: could not acquire lock at ${sentinel} within ${WAIT_MS}ms`);
    }
    sleep(RETRY_MS);
  }
}

function unlock(sentinel) {
  try { fs.unlinkSync(sentinel); } catch { /* already gone */ }
}

function locked(file, fn) {
  const sentinel = lock(file);
  try { return fn(); } finally { unlock(sentinel); }
}

// ---- file ------------------------------------------------------------------------------------
const isNum = (v) => typeof v === 'number';
const isStr = (v) => typeof v === 'string';

function valid(s) {
  return typeof s === 'object' && s !== null &&
    isStr(s.sid) && s.sid !== '' && isStr(s.skGatewayB64) && isStr(s.pkGatewayB64) &&
    isNum(s.createdAtMs) && isNum(s.expiresAtMs) && isNum(s.lastStatusChangeAtMs) &&
    isNum(s.secondaryCodeAttempts) && isStr(s.secondaryCode) && /^[0-9]{6}$/.test(s.secondaryCode) &&
    typeof s.operatorContext === 'object' && s.operatorContext !== null &&
    (s.mode === 'generate' || s.mode === 'import') && isStr(s.status);
}

// Missing, unreadable, unparsable or of the wrong shape: an empty list, as the reference does.
function load(file) {
  let doc;
  try {
    doc = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch {
    return [];
  }
  if (typeof doc !== 'object' || doc === null || doc.version !== 1 || !Array.isArray(doc.sessions)) return [];
  return doc.sessions.filter(valid);
}

// Returns the sessions kept and whether any was deleted.
function prune(sessions, now) {
  const kept = [];
  for (const s of sessions) {
    if (!TERMINAL.includes(s.status) && now > s.expiresAtMs) {
      s.status = 'expired';
      s.lastStatusChangeAtMs = s.expiresAtMs;
    }
    if (TERMINAL.includes(s.status) && now - s.lastStatusChangeAtMs > RETENTION_MS) continue;
    kept.push(s);
  }
  return { sessions: kept, deleted: kept.length < sessions.length };
}

function writeText(file, text) {
  const tmp = `${file}.tmp-${process.pid}-${Date.now()}`;
  fs.writeFileSync(tmp, text, { mode: 0o600 });
  fs.renameSync(tmp, file);
}

const save = (file, sessions) => writeText(file, JSON.stringify({ version: 1, sessions }));

// ---- commands --------------------------------------------------------------------------------
function newSession(now) {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('x25519');
  return {
    sid: crypto.randomBytes(16).toString('hex'),
    skGatewayB64: privateKey.export({ format: 'jwk' }).d,
    pkGatewayB64: publicKey.export({ format: 'jwk' }).x,
    createdAtMs: now,
    expiresAtMs: now + TTL_MS,
    secondaryCode: String(crypto.randomInt(1000000)).padStart(6, '0'),
    secondaryCodeAttempts: 0,
    operatorContext: { channel: 'reference-peer' },
    mode: 'generate',
    status: 'awaiting_scan',
    lastStatusChangeAtMs: now,
  };
}

function main(argv) {
  const [cmd, file, ...rest] = argv;
  const flags = {};
  const pos = [];
  for (let i = 0; i < rest.length; i++) {
    if (rest[i] === '--now' || rest[i] === '--hold-ms') {
      const v = Number(rest[++i]);
      if (!Number.isFinite(v)) throw new Usage(`${rest[i - 1]} needs a number`);
      flags[rest[i - 1]] = v;
    } else {
      pos.push(rest[i]);
    }
  }
  if (!file) throw new Usage('no PATH');
  const now = () => flags['--now'] ?? Date.now();

  if (cmd === 'create') {
    const s = newSession(now());
    locked(file, () => {
      const { sessions } = prune(load(file), now());
      sessions.push(s);
      save(file, sessions);
    });
    console.log(JSON.stringify(s));
  } else if (cmd === 'incr') {
    const [sid, count] = pos;
    if (!sid || !/^[0-9]+$/.test(count ?? '')) throw new Usage('incr PATH SID COUNT');
    const hold = flags['--hold-ms'] ?? 0;
    for (let i = 0; i < Number(count); i++) {
      locked(file, () => {
        const { sessions } = prune(load(file), now());
        const s = sessions.find((x) => x.sid === sid);
        if (!s) throw new Error(`no session ${sid}`);
        s.secondaryCodeAttempts += 1;
        sleep(hold);
        save(file, sessions);
      });
    }
    console.log(`acked ${Number(count)}`);
  } else if (cmd === 'hold') {
    const ms = Number(pos[0]);
    if (!Number.isFinite(ms)) throw new Usage('hold PATH MS');
    locked(file, () => sleep(ms));
  } else if (cmd === 'dump') {
    const out = locked(file, () => {
      const { sessions, deleted } = prune(load(file), now());
      if (deleted) save(file, sessions);
      return JSON.stringify(sessions);
    });
    console.log(out);
  } else if (cmd === 'write-js') {
    const src = fs.readFileSync(0, 'utf8');
    const text = JSON.stringify(new Function(`return (\n${src}\n);`)());
    if (typeof text !== 'string') throw new Error('the expression has no JSON form');
    locked(file, () => writeText(file, text));
  } else {
    throw new Usage(`unknown command ${cmd}`);
  }
}

try {
  main(process.argv.slice(2));
} catch (e) {
  if (e instanceof Usage) {
    console.error(`ref_peer: ${e.message}\nusage: ref_peer.mjs create|incr|hold|dump|write-js PATH ...`);
    process.exit(2);
  }
  console.error(`ref_peer: ${e.message}`);
  process.exit(1);
}
