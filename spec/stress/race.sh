#!/usr/bin/env bash
# Stale-break race: STRESS_RACE_WAITERS (16) waiters released at the same instant against one
# stale foreign sentinel (dead pid, mtime 60 s ago, mode 0644), STRESS_RACE_ROUNDS times (default
# 40), cycling through the variants: dead pid, empty, garbage, mtime one hour in the future.
# An O_EXCL marker inside the critical section must never collide; exactly one waiter breaks
# each stale sentinel; the counter ends at waiters x rounds. Then live holders: a reference peer
# holding 3 s (lock_wait_ms 1000 -> timeout, 6000 -> success after its release) and a live
# pairstore holder whose sentinel is made to look one hour old (never broken). Negative control:
# the same waiters without the lock must trip the detector.
set -u
cd "$(dirname "$0")/../.."
ROUNDS=${STRESS_RACE_ROUNDS:-40}
N=${STRESS_RACE_WAITERS:-16}
PEER=${REFERENCE_PEER:-spec/support/ref_peer.mjs}
work=$(mktemp -d /tmp/pairstore-race.XXXXXX)
dir=$work/store; mkdir -p "$dir"
path=$dir/pair-sessions.json
lock=$path.lock
passed=0; failed=0
check() { if [ "$2" = 0 ]; then passed=$((passed+1)); echo "ok   $1"; else failed=$((failed+1)); echo "FAIL $1${3:+: $3}"; fi; }
ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }
attempts() { lua5.4 -e 'local j = require("cjson").decode(io.read("a")); print(math.tointeger(j.sessions[1].secondaryCodeAttempts))' < "$path"; }

sid=$(lua5.4 spec/fault/one_op.lua "$path" seed | sed -n 's/^ok //p')

plant() { # $1 = variant
  local dead
  dead=$(sh -c 'echo $$')
  case $1 in
    dead)    printf '%s\n' "$dead" > "$lock"; touch -d '60 seconds ago' "$lock" ;;
    empty)   : > "$lock"; touch -d '60 seconds ago' "$lock" ;;
    garbage) printf '\001\377garbage %s pid=%s\n\000' "$RANDOM" "$dead" > "$lock"; touch -d '60 seconds ago' "$lock" ;;
    future)  printf '%s\n' "$dead" > "$lock"; touch -d "@$(( $(date +%s) + 3600 ))" "$lock" ;;
  esac
  chmod 0644 "$lock"
}

# One round: $1 = round tag, $2 = "lock" or "nolock"; prints "overlaps breaks errors oks"
round() {
  local tag=$1 how=$2 i pids=() fifo=$work/go.$1 ready waited=0
  rm -f "$fifo"; mkfifo "$fifo"
  for i in $(seq 1 "$N"); do
    if [ "$how" = lock ]; then
      lua5.4 spec/stress/race_waiter.lua "$path" "$sid" "$fifo" "$work/marker" "$work/log.$tag.$i" &
    else
      RACE_NO_LOCK=1 lua5.4 spec/stress/race_waiter.lua "$path" "$sid" "$fifo" "$work/marker" "$work/log.$tag.$i" &
    fi
    pids+=($!)
  done
  while :; do
    ready=$(cat "$work"/log."$tag".* 2>/dev/null | grep -c '^ready$')
    [ "$ready" -ge "$N" ] && break
    sleep 0.02
  done
  sleep 0.2                       # every waiter is now blocked in open(FIFO)
  exec 3>"$fifo"                  # their opens return; they block in read
  sleep 0.1
  exec 3>&-                       # EOF: all released at the same instant
  for i in "${pids[@]}"; do { wait "$i"; } 2>/dev/null; done
  cat "$work"/log."$tag".* > "$work/round.$tag"
  echo "$(grep -c '^OVERLAP' "$work/round.$tag") $(grep -c '^event lock_broken' "$work/round.$tag") $(grep -c '^err' "$work/round.$tag") $(grep -c '^ok' "$work/round.$tag")"
}

