#!/usr/bin/env bash
# spec/bench/lockhold.sh: the lock-hold figures of `make bench` (issue 19): another process
# holds the store's lock for 2 s (file: the whole store's; PostgreSQL: one session's row)
# while the nginx example (4 workers, each with a request waiting on that lock) answers
# requests that do not need it. It runs make test-nginx's lock-hold check alone
# (spec/nginx/run.sh with ONLY="lock hold", NGX_OUTAGE=0) on each backend, the PostgreSQL one
# beside a private cluster (spec/support/with-pg.sh), and prints one line per backend with
# the probes' median and maximum, then one `BENCH_LOCKHOLD {...}` JSON line. The check's own
# pass/fail counts are shown, not enforced (make test-nginx enforces them); a backend whose
# run printed no figure fails the bench (exit 1). Needs what make test-nginx needs (nginx,
# its Lua module, the LuaJIT and Lua 5.4 builds).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tree=$(cd "$here/../.." && pwd)
work=$(mktemp -d /tmp/pairstore-bench-lockhold.XXXXXX)
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

status=0
json=
echo ""
echo "Lock held 2 s by another process while the nginx example (4 workers) serves: ms per probe"
echo "request that does not need that lock (file: the page and a 400; PostgreSQL: status polls of"
echo "the held session and another), answered while the workers had requests waiting on the lock"
for b in file pg; do
  out=$work/$b.out
  if [ "$b" = file ]; then
    ONLY="lock hold" NGX_OUTAGE=0 timeout 120 bash "$tree/spec/nginx/run.sh" file > "$out" 2>&1
  else
    ONLY="lock hold" NGX_OUTAGE=0 timeout 120 bash "$tree/spec/support/with-pg.sh" bash "$tree/spec/nginx/run.sh" pg > "$out" 2>&1
  fi
  # "lock held 2027 ms by another process; 30 probes answered meanwhile (...): median 1.5 ms, max 4.1 ms; ..."
  line=$(grep -m 1 -E '\] lock held [0-9-]+ ms' "$out")
  counts=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out" | tail -n 1)
  if [ -z "$line" ]; then
    echo "  lock hold, $b store: no figure (the run failed); its last lines:"
    tail -n 20 "$out" | sed 's/^/    /'
    status=1
    continue
  fi
  held=$(sed -E 's/.* lock held ([0-9-]+) ms.*/\1/' <<< "$line")
  n=$(sed -E 's/.*; ([0-9]+) probes answered.*/\1/' <<< "$line")
  med=$(sed -E 's/.*: median ([0-9.]+) ms, max.*/\1/' <<< "$line")
  max=$(sed -E 's/.*, max ([0-9.]+) ms;.*/\1/' <<< "$line")
  printf '  lock hold, %-4s store: median %s ms, max %s ms (%s probes; lock held %s ms; check: %s)\n' \
    "$b" "$med" "$max" "$n" "$held" "${counts:-no closing line}"
  json="${json:+$json,}\"$b\":{\"median_ms\":$med,\"max_ms\":$max,\"probes\":$n,\"held_ms\":$held}"
done
echo "BENCH_LOCKHOLD {$json}"
exit "$status"
