#!/usr/bin/env bash
# `make bench` (issue 5, 12): build the bench helpers, run spec/bench/bench.lua (the file
# backend) against the in-tree build in a temporary directory, then spec/bench/pg.lua (the
# PostgreSQL backend) beside a private cluster started for it (spec/support/with-pg.sh), clean
# up. BENCH_QUICK=1: short CI mode. BENCH_STRICT=1: failing targets of the file section fail
# the run. BENCH_DIR: where the temporary directory goes (default /tmp; the figures are those
# of that file system). BENCH_ONLY=file|pg|nginx|lockhold: one section only (the metrics cost,
# spec/bench/metrics.lua, runs with the file section; nginx: spec/bench/nginx.sh, the nginx
# example over HTTP, `make bench-nginx`, then lockhold: spec/bench/lockhold.sh, the lock held
# 2 s while nginx serves, on both backends). Prints the date of the run and the commit first.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
LUA="${LUA:-lua5.4}"
CC="${CC:-gcc}"
PKG_CONFIG="${PKG_CONFIG:-pkg-config}"

if [ ! -f build/lua5.4/pairstore/core.so ]; then
  echo "bench: build/lua5.4/pairstore/core.so is missing; run 'make' (or 'make bench') first" >&2
  exit 1
fi
if { [ -z "${BENCH_ONLY:-}" ] || [ "${BENCH_ONLY:-}" = pg ]; } && [ ! -f build/lua5.4/test/pgfloor.so ]; then
  echo "bench: build/lua5.4/test/pgfloor.so is missing; run 'make bench'" >&2
  exit 1
fi

# When and what: every figure below is of this run, of this commit (README quotes them with
# the date; judge them against these lines).
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) || commit=unknown
[ -n "$commit" ] || commit=unknown
if [ "$commit" != unknown ] && [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no -- csrc lua spec/bench 2>/dev/null)" ]; then
  commit="$commit + uncommitted changes in csrc/, lua/ or spec/bench/"
fi
echo "make bench: run of $(date -u '+%Y-%m-%d %H:%M:%SZ'), commit $commit${BENCH_QUICK:+ (BENCH_QUICK=$BENCH_QUICK)}${BENCH_ONLY:+ (BENCH_ONLY=$BENCH_ONLY)}"
export BENCH_HEADER_DONE=1

mkdir -p build/bench
LUA_CFLAGS="$($PKG_CONFIG --cflags lua5.4)"
LUA_LIBS="$($PKG_CONFIG --libs lua5.4)"
$CC -O2 -std=c11 -Wall -Wextra $LUA_CFLAGS -o build/bench/floor csrc/bench/floor.c $LUA_LIBS
$CC -O2 -std=c11 -Wall -Wextra -fPIC -shared $LUA_CFLAGS -o build/bench/benchutil.so csrc/bench/benchutil.c

base="${BENCH_DIR:-/tmp}"
mkdir -p "$base"
WORKDIR="$(mktemp -d "$base/pairstore-bench.XXXXXX")"

cleanup() {
  # Child processes the bench started and recorded (a holder waiting to be killed, workers
  # of an interrupted run): end each by its pid, then remove the directory.
  if [ -f "$WORKDIR/pids" ]; then
    while read -r pid; do
      case "$pid" in ''|*[!0-9]*) continue ;; esac
      kill -9 "$pid" 2>/dev/null || true
    done < "$WORKDIR/pids"
  fi
  rm -rf "$WORKDIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export BENCH_WORKDIR="$WORKDIR" BENCH_ROOT="$ROOT" BENCH_LUA="$LUA"
export LUA_PATH="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua;$ROOT/spec/bench/?.lua;;"
export LUA_CPATH="$ROOT/build/lua5.4/?.so;$ROOT/build/bench/?.so;;"
status=0
if [ -z "${BENCH_ONLY:-}" ] || [ "${BENCH_ONLY:-}" = file ]; then
  "$LUA" spec/bench/bench.lua || status=$?
  rc=0
  "$LUA" spec/bench/metrics.lua || rc=$? # (what the metrics option costs a cached get)
  [ "$status" -eq 0 ] && status=$rc
fi
if [ -z "${BENCH_ONLY:-}" ] || [ "${BENCH_ONLY:-}" = pg ]; then
  rc=0
  bash spec/support/with-pg.sh "$LUA" spec/bench/pg.lua || rc=$?
  [ "$status" -eq 0 ] && status=$rc
fi
# The nginx example over HTTP on a PostgreSQL store (issue 18), beside a cluster of its own.
if [ -z "${BENCH_ONLY:-}" ] || [ "${BENCH_ONLY:-}" = nginx ]; then
  rc=0
  bash spec/support/with-pg.sh bash spec/bench/nginx.sh || rc=$?
  [ "$status" -eq 0 ] && status=$rc
fi
# The lock held 2 s by another process while nginx serves (issue 19), both backends.
if [ -z "${BENCH_ONLY:-}" ] || [ "${BENCH_ONLY:-}" = nginx ] || [ "${BENCH_ONLY:-}" = lockhold ]; then
  rc=0
  bash spec/bench/lockhold.sh || rc=$?
  [ "$status" -eq 0 ] && status=$rc
fi
exit "$status"
