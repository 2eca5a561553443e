#!/usr/bin/env bash
# spec/nginx/run.sh [file|pg]: the pairing flow inside a real nginx (examples/nginx), on
# both backends by default: the file store, then PostgreSQL (a private cluster started by
# spec/support/with-pg.sh). For each: a temporary prefix (mktemp -d), a random free loopback
# port, 4 workers under a master, the workers as nobody:nogroup when run as root (the temp
# dir, the store's directory, the payload directory and the PostgreSQL socket are made
# reachable by that user), error_log in the prefix; spec/nginx/driver.lua runs the checks
# over HTTP, bounded in time. nginx is stopped and everything removed at the end, also on
# failure or interruption. Ends with "N passed, N failed"; exits non-zero on any failure.
# Needs the LuaJIT build of the core (make LUA=luajit) and the Lua 5.4 one (the driver).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tree=$(cd "$here/../.." && pwd)

if [ $# -eq 0 ]; then
  out=$(mktemp /tmp/pairstore-nginx-out.XXXXXX)
  trap 'rm -f "$out"' EXIT
  bash "$here/run.sh" file 2>&1 | tee "$out"
  bash "$tree/spec/support/with-pg.sh" bash "$here/run.sh" pg 2>&1 | tee -a "$out"
  p=0 f=0
  while read -r a _ b _; do p=$((p + a)); f=$((f + b)); done < <(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out")
  [ "$(grep -cE '^[0-9]+ passed, [0-9]+ failed$' "$out")" -eq 2 ] || f=$((f + 1)) # a backend that did not finish
  echo "test-nginx: both backends"
  echo "$p passed, $f failed"
  [ "$f" -eq 0 ]
  exit
fi

backend=$1
case $backend in
file) ;;
pg) [ -n "${PAIRSTORE_TEST_PG:-}" ] || { echo "run.sh pg: run it under spec/support/with-pg.sh" >&2; exit 2; } ;;
*) echo "usage: run.sh [file|pg]" >&2; exit 2 ;;
esac

# The LuaJIT build of the core: where `make LUA=luajit` puts it.
jitcore=${PAIRSTORE_LUAJIT_CORE:-$tree/build/luajit/pairstore/core.so}
[ -f "$jitcore" ] || { echo "run.sh: $jitcore not found (make LUA=luajit)"; echo "0 passed, 1 failed"; exit 1; }
jitdir=$(dirname "$(dirname "$jitcore")")
# The driver runs on Lua 5.4: its build (build/lua5.4/, or build/ before per-runtime dirs).
cdir54=$tree/build/lua5.4
[ -f "$cdir54/pairstore/core.so" ] || cdir54=$tree/build