variants=(dead empty garbage future)
tot_over=0; tot_err=0; bad_breaks=0; tot_ok=0; first_err=""
t0=$(ms)
for r in $(seq 1 "$ROUNDS"); do
  v=${variants[$(( (r - 1) % 4 ))]}
  plant "$v"
  read -r over breaks errs oks <<<"$(round "$r" lock)"
  tot_over=$((tot_over + over)); tot_err=$((tot_err + errs)); tot_ok=$((tot_ok + oks))
  [ "$breaks" != 1 ] && bad_breaks=$((bad_breaks + 1)) && echo "  round $r ($v): $breaks waiters broke the stale sentinel"
  [ "$errs" != 0 ] && [ -z "$first_err" ] && first_err="round $r ($v): $(grep -m1 '^err' "$work/round.$r")"
  [ "$over" != 0 ] && echo "  round $r ($v): $over overlaps"
done
elapsed=$(( $(ms) - t0 ))
final=$(attempts)
check "race: $ROUNDS rounds x $N waiters: the overlap detector never tripped" "$([ "$tot_over" = 0 ] && echo 0 || echo 1)" "$tot_over overlaps"
check "race: every waiter succeeded" "$([ "$tot_err" = 0 ] && [ "$tot_ok" = $((ROUNDS * N)) ] && echo 0 || echo 1)" "$tot_err errors, $tot_ok ok; $first_err"
check "race: each stale sentinel was broken by exactly one waiter" "$([ "$bad_breaks" = 0 ] && echo 0 || echo 1)" "$bad_breaks rounds otherwise"
check "race: counter = waiters x rounds ($((ROUNDS * N)))" "$([ "$final" = $((ROUNDS * N)) ] && echo 0 || echo 1)" "counter $final"
left=$(ls -A "$dir" | grep -v '^pair-sessions.json$' | tr '\n' ' ')
check "race: no sentinel, break or temp file left" "$([ -z "$left" ] && echo 0 || echo 1)" "$left"
echo "race: $ROUNDS rounds x $N waiters (dead pid, empty, garbage, future mtime) in $elapsed ms, $tot_over overlaps, $bad_breaks rounds with other than one break, counter $final"

# Negative control: the same release without the lock must trip the detector.
nover=0
for r in 1 2 3; do read -r over _ _ _ <<<"$(round "n$r" nolock)"; nover=$((nover + over)); done
check "race: negative control: without the lock the detector trips" "$([ "$nover" -gt 0 ] && echo 0 || echo 1)" "no overlap seen"
echo "race negative control: $nover overlaps in 3 rounds without the lock"
rm -f "$lock"

