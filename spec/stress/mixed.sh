#!/usr/bin/env bash
# Mixed processes: 2 reference peers (Node.js, the reference's own lock and write protocol) and
# 2 pairstore workers each add STRESS_MIXED_COUNT (default 150; every process holds each lock 2 ms) to the same counter at the same
# time: the counter must end at exactly 4 x COUNT, every call acknowledged.
set -u
cd "$(dirname "$0")/../.."
COUNT=${STRESS_MIXED_COUNT:-150}
PEER=${REFERENCE_PEER:-spec/support/ref_peer.mjs}
work=$(mktemp -d /tmp/pairstore-mixed.XXXXXX)
path=$work/pair-sessions.json
passed=0; failed=0
check() { if [ "$2" = 0 ]; then passed=$((passed+1)); echo "ok   $1"; else failed=$((failed+1)); echo "FAIL $1${3:+: $3}"; fi; }
if ! command -v node >/dev/null || [ ! -f "$PEER" ]; then
  check "mixed: node and the reference peer are available" 1 "$PEER"
  echo "$passed passed, $failed failed"; exit 1
fi
sid=$(lua5.4 spec/fault/one_op.lua "$path" seed | sed -n 's/^ok //p')
t0=${EPOCHREALTIME/./}
node "$PEER" incr "$path" "$sid" "$COUNT" --hold-ms 2 > "$work/peer1" 2>&1 & p1=$!
node "$PEER" incr "$path" "$sid" "$COUNT" --hold-ms 2 > "$work/peer2" 2>&1 & p2=$!
# start the pairstore workers once the peers are at work (node starts slower than lua)
until [ -e "$path.lock" ]; do sleep 0.005; done
PS_DURABLE=0 WORKER_HOLD_MS=2 lua5.4 spec/stress/worker.lua "$path" "$sid" "$work/ack1" "$COUNT" > "$work/w1" 2>&1 & w1=$!
PS_DURABLE=0 WORKER_HOLD_MS=2 lua5.4 spec/stress/worker.lua "$path" "$sid" "$work/ack2" "$COUNT" > "$work/w2" 2>&1 & w2=$!
wait $p1 $p2 $w1 $w2
dt=$(( (${EPOCHREALTIME/./} - t0) / 1000 ))
acks=$(cat "$work/peer1" "$work/peer2" "$work/w1" "$work/w2" | awk '$1 == "acked" { n += $2 } END { print n + 0 }')
final=$(lua5.4 -e 'local j = require("cjson").decode(io.read("a")); print(math.tointeger(j.sessions[1].secondaryCodeAttempts))' < "$path")
check "mixed: every increment acknowledged ($acks of $((4 * COUNT)))" "$([ "$acks" = $((4 * COUNT)) ] && echo 0 || echo 1)" "$(cat "$work/peer1" "$work/peer2" | grep -v acked | head -3)"
check "mixed: counter = $((4 * COUNT)), no lost update" "$([ "$final" = $((4 * COUNT)) ] && echo 0 || echo 1)" "counter $final"
left=$(ls -A "$work" | grep -v -e '^pair-sessions.json$' -e '^peer' -e '^w[12]$' -e '^ack' | tr '\n' ' ')
check "mixed: no sentinel or temp file left" "$([ -z "$left" ] && echo 0 || echo 1)" "$left"
waited=$(cat "$work/ack1" "$work/ack2" | awk '$1 == "A" && $3 - $2 >= 2 { n++ } END { print n + 0 }')
check "mixed: the processes really contended (pairstore calls that waited >= 2 ms: $waited)" "$([ "$waited" -ge 5 ] && echo 0 || echo 1)"
echo "mixed: 2 reference peers + 2 pairstore workers x $COUNT increments -> counter $final in $dt ms, $waited pairstore calls waited for the lock"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ] && [ -z "${STRESS_KEEP:-}" ] && rm -rf "$work"
[ "$failed" = 0 ]
