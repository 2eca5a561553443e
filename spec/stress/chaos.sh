#!/usr/bin/env bash
# Chaos: 6 workers increment one counter under the lock while a driver SIGKILLs a random worker
# every 50-300 ms and restarts it, for STRESS_SECONDS (default 20). Then spec/stress/check.lua
# chaos checks the file, the counter bounds, the leftovers and the takeover times.
set -u
cd "$(dirname "$0")/../.."
SECS=${STRESS_SECONDS:-20}
WORKERS=${STRESS_WORKERS:-6}
work=$(mktemp -d /tmp/pairstore-chaos.XXXXXX)
dir=$work/store; mkdir -p "$dir" "$work/acks"
path=$dir/pair-sessions.json
sid=$(lua5.4 spec/fault/one_op.lua "$path" seed | sed -n 's/^ok //p')
declare -a pids
start() { lua5.4 spec/stress/worker.lua "$path" "$sid" "$work/acks/$1" >/dev/null 2>>"$work/stderr" & pids[$1]=$!; }
for i in $(seq 1 "$WORKERS"); do start "$i"; done
: > "$work/kills"
t_start=$EPOCHREALTIME
end=$((SECONDS + SECS))
while [ "$SECONDS" -lt "$end" ]; do
  sleep "0.$(printf %03d $((50 + RANDOM % 251)))"
  i=$((RANDOM % WORKERS + 1))
  victim=${pids[$i]}
  kill -KILL "$victim" 2>/dev/null
  t=$EPOCHREALTIME
  { wait "$victim"; } 2>/dev/null
  holder=$(cat "$path.lock" 2>/dev/null | head -c 20 | tr -dc 0-9)
  echo "$t $victim ${holder:-0}" >> "$work/kills"
  start "$i"
done
# The final stop is a kill too (a worker may be between its commit and its ack).
for i in $(seq 1 "$WORKERS"); do kill -KILL "${pids[$i]}" 2>/dev/null; done
t_end=$EPOCHREALTIME
for i in $(seq 1 "$WORKERS"); do { wait "${pids[$i]}"; } 2>/dev/null; done
lua5.4 spec/stress/check.lua chaos "$work" "$path" "$sid" "$WORKERS" "$t_start" "$t_end"
rc=$?
[ "$rc" -eq 0 ] && [ -z "${STRESS_KEEP:-}" ] && rm -rf "$work"
exit $rc