# The same race made deterministic with strace's delay injection: waiter B opens the stale
# sentinel, then its flock is delayed 1 s; meanwhile A breaks the sentinel, publishes its own
# and stays 2 s in the critical section; B's flock on the dead inode then succeeds, and B must
# not touch A's sentinel (if it moved it away, even for the 1 s its put-back is delayed, C would
# get in while A is inside).
if command -v strace >/dev/null; then
  plant dead
  # the store reaches the sentinel relative to its directory's descriptor: openat(N, "name"),
  # and a break is renameat(N, "name", N, "name.break-...")
  lockname=${lock##*/}
  opened="openat([0-9]*, \"$lockname\""
  broke="renameat([0-9]*, \"$lockname\", [0-9]*, \"$lockname.break-"
  strace -f -qq -o "$work/b.trace" -e trace=openat,flock,rename,renameat,renameat2 \
    -e inject=flock:delay_enter=1000000:when=2 -e inject=renameat2:delay_enter=1000000 \
    lua5.4 spec/stress/race_waiter.lua "$path" "$sid" - "$work/marker" "$work/log.b" & b=$!
  until grep -q "$opened" "$work/b.trace" 2>/dev/null; do sleep 0.01; done
  RACE_HOLD_S=2 lua5.4 spec/stress/race_waiter.lua "$path" "$sid" - "$work/marker" "$work/log.a" & a=$!
  # C starts once B's delayed flock has returned (or B moved the sentinel away)
  until grep -q -e 'DELAYED' -e "$broke" "$work/b.trace" 2>/dev/null; do sleep 0.01; done
  sleep 0.05
  lua5.4 spec/stress/race_waiter.lua "$path" "$sid" - "$work/marker" "$work/log.c" & c=$!
  wait "$a" "$b" "$c"
  res=$(cat "$work/log.a" "$work/log.b" "$work/log.c" | grep -c -e '^ok')
  over=$(cat "$work/log.a" "$work/log.b" "$work/log.c" | grep -c '^OVERLAP')
  moved=$(grep -c "$broke" "$work/b.trace")
  check "race: injected delays (B's flock on the broken inode late by 1 s): no overlap, A's sentinel untouched" \
    "$([ "$over" = 0 ] && [ "$res" = 3 ] && [ "$moved" = 0 ] && echo 0 || echo 1)" "$over overlaps, $res ok, B renamed the sentinel $moved times"
  echo "race under injected delays: $over overlaps, $res of 3 ok, B moved a live sentinel $moved times"
fi

# A live reference holder is honoured until its release (its threshold is 30 s).
if command -v node >/dev/null && [ -f "$PEER" ]; then
  node "$PEER" hold "$path" 3000 & peer=$!
  while [ ! -e "$lock" ]; do sleep 0.01; done
  holder=$(tr -dc 0-9 < "$lock")
  t=$(ms); out=$(PS_LOCK_WAIT_MS=1000 lua5.4 spec/fault/one_op.lua "$path" incr "$sid"); dt=$(( $(ms) - t ))
  check "race: live reference holder, lock_wait_ms 1000 -> timeout after ~1 s (${dt} ms)" "$(case $out in *"err timeout"*) [ "$dt" -ge 950 ] && [ "$dt" -lt 2500 ] && echo 0 || echo 1 ;; *) echo 1 ;; esac)" "$out"
  check "race: the live reference sentinel was not broken" "$([ "$(tr -dc 0-9 < "$lock" 2>/dev/null)" = "$holder" ] && echo 0 || echo 1)"
  before=$(attempts)
  t=$(ms); out=$(PS_LOCK_WAIT_MS=6000 lua5.4 spec/fault/one_op.lua "$path" incr "$sid"); dt=$(( $(ms) - t ))
  wait "$peer"; prc=$?
  check "race: lock_wait_ms 6000 -> succeeds after the reference released (${dt} ms)" "$(case $out in "ok "*) [ "$(attempts)" = $((before + 1)) ] && echo 0 || echo 1 ;; *) echo 1 ;; esac)" "$out"
  check "race: the reference holder finished normally" "$prc"
else
  check "race: node and the reference peer are available" 1 "$PEER"
fi

# A live pairstore holder is never broken, whatever the age of its sentinel.
cat > "$work/holder.lua" <<'LUA'
local store = require("pairstore").open(arg[1], { durable = false })
assert(store:update(arg[2], function(s)
  local f = io.open(arg[3], "w") f:write("in\n") f:close()
  os.execute("sleep 4")
  s.secondaryCodeAttempts = s.secondaryCodeAttempts + 1
end))
print("holder done")
LUA
for age in '1 hour ago' "@$(( $(date +%s) + 3600 ))"; do
  rm -f "$work/in"
  lua5.4 "$work/holder.lua" "$path" "$sid" "$work/in" > "$work/holder.out" 2>&1 & h=$!
  while [ ! -e "$work/in" ]; do sleep 0.01; done
  touch -d "$age" "$lock"
  for i in 1 2 3 4; do PS_LOCK_WAIT_MS=1000 lua5.4 spec/fault/one_op.lua "$path" incr "$sid" > "$work/w.$i" & done
  for i in 1 2 3 4; do wait %$((i + 1)) 2>/dev/null; done
  outs=""
  for i in 1 2 3 4; do outs="$outs$(grep -v '^event' "$work/w.$i")|"; done
  wait "$h"
  check "race: live pairstore holder with sentinel mtime '$age': 4 waiters time out, none breaks it" "$([ "$(grep -o 'err timeout' <<<"$outs" | wc -l)" = 4 ] && grep -q 'holder done' "$work/holder.out" && echo 0 || echo 1)" "$outs $(cat "$work/holder.out")"
done

echo "$passed passed, $failed failed"
[ "$failed" = 0 ] && [ -z "${STRESS_KEEP:-}" ] && rm -rf "$work"
[ "$failed" = 0 ]
