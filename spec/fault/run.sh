#!/usr/bin/env bash
# make test-fault: faults injected into every system call of an operation, faults from outside
# (fiu-run, a real EFBIG), the syscall order under strace, and the secrets canary (the hostile
# files and file systems are spec/fault/hostile_spec.lua, which `make test` runs). Prints each
# part's checks and summary, then "N passed, N failed".
#   FAULT_MAX_N   highest N tried per operation and fault (default 200)
#   FIU_RUNS      processes run under fiu-run (default 150), FIU_PROBABILITY (0.08)
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
export LUA_PATH="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua;$ROOT/spec/support/?.lua;$ROOT/spec/?.lua;;"
export LUA_CPATH="$ROOT/build/lua5.4/?.so;;"
passed=0; failed=0
summaries=()
part() { # name, env-prefixed command...
  local name=$1; shift
  local out line p f t0=$SECONDS
  echo "== $name"
  out=$("$@" 2>&1)
  echo "$out" | grep -v -E '^[0-9]+ passed, [0-9]+ failed$'
  line=$(echo "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -1)
  if [ -z "$line" ]; then p=0; f=1; echo "FAIL $name: no summary (crashed?)"; else read -r p _ f _ <<<"$line"; fi
  passed=$((passed + p)); failed=$((failed + f))
  summaries+=("$name: $(echo "$out" | grep -E '^(fault loop|fallback|coarse|fiu|efbig|strace|secrets):' | tr '\n' ';' | sed 's/;$//') [$((SECONDS - t0)) s]")
}

for so in build/lua5.4/pairstore/core.so build/lua5.4-test/pairstore/core.so build-fault/pairstore/core.so; do
  [ -f "$so" ] || { echo "$so missing: run make test-fault"; echo "0 passed, 1 failed"; exit 1; }
done

# 1. The fault loop on the fault-injection build, under the usual umask and under 0277 (where a
#    directory left behind at mode 0500 would lock a non-root user out).
part "fault loop (umask 022)" env LUA_CPATH="$ROOT/build-fault/?.so;;" sh -c 'umask 022; exec lua5.4 spec/fault/loop.lua'
part "fault loop (umask 0277)" env LUA_CPATH="$ROOT/build-fault/?.so;;" sh -c 'umask 0277; exec lua5.4 spec/fault/loop.lua'
# ... and on a store that already made a transaction (its lock sentinel parked, published again).
part "fault loop (warm store)" env FAULT_WARM=1 LUA_CPATH="$ROOT/build-fault/?.so;;" sh -c 'umask 022; exec lua5.4 spec/fault/loop.lua'
# 2. From outside the process: fiu-run and a real EFBIG (production build).
# The lock's fallback without O_TMPFILE, and the cache's without fine-grained change times
# (fault-injection build).
part "lock fallback" env LUA_CPATH="$ROOT/build-fault/?.so;;" lua5.4 spec/fault/fallback.lua
part "coarse change times" env LUA_CPATH="$ROOT/build-fault/?.so;;" lua5.4 spec/fault/coarse.lua
part "fiu-run and EFBIG" lua5.4 spec/fault/outside.lua
# 3. Syscall order under strace.
part "strace" lua5.4 spec/fault/strace.lua
# 4. Hostile files and file systems: spec/fault/hostile_spec.lua, a busted spec that `make test`
#    runs (on every runtime); not run a second time here.
# 5. Secrets.
part "secrets" lua5.4 spec/fault/secrets.lua

echo "== summary"
for s in "${summaries[@]}"; do echo "$s"; done
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