prefix=$(mktemp -d /tmp/pairstore-nginx.XXXXXX)
master=
driver=
# shellcheck disable=SC2317  # (called by the trap)
stop_nginx() {
  [ -n "$master" ] || return 0
  local kids
  kids=$(cat "/proc/$master/task/$master/children" 2>/dev/null || true)
  kill -QUIT "$master" 2>/dev/null
  for _ in $(seq 30); do kill -0 "$master" 2>/dev/null || break; sleep 0.1; done
  kill -TERM "$master" 2>/dev/null
  for _ in $(seq 20); do kill -0 "$master" 2>/dev/null || break; sleep 0.1; done
  # (still there: the master and the workers it had, by their ids)
  kids="$kids $(cat "/proc/$master/task/$master/children" 2>/dev/null || true)"
  kill -KILL "$master" 2>/dev/null
  for k in $kids; do kill -KILL "$k" 2>/dev/null; done
  master=
}
# shellcheck disable=SC2317  # (called by the trap)
cleanup() {
  if [ -n "$driver" ]; then kill -TERM "$driver" 2>/dev/null; wait "$driver" 2>/dev/null; fi
  stop_nginx
  rm -rf "$prefix"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

run_as=()
user_line="# (not root: the workers run as the caller)"
mkdir -p "$prefix/tmp" "$prefix/store" "$prefix/payloads" "$prefix/work"
chmod 0755 "$prefix"
chmod 0700 "$prefix/store" "$prefix/payloads"
if [ "$(id -u)" -eq 0 ]; then
  user_line="user nobody nogroup;"
  run_as=(runuser -u nobody --)
  chown nobody:nogroup "$prefix/store" "$prefix/payloads" "$prefix/work"
  # the socket's directory: enter only (the socket itself is 0777, the data stays 0700)
  [ "$backend" = pg ] && chmod 0711 "$PAIRSTORE_TEST_PGDIR"
fi

# A tree the workers' user cannot read (a clone under /root, say): they and the driver use
# a copy of it in the prefix (without .git and the other builds), removed with it.
if [ ${#run_as[@]} -gt 0 ] && ! "${run_as[@]}" test -r "$tree/lua/pairstore/init.lua" 2>/dev/null; then
  mkdir "$prefix/tree"
  tar -C "$tree" --exclude=./.git --exclude='./build-*' -cf - . | tar -C "$prefix/tree" -xf - ||
    { echo "run.sh: cannot copy $tree into $prefix/tree"; echo "0 passed, 1 failed"; exit 1; }
  chmod -R a+rX "$prefix/tree"
  case $jitcore in "$tree"/*) jitcore=$prefix/tree${jitcore#"$tree"} ;; esac
  case ${NGX_DRIVER:-} in "$tree"/*) NGX_DRIVER=$prefix/tree${NGX_DRIVER#"$tree"} ;; esac
  jitdir=$(dirname "$(dirname "$jitcore")")
  cdir54=$prefix/tree${cdir54#"$tree"}
  echo "($tree is not readable by nobody: using a copy in $prefix/tree)"
  tree=$prefix/tree
  here=$tree/spec/nginx
fi

if [ "$backend" = pg ]; then target=$PAIRSTORE_TEST_PG; else target=$prefix/store/pair-sessions.json; fi

free_port() {
  local p
  for _ in $(seq 100); do
    p=$((20000 + RANDOM % 40000))
    [ -z "$(ss -Htln "sport = :$p" 2>/dev/null)" ] && { echo "$p"; return 0; }
  done
  return 1
}

started=
for _ in 1 2 3; do
  port=$(free_port) || break
  oport=$(free_port) || break
  [ "$oport" = "$port" ] && continue
  sed -e "s|@USER@|$user_line|; s|@PREFIX@|$prefix|g; s|@LISTEN@|127.0.0.1:$port|; s|@TREE@|$tree|g" \
    -e "s|@OPERATOR_LISTEN@|127.0.0.1:$oport|" -e "s|^worker_processes .*|worker_processes ${NGX_WORKERS:-4};|" \
    -e "s|rate=20r/s|rate=${NGX_RATE:-100000r/s}|" \
    -e "s|$tree/build/luajit/?.so|$jitdir/?.so|" \
    "$tree/examples/nginx/nginx.conf" > "$prefix/nginx.conf"
  rm -f "$prefix/nginx.pid"
  if PAIRSTORE_TARGET=$target PAIRSTORE_PAYLOAD_DIR=$prefix/payloads PAIRSTORE_BASE_URL=http://127.0.0.1:$port/pair \
    timeout 20 nginx -p "$prefix" -c "$prefix/nginx.conf" 2> "$prefix/start.err"; then
    for _ in $(seq 50); do [ -s "$prefix/nginx.pid" ] && break; sleep 0.1; done
    master=$(cat "$prefix/nginx.pid" 2>/dev/null || true)
    if [ -n "$master" ] && curl -s --max-time 5 -o /dev/null "http://127.0.0.1:$port/"; then started=1; break; fi
  fi
  grep -q "Address already in use" "$prefix/start.err" "$prefix/error.log" 2>/dev/null || break
  stop_nginx
done
if [ -z "$started" ]; then
  echo "run.sh: nginx did not start:"
  cat "$prefix/start.err" "$prefix/error.log" 2>/dev/null | tail -n 20
  echo "0 passed, 1 failed"
  exit 1
fi
echo "nginx $(nginx -v 2>&1 | sed 's/.*\///') on 127.0.0.1:$port, master $master, workers: $(cat "/proc/$master/task/$master/children"), backend $backend${run_as:+ (workers as nobody)}"

# NGX_DRIVER: another driver (a bash script) run the same way against the same server
# (spec/browser/run.sh: the phone page in Chromium).
drv=(lua5.4 "$here/driver.lua")
[ -n "${NGX_DRIVER:-}" ] && drv=(bash "$NGX_DRIVER")
"${run_as[@]}" env NGX_PORT="$port" NGX_OPERATOR_PORT="$oport" NGX_PREFIX="$prefix" NGX_WORK="$prefix/work" NGX_MASTER_PID="$master" \
  BACKEND="$backend" PAIRSTORE_TARGET="$target" PAIRSTORE_PAYLOAD_DIR="$prefix/payloads" TREE="$tree" \
  LUA_PATH="$tree/lua/?.lua;$tree/lua/?/init.lua;;" LUA_CPATH="$cdir54/?.so;;" \
  timeout 300 "${drv[@]}" &
driver=$! # (in the background: an interruption runs the traps at once, not after the driver)
wait "$driver"
rc=$?
driver=
if [ $rc -ne 0 ]; then
  echo "--- error.log (last 30 lines)"
  tail -n 30 "$prefix/error.log"
  [ $rc -eq 124 ] && echo "driver timed out" && echo "0 passed, 1 failed"
fi
exit $rc
