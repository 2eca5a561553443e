-- pairstore schema, version 1: the sessions of every store in this database.
-- pairstore creates it on first use when its role may; otherwise run this file once as
-- the schema's owner and grant the application role SELECT, INSERT, UPDATE, DELETE on
-- the three tables.
CREATE TABLE pairstore_schema (
  version integer NOT NULL
);
INSERT INTO pairstore_schema (version) VALUES (1);

-- One row per store: a create locks it (SELECT ... FOR UPDATE), so that creates of one
-- store are serialised and never pass max_sessions.
CREATE TABLE pairstore_stores (
  store text PRIMARY KEY
);

-- One row per session. body is the session's JSON text exactly as pairstore wrote it (or
-- as the file it was migrated from held it): text, not jsonb, so that key order, number
-- text and unknown members survive byte for byte. The other columns are derived from it
-- when it is written: status and live (not terminal), createdAtMs, lastStatusChangeAtMs,
-- expiresAtMs, and prune_at, the time after which pruning changes the row (its expiry
-- while live, the end of its retention once terminal). Pruning may mark a live row
-- expired (status, live, changed_at, prune_at) without rewriting body: a reader applies
-- the expiry to body itself. txn is the token of the transaction that last wrote it.
-- waited_until: someone waits for a change of this session (store:wait) until then, so
-- a change sends a notification (NOTIFY serialises commits: only when it is awaited).
CREATE TABLE pairstore_sessions (
  store      text NOT NULL REFERENCES pairstore_stores (store),
  sid        text NOT NULL,
  status     text NOT NULL,
  live       boolean NOT NULL,
  created_at double precision NOT NULL,
  changed_at double precision NOT NULL,
  expires_at double precision NOT NULL,
  prune_at   bigint NOT NULL,
  txn        text NOT NULL,
  body       text NOT NULL,
  waited_until bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (store, sid)
);
CREATE INDEX pairstore_sessions_prune ON pairstore_sessions (store, live, prune_at);
CREATE INDEX pairstore_sessions_created ON pairstore_sessions (store, created_at);
