#!/usr/bin/env bash
# make test-ha (issue 12): failover on one machine loses nothing acknowledged.
#
# Two private clusters (spec/support/pgcluster.sh): a primary and a streaming standby made
# with pg_basebackup, the standby named in the primary's synchronous_standby_names so that
# every commit waits for it. HA_CLIENTS (default 4) lua5.4 processes (spec/ha/client.lua) use
# pairstore through the multi-host target host=PRIMARY,STANDBY&target_session_attrs=read-write:
# creates, wrong and right code checks, consumes of their own sessions and of each other's,
# each operation and its result logged as it returns. Mid-run the primary is killed
# (pg_ctl stop -m immediate) and the standby promoted; the clients carry on and then stop.
# spec/ha/check.lua then compares every log with what the promoted server holds.
#
#   HA_BEFORE_S (3)  seconds of traffic before the kill      HA_AFTER_S (3)  after the promotion
#   HA_DOWN_S (1)    seconds between the kill and the promotion
#   HA_KEEP=1        keep the work directory (logs) afterwards
# Bounded: every wait has a limit, the whole run takes about 20 s (90 s at most, then it
# fails). Both clusters, the clients and the work directory are removed on any exit.
# Prints each check, then "N passed, N failed".
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
export LUA_PATH="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua;;"
export LUA_CPATH="$ROOT/build/lua5.4/?.so;;"
LUA=${LUA:-lua5.4}
PGC="bash $ROOT/spec/support/pgcluster.sh"
CLIENTS=${HA_CLIENTS:-4}
BEFORE=${HA_BEFORE_S:-3}
DOWN=${HA_DOWN_S:-1}
AFTER=${HA_AFTER_S:-3}
LIMIT=90

fail_early() { echo "FAIL ha: $*"; echo "0 passed, 1 failed"; exit 1; }
[ -f build/lua5.4/pairstore/core.so ] || fail_early "build/lua5.4/pairstore/core.so missing: run make"

work=$(mktemp -d /tmp/pairstore-ha.XXXXXX)
primary=$(mktemp -d /tmp/pairstore-ha-p.XXXXXX)
standby=$(mktemp -d /tmp/pairstore-ha-s.XXXXXX)
pids=()
watchdog=
cleanup() {
  local rc=$?
  [ -n "$watchdog" ] && kill "$watchdog" 2>/dev/null
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
  $PGC stop "$standby" >/dev/null 2>&1
  $PGC stop "$primary" >/dev/null 2>&1
  if [ -n "${HA_KEEP:-}" ]; then echo "ha: logs kept in $work"; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# The whole run is bounded: past LIMIT seconds the script is told to stop (TERM: cleanup runs).
(
  trap 'kill "$sp" 2>/dev/null; exit 0' TERM
  sleep "$LIMIT" & sp=$!
  wait "$sp" || exit 0
  echo "FAIL ha: the run exceeded ${LIMIT} s"; echo "0 passed, 1 failed"; kill -TERM $$
) &
watchdog=$!

t0=$SECONDS
say() { echo "ha: [$((SECONDS - t0)) s] $*"; }

target=$($PGC pair "$primary" "$standby") || fail_early "no primary with a synchronous standby (pgcluster.sh pair)"
say "primary $primary, synchronous standby $standby"

direct="postgresql:///pairstore?host=$standby&user=pairstore"
# The schema is made once before the clients start (its concurrent creation is not what this
# test is about); the clients then only use the store.
HA_TARGET=$target "$LUA" -e 'local s = require("pairstore").open(os.getenv("HA_TARGET")); assert(s:list_all()); s:close()' ||
  fail_early "the first operation through the multi-host target failed"

mkdir -p "$work/logs"
for i in $(seq 1 "$CLIENTS"); do
  "$LUA" spec/ha/client.lua "$target" "$i" "$work" > "$work/client-$i.out" 2>&1 &
  pids+=($!)
done

# Traffic before the failover: every client has had acknowledged operations.
wait_for() { # wait_for SECONDS TEST...
  local until=$((SECONDS + $1)); shift
  while ! "$@"; do [ "$SECONDS" -ge "$until" ] && return 1; sleep 0.1; done
}
all_logged() {
  local i n
  for i in $(seq 1 "$CLIENTS"); do
    n=$(grep -c $'\tok\t' "$work/logs/$i" 2>/dev/null)
    [ "${n:-0}" -ge "$1" ] || return 1
  done
}
wait_for 20 all_logged 5 || fail_early "the clients did not start working"
sleep "$BEFORE"
say "killing the primary (stop -m immediate)"
: > "$work/killed"
$PGC ctl "$primary" stop -m immediate -w >/dev/null 2>&1 || fail_early "pg_ctl stop -m immediate failed"
sleep "$DOWN"
say "promoting the standby"
$PGC ctl "$standby" promote -w >/dev/null 2>&1 || fail_early "pg_ctl promote failed"
: > "$work/promoted"
# A 2 s grace for clients that were between a failed attempt and the next one; from then on
# ("settled") every operation must succeed again.
sleep 2
: > "$work/settled"
sleep "$AFTER"
: > "$work/stop"
say "stopping the clients"
clients_ok=1
for i in $(seq 1 "$CLIENTS"); do
  if ! wait_for 20 test -f "$work/done-$i"; then
    echo "ha: client $i did not stop within 20 s (killed)"; clients_ok=0
    kill -KILL "${pids[$((i - 1))]}" 2>/dev/null
  fi
done
for pid in "${pids[@]}"; do
  wait "$pid" || clients_ok=0
done
pids=()
for i in $(seq 1 "$CLIENTS"); do
  if [ -s "$work/client-$i.out" ]; then echo "ha: client $i said:"; sed 's/^/  /' "$work/client-$i.out" | head -20; fi
done
say "checking the promoted server"
"$LUA" spec/ha/check.lua "$work" "$CLIENTS" "$direct" "$standby" "$clients_ok"
