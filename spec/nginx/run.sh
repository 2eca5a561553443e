#!/usr/bin/env bash
# spec/nginx/run.sh [file|pg]: the pairing flow inside a real nginx (examples/nginx), on
# both backends by default: the file store, then PostgreSQL (a private cluster started by
# spec/support/with-pg.sh). For each: a temporary prefix (mktemp -d), a random free loopback
# port, 4 workers under a master, the workers as nobody:nogroup when run as root (the temp
# dir, the store's directory, the payload directory and the PostgreSQL socket are made
# reachable by that user), error_log in the prefix; spec/nginx/driver.lua runs the checks
# over HTTP, bounded in time. On PostgreSQL, spec/nginx/outage.lua then runs as the caller
# (it SIGSTOPs the server's processes and reads pg_stat_activity): on the same nginx, on one
# with 1 worker, and on nginx with 4 and 1 workers against a listener that never answers;
# then spec/nginx/failover.lua, also as the caller: a primary and its synchronous standby of
# their own (spec/support/pgcluster.sh pair), nginx with 4 workers on the multi-host target,
# the primary killed and the standby promoted under HTTP traffic
# (NGX_OUTAGE=0: none of these; NGX_OUTAGE=aborts,longpoll,frozen,frozen1,blackhole4,blackhole1,failover:
# those). Each script's closing line shows as "NAME: N passed, N failed" and counts into the
# run's own. nginx is stopped, the server's processes continued and everything removed at the
# end, also on failure or interruption (NGX_KEEP_LOGS=DIR: the logs copied there first). Ends
# with "N passed, N failed"; exits non-zero on any failure.
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
ha_p='' ha_s='' # the failover's clusters (pgcluster.sh pair), while they run
master=
driver=
tailer=
blackhole=
# nginx from the template, started and stopped as make bench-nginx does (spec/nginx/serve.sh:
# ngx_start, ngx_stop; the same variables: prefix, tree, jitdir, user_line, master).
# shellcheck source=spec/nginx/serve.sh
source "$here/serve.sh"
# shellcheck disable=SC2317  # (called by the trap)
stop_nginx() { ngx_stop; }
# The PostgreSQL server's processes, running again (outage.lua stops them; whatever became of it).
# shellcheck disable=SC2317  # (called by the trap)
thaw() {
  [ "$backend" = pg ] && [ -f "${PAIRSTORE_TEST_PGDIR:-}/data/postmaster.pid" ] || return 0
  local pm
  pm=$(head -n 1 "$PAIRSTORE_TEST_PGDIR/data/postmaster.pid" 2>/dev/null) || return 0
  [ -n "$pm" ] || return 0
  # shellcheck disable=SC2046  # (the children, one word each)
  kill -CONT "$pm" $(cat "/proc/$pm/task/$pm/children" 2>/dev/null) 2>/dev/null || true
}
# The failover's clusters, stopped and removed.
# shellcheck disable=SC2317  # (called by the trap)
stop_pair() {
  local d
  for d in $ha_s $ha_p; do bash "$tree/spec/support/pgcluster.sh" stop "$d" >/dev/null 2>&1; done
  ha_p='' ha_s=''
}
# shellcheck disable=SC2317  # (called by the trap)
cleanup() {
  if [ -n "$driver" ]; then kill -TERM "$driver" 2>/dev/null; wait "$driver" 2>/dev/null; fi
  if [ -n "$tailer" ]; then kill -TERM "$tailer" 2>/dev/null; wait "$tailer" 2>/dev/null; fi
  if [ -n "$blackhole" ]; then kill -TERM "$blackhole" 2>/dev/null; wait "$blackhole" 2>/dev/null; fi
  thaw
  stop_nginx
  stop_pair
  # NGX_KEEP_LOGS=DIR: nginx's logs and the scripts' outputs copied there first
  [ -n "${NGX_KEEP_LOGS:-}" ] && mkdir -p "$NGX_KEEP_LOGS" && cp "$prefix"/*.log "$prefix"/*.out "$NGX_KEEP_LOGS"/ 2>/dev/null
  rm -rf "$prefix"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

run_as=()
# shellcheck disable=SC2034  # (serve.sh's ngx_start reads it)
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

# start_nginx TARGET WORKERS [NOTE]: nginx from the template on free loopback ports (tried
# again on another port if the one chosen was taken meanwhile); sets port, oport, master.
start_nginx() {
  if ! target=$1 NGX_WORKERS=$2 ngx_start > "$prefix/start.out"; then
    echo "run.sh: nginx did not start:"
    cat "$prefix/start.out"
    return 1
  fi
  echo "nginx $(nginx -v 2>&1 | sed 's/.*\///') on 127.0.0.1:$port, master $master, workers: $(cat "/proc/$master/task/$master/children"), backend $backend${run_as:+ (workers as nobody)}${3:+, $3}"
}

# run_checks NAME TARGET USER... -- COMMAND...: runs a check script against the running nginx
# (in the background: an interruption runs the traps at once, not after it), its output
# shown as it comes, its closing "N passed, N failed" line counted into the totals (and shown
# as "NAME: N passed, N failed"); no closing line: one failure.
total_p=0 total_f=0
run_checks() {
  local name=$1 tgt=$2 rc line
  shift 2
  local who=()
  while [ "$1" != -- ]; do who+=("$1"); shift; done
  shift
  local out=$prefix/$name.out
  : > "$out"
  "${who[@]}" env NGX_PORT="$port" NGX_OPERATOR_PORT="$oport" NGX_PREFIX="$prefix" NGX_WORK="$prefix/work" NGX_MASTER_PID="$master" \
    BACKEND="$backend" PAIRSTORE_TARGET="$tgt" PAIRSTORE_PAYLOAD_DIR="$prefix/payloads" TREE="$tree" \
    LUA_PATH="$tree/lua/?.lua;$tree/lua/?/init.lua;;" LUA_CPATH="$cdir54/?.so;;" \
    timeout 300 "$@" > "$out" 2>&1 &
  driver=$!
  tail -n +1 -s 0.2 -f --pid="$driver" "$out" | sed -u -E "s/^([0-9]+ passed, [0-9]+ failed)\$/$name: \\1/" &
  tailer=$!
  wait "$driver"
  rc=$?
  driver=
  wait "$tailer"
  tailer=
  line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out" | tail -n 1)
  if [ -n "$line" ]; then
    total_p=$((total_p + ${line%% *}))
    line=${line#* passed, }
    total_f=$((total_f + ${line%% *}))
  else
    total_f=$((total_f + 1))
  fi
  if [ $rc -ne 0 ]; then
    echo "--- error.log (last 30 lines)"
    tail -n 30 "$prefix/error.log"
    [ $rc -eq 124 ] && echo "$name timed out"
  fi
  return 0
}

if ! start_nginx "$target" "${NGX_WORKERS:-4}"; then echo "0 passed, 1 failed"; exit 1; fi

# NGX_DRIVER: another driver (a bash script) run the same way against the same server
# (spec/browser/run.sh: the phone page in Chromium); its own closing line is the run's.
if [ -n "${NGX_DRIVER:-}" ]; then
  run_checks driver "$target" "${run_as[@]}" -- bash "$NGX_DRIVER"
  echo "$total_p passed, $total_f failed"
  [ "$total_f" -eq 0 ]
  exit
fi

run_checks driver "$target" "${run_as[@]}" -- lua5.4 "$here/driver.lua"

# A file store in a directory the workers' user may not write: nginx starts; each worker
# says so in the error log when it starts, and requests answer 500 (spec/nginx/unwritable.sh).
if [ "$backend" = file ]; then
  stop_nginx
  mkdir "$prefix/ro" && chmod 0555 "$prefix/ro"
  if start_nginx "$prefix/ro/pair-sessions.json" 2 "a store directory the workers may not write"; then
    run_checks unwritable "$prefix/ro/pair-sessions.json" -- bash "$here/unwritable.sh"
  else total_f=$((total_f + 1)); fi
fi

# PostgreSQL: the database frozen, black-holed, requests aborted, long polls
# (spec/nginx/outage.lua), as the caller (it signals the server's processes and asks
# pg_stat_activity through pgcluster.sh): on the same nginx (4 workers), then on nginx with 1
# worker, then with 4 and 1 workers against a listener that never answers.
# (NGX_OUTAGE=0: not run; NGX_OUTAGE=a list of phases: only those.)
if [ "$backend" = pg ] && [ "${NGX_OUTAGE:-1}" != 0 ]; then
  want() { [ "${NGX_OUTAGE:-1}" = 1 ] || [[ ",$NGX_OUTAGE," == *",$1,"* ]]; }
  for ph in aborts longpoll frozen; do want $ph && phases="${phases:+$phases,}$ph"; done
  [ -n "${phases:-}" ] && run_checks outage "$target" -- env OUTAGE="$phases" lua5.4 "$here/outage.lua"
  if want frozen1; then
    stop_nginx
    if start_nginx "$target" 1 "1 worker"; then
      run_checks outage-1 "$target" -- env OUTAGE=frozen-cold lua5.4 "$here/outage.lua"
    else total_f=$((total_f + 1)); fi
  fi
  # the black hole: a loopback port that accepts and never answers (forkutil), held by a
  # process of its own until the end
  if want blackhole4 || want blackhole1; then
    LUA_CPATH="${cdir54}-test/?.so;;" lua5.4 -e 'local f = require "test.forkutil"
      local fd, port = assert(f.listen_blackhole(0))
      io.write(port, "\n"); io.stdout:flush(); f.pause()' > "$prefix/blackhole.port" &
    blackhole=$!
    for _ in $(seq 50); do [ -s "$prefix/blackhole.port" ] && break; sleep 0.1; done
    bh=$(cat "$prefix/blackhole.port")
  fi
  for w in 4 1; do
    want "blackhole$w" || continue
    stop_nginx
    [ -n "${bh:-}" ] || { echo "run.sh: no black hole"; total_f=$((total_f + 1)); continue; }
    bht="postgresql://pairstore@127.0.0.1:$bh/pairstore"
    if start_nginx "$bht" "$w" "$w worker(s), the database black-holed (127.0.0.1:$bh)"; then
      run_checks "blackhole-$w" "$bht" -- env OUTAGE=blackhole NGX_BLACKHOLE_PORT="$bh" lua5.4 "$here/outage.lua"
    else total_f=$((total_f + 1)); fi
  done
  # A failover (spec/nginx/failover.lua): a primary and its synchronous standby of their own,
  # nginx with 4 workers on host=PRIMARY,STANDBY&target_session_attrs=read-write.
  if want failover; then
    stop_nginx
    ha_p=$(mktemp -d /tmp/pairstore-ngx-ha-p.XXXXXX)
    ha_s=$(mktemp -d /tmp/pairstore-ngx-ha-s.XXXXXX)
    if hat=$(bash "$tree/spec/support/pgcluster.sh" pair "$ha_p" "$ha_s"); then
      # (the workers' user reaches the sockets: enter only, as for the suite's cluster)
      [ ${#run_as[@]} -gt 0 ] && chmod 0711 "$ha_p" "$ha_s"
      if start_nginx "$hat" 4 "4 workers, a primary and its synchronous standby (multi-host target)"; then
        run_checks failover "$hat" -- env NGX_HA_PRIMARY="$ha_p" NGX_HA_STANDBY="$ha_s" lua5.4 "$here/failover.lua"
      else total_f=$((total_f + 1)); fi
      stop_nginx
    else
      echo "run.sh: no primary with a synchronous standby (pgcluster.sh pair)"
      total_f=$((total_f + 1))
    fi
    stop_pair
  fi
fi
echo "$total_p passed, $total_f failed"
[ "$total_f" -eq 0 ]
