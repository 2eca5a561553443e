#!/usr/bin/env bash
# make test-stress: the lock and the writes under real processes, kills and races.
#   chaos  (STRESS_SECONDS, default 20)   6 workers, random SIGKILLs, counter bounds, takeover
#   crash  (STRESS_CRASH_KILLS, 300)      ~1 MB rewrites killed at random; in-place control
#   race   (STRESS_RACE_ROUNDS, 40)       16 waiters vs one stale foreign sentinel; live holders
#   mixed  (STRESS_MIXED_COUNT, 150)      2 reference peers + 2 pairstore workers
# plus the chaos negative control (the same workers without the lock must lose updates).
# Prints each part's checks and summary, then "N passed, N failed" over all of them.
set -u
cd "$(dirname "$0")/../.."
export LUA_PATH="$PWD/lua/?.lua;$PWD/lua/?/init.lua;;"
export LUA_CPATH="$PWD/build/lua5.4/?.so;;"
[ -f build/lua5.4/pairstore/core.so ] || { echo "build/lua5.4/pairstore/core.so missing: run make"; echo "0 passed, 1 failed"; exit 1; }
passed=0; failed=0
summaries=()
part() { # name, command...
  local name=$1; shift
  local out t0=$SECONDS
  echo "== $name"
  out=$("$@" 2>&1)
  echo "$out" | grep -v -E '^[0-9]+ passed, [0-9]+ failed$'
  local line p f
  line=$(echo "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -1)
  if [ -z "$line" ]; then p=0; f=1; echo "FAIL $name: no summary (crashed?)"; else read -r p _ f _ <<<"$line"; fi
  passed=$((passed + p)); failed=$((failed + f))
  summaries+=("$(echo "$out" | grep -E "^$name( negative control)?:|^$name under" | tr '\n' ';' | sed 's/;$//') [$((SECONDS - t0)) s]")
}
part chaos bash spec/stress/chaos.sh
part crash bash spec/stress/crash.sh
part race bash spec/stress/race.sh
part mixed bash spec/stress/mixed.sh

echo "== chaos negative control"
out=$(WORKER_UNLOCKED=1 STRESS_SECONDS=${STRESS_CONTROL_SECONDS:-3} bash spec/stress/chaos.sh 2>&1)
lost=$(echo "$out" | sed -n 's/^chaos: .* \([0-9]*\) lost,.*/\1/p')
if echo "$out" | grep -q '^FAIL chaos: counter' && [ "${lost:-0}" -gt 0 ]; then
  passed=$((passed + 1)); echo "ok   chaos negative control: without the lock the counter check fails ($lost updates lost)"
else
  failed=$((failed + 1)); echo "FAIL chaos negative control: the counter check did not catch unlocked workers"; echo "$out"
fi
summaries+=("chaos negative control: workers without the lock lost ${lost:-0} updates, caught by the counter check")
rm -rf /tmp/pairstore-chaos.* 2>/dev/null

echo "== summary"
for s in "${summaries[@]}"; do echo "$s"; done
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
