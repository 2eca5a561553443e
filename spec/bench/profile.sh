#!/usr/bin/env bash
# Where the time goes for single operations at one level (issue 5): instruction counts with
# callgrind (collection toggled on the Lua-facing C method only, so the driver's own work is
# not counted), system calls per operation with strace (a run of N operations minus a run of
# none), and the on-CPU split between user space and the kernel with perf when it works.
#
#   bash spec/bench/profile.sh [OP...]      OP: get get_changed update create list_active
#   LEVEL=1000 (live sessions)  DURABLE=1 (0: durable = false)  KEEP=1 (keep raw outputs)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
LUA="${LUA:-lua5.4}"
LEVEL="${LEVEL:-1000}"
DURABLE="${DURABLE:-1}"
OPS=("$@")
[ ${#OPS[@]} -gt 0 ] || OPS=(get get_changed update create)

[ -f build/lua5.4/pairstore/core.so ] || { echo "profile: run 'make' first" >&2; exit 1; }
command -v valgrind >/dev/null && command -v callgrind_annotate >/dev/null ||
  { echo "profile: needs valgrind (apt-get install valgrind)" >&2; exit 1; }

export LUA_PATH="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua;;"
export LUA_CPATH="$ROOT/build/lua5.4/?.so;$ROOT/build/bench/?.so;;"
mkdir -p build/bench
gcc -O2 -std=c11 -Wall -Wextra $(pkg-config --cflags lua5.4) -fPIC -shared -o build/bench/benchutil.so \
  csrc/bench/benchutil.c
WORK="$(mktemp -d "${BENCH_DIR:-/tmp}/pairstore-profile.XXXXXX")"
if [ "${KEEP:-0}" = 1 ]; then trap 'echo "profile: raw outputs kept in $WORK"' EXIT
else trap 'rm -rf "$WORK"' EXIT; fi

nd=""; [ "$DURABLE" = 1 ] || nd="nd"
seed="$WORK/seed.json"
"$LUA" spec/bench/profile.lua seed "$seed" "$LEVEL"
echo "pairstore profile: $LEVEL live sessions ($(stat -c %s "$seed") bytes), durable=$([ -z "$nd" ] && echo true || echo false)," \
  "tree $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git status --porcelain --untracked-files=no -- csrc lua 2>/dev/null | grep -q . && echo ' + uncommitted changes')"

echo "(callgrind counts each byte of a rep movsb/stosb as one instruction, so memcpy/memset of large"
echo " blocks weigh more in instructions than in time: perf's on-CPU view below is the time view)"

fresh() { rm -rf "$WORK/$1"; mkdir -p "$WORK/$1"; cp "$seed" "$WORK/$1/pair-sessions.json"; echo "$WORK/$1/pair-sessions.json"; }

for op in "${OPS[@]}"; do
  case "$op" in
    get) n=200 ;;
    get_changed) n=20 ;;
    update) n=40 ;;
    create) n=40 ;;
    list_active) n=40 ;;
    *) echo "profile: unknown op $op" >&2; exit 2 ;;
  esac
  [ "$LEVEL" -le 100 ] && n=$((n * 5))
  echo
  echo "== $op at $LEVEL live sessions (callgrind: $n operations after 3 uncounted, counted around each call)"
  path="$(fresh "cg-$op")"
  valgrind --tool=callgrind --callgrind-out-file="$WORK/$op.cg" --collect-atstart=no \
    "$LUA" spec/bench/profile.lua run "$op" "$path" "$n" $nd 2>"$WORK/$op.valgrind" ||
    { cat "$WORK/$op.valgrind" >&2; exit 1; }
  callgrind_annotate --inclusive=yes --threshold=100 "$WORK/$op.cg" >"$WORK/$op.incl" 2>/dev/null
  callgrind_annotate --threshold=100 "$WORK/$op.cg" >"$WORK/$op.self" 2>/dev/null
  "$LUA" spec/bench/cgsummary.lua "$n" "$WORK/$op.incl" "$WORK/$op.self"

  if [ "$op" = get_changed ]; then
    echo "  (strace/perf skipped: every get_changed comes with another store's update)"
    continue
  fi
  if command -v strace >/dev/null; then
    m=$((n * 5))
    path="$(fresh "st-$op")"
    strace -f -c -w -o "$WORK/$op.strace0" "$LUA" spec/bench/profile.lua run "$op" "$path" 0 $nd
    path="$(fresh "st-$op")"
    strace -f -c -w -o "$WORK/$op.straceN" "$LUA" spec/bench/profile.lua run "$op" "$path" "$m" $nd
    echo "  System calls per operation (strace -c -w, $m operations minus none; counts exact, times"
    echo "  inflated by ptrace)$([ "$op" = create ] && echo '; here each create comes with its delete (an update)'):"
    awk -v m="$m" '
      FNR == 1 { file++ }
      $1 ~ /^[0-9.]+$/ && NF >= 5 && $NF != "total" {
        if (file == 1) { c0[$NF] = $4; s0[$NF] = $2 } else { cN[$NF] = $4; sN[$NF] = $2 }
      }
      END {
        for (k in cN) {
          dc = (cN[k] - c0[k]) / m; ds = (sN[k] - s0[k]) / m * 1e6
          if (dc > 0.001) printf "    %-14s %6.2f calls %9.1f us\n", k, dc, ds
          tc += dc; ts += ds
        }
        printf "    %-14s %6.2f calls %9.1f us\n", "(total)", tc, ts
      }' "$WORK/$op.strace0" "$WORK/$op.straceN" | sort -k4 -n -r
  fi
  if command -v perf >/dev/null && perf stat -e task-clock true >/dev/null 2>&1; then
    m=$((n * 5))
    path="$(fresh "pf-$op")"
    if perf record -q -F 4999 -o "$WORK/$op.perf" "$LUA" spec/bench/profile.lua run "$op" "$path" "$m" $nd \
         >/dev/null 2>&1; then
      perf report -i "$WORK/$op.perf" --no-children --sort dso -g none >"$WORK/$op.perf-dso" 2>/dev/null || true
      perf report -i "$WORK/$op.perf" --no-children --sort dso,sym -g none >"$WORK/$op.perf-sym" 2>/dev/null || true
      echo "  On-CPU time by object (perf, whole driver incl. its start, $m operations):"
      awk '/^ *[0-9.]+%/ && n < 8 { n++; printf "    %7s  %s\n", $1, $2 }' "$WORK/$op.perf-dso"
      echo "  Top symbols by on-CPU time (perf; fsync waits are off-CPU and not here; [k] = kernel):"
      awk '/^ *[0-9.]+%/ && n < 18 { n++; pct = $1; dso = $2; $1 = ""; $2 = ""; sub(/^ +/, "")
             printf "    %7s  %-22s %s\n", pct, dso, $0 }' "$WORK/$op.perf-sym"
    fi
  fi
done
