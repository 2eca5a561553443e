#!/usr/bin/env bash
# spec/bench/nginx.sh: `make bench-nginx` (issue 18, "Benchmark"; also run by `make bench`):
# the nginx example (examples/nginx, started as spec/nginx/run.sh starts it: spec/nginx/serve.sh)
# on a PostgreSQL store (the private cluster of spec/support/with-pg.sh: run this under it),
# over real HTTP with ab (apache2-utils): status polls (GET /pair/status), code checks (GET
# /pair/start with the right code: the row locked and written) and creates (POST /pair/new)
# per second and their latency, with 1 and 4 workers, on the non-blocking path (the round
# trips on nginx's thread pool) and on the blocking path (PAIRSTORE_PG_THREAD_POOL=off: on the
# worker itself); the static page's latency while pairing traffic runs and while the database
# is frozen (SIGSTOP of every server process; SIGCONT always, from a trap).
#
# Method. Each round starts nginx afresh for each of the 4 configurations (path x workers),
# in turn, so that the machine's drift lands on all alike; the figures are the medians of the
# rounds. In each configuration, after a warm-up (every worker's connections made):
#   one client:   1 ab -c 1 for T s per operation: the cost of one HTTP request, no queueing
#                 (what the issue's "per HTTP request" target is about);
#   8 clients:    8 ab -c 1 at once for T s, each on a session of its own: requests/s (the sum)
#                 and the latency each request saw (queueing included);
#   static:       1 ab -c 1 on the phone page (GET /pair, a static file) during the 8-client
#                 status polls and code checks.
# Creates run -n instead of -t (the store's max_sessions, 1 000, bounds what may be live):
# the sessions are deleted before each create run. Latency: mean from ab's "Time per
# request", p50 and p99 from its percentile table (-e), pooled over the ab processes.
# Frozen: the whole cluster SIGSTOPped while pending pairing requests (2 status polls per
# worker and 1 create) wait, the static page probed with curl for P s; then SIGCONT and the
# next status poll must answer 200.
#
# BENCH_QUICK=1: 1 round of 1 s per figure (CI); otherwise 3 rounds of 3 s. Needs: nginx,
# libnginx-mod-http-lua, lua-resty-core, ab, the LuaJIT build of the core (make LUA=luajit)
# and the Lua 5.4 one (the report). The workers run as nobody when run as root. No figure
# fails the run; a configuration whose requests fail (non-2xx, errors) does (exit 1).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tree=$(cd "$here/../.." && pwd)
QUICK=${BENCH_QUICK:-0}
# Alone (make bench-nginx), the date of the run and the commit first (make bench prints them).
if [ -z "${BENCH_HEADER_DONE:-}" ]; then
  commit=$(git -C "$tree" rev-parse --short HEAD 2>/dev/null) || commit=unknown
  echo "make bench-nginx: run of $(date -u '+%Y-%m-%d %H:%M:%SZ'), commit ${commit:-unknown}"
fi

[ -n "${PAIRSTORE_TEST_PG:-}" ] && [ -n "${PAIRSTORE_TEST_PGDIR:-}" ] ||
  { echo "bench nginx: run it under spec/support/with-pg.sh" >&2; exit 2; }
for c in nginx ab curl ss; do
  command -v "$c" >/dev/null 2>&1 || {
    echo "bench nginx: $c not found; install: apt-get install -y nginx libnginx-mod-http-lua lua-resty-core apache2-utils curl iproute2" >&2
    exit 1
  }
done
jitdir=$tree/build/luajit
[ -f "$jitdir/pairstore/core.so" ] || { echo "bench nginx: $jitdir/pairstore/core.so missing (make LUA=luajit)" >&2; exit 1; }

if [ "$QUICK" = 1 ]; then ROUNDS=1 T=1 NCREATE=200 NCREATE1=100 PROBE_S=3
else ROUNDS=3 T=3 NCREATE=400 NCREATE1=200 PROBE_S=6; fi
CLIENTS=8
PATHS=(nonblocking blocking)
WORKERS=(1 4)

# shellcheck source=spec/nginx/serve.sh
source "$tree/spec/nginx/serve.sh"

prefix=$(mktemp -d /tmp/pairstore-bench-nginx.XXXXXX)
res=$prefix/results
master=
frozen=()
# shellcheck disable=SC2317  # (called by the trap)
cleanup() {
  # the database is never left frozen
  [ ${#frozen[@]} -gt 0 ] && kill -CONT "${frozen[@]}" 2>/dev/null
  frozen=()
  # ab and curl still running (an interrupted run): this shell's own jobs, by pid
  local j
  for j in $(jobs -p); do kill -KILL "$j" 2>/dev/null; done
  ngx_stop
  rm -rf "$prefix"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$prefix/tmp" "$prefix/store" "$prefix/payloads" "$res"
chmod 0755 "$prefix"
user_line="# (not root: the workers run as the caller)"
if [ "$(id -u)" -eq 0 ]; then
  user_line="user nobody nogroup;"
  chown nobody:nogroup "$prefix/store" "$prefix/payloads"
  chmod 0711 "$PAIRSTORE_TEST_PGDIR" # (the socket's directory: enter only)
  if ! runuser -u nobody -- test -r "$tree/lua/pairstore/init.lua" 2>/dev/null; then
    mkdir "$prefix/tree"
    tar -C "$tree" --exclude=./.git --exclude='./build-*' -cf - . | tar -C "$prefix/tree" -xf -
    chmod -R a+rX "$prefix/tree"
    tree=$prefix/tree
    jitdir=$tree/build/luajit
  fi
fi
target=$PAIRSTORE_TEST_PG
PGCLUSTER=(bash "$tree/spec/support/pgcluster.sh")

psql_() { "${PGCLUSTER[@]}" psql "$PAIRSTORE_TEST_PGDIR" -c "$1" >/dev/null; }
# Every session deleted (the store's max_sessions bounds the live ones); none before the schema.
empty_store() {
  psql_ "DO \$\$ BEGIN IF to_regclass('pairstore_sessions') IS NOT NULL THEN DELETE FROM pairstore_sessions; END IF; END \$\$"
}

log() { echo "bench nginx: $*" >&2; }

# A new session through the operator's endpoint: prints "sid code".
new_session() {
  curl -s --max-time 10 -X POST "http://127.0.0.1:$oport/pair/new" |
    lua5.4 -e 'local t = io.read("a"); print((t:match([["sid":"(%x+)"]])), (t:match([["code":"(%d+)"]])))'
}

# start PATH WORKERS: nginx with that configuration (sets port, oport, master).
start() {
  local thread_pool=
  [ "$1" = blocking ] && thread_pool=off
  ngx_stop
  : > "$prefix/error.log"
  PAIRSTORE_PG_THREAD_POOL=$thread_pool NGX_WORKERS=$2 ngx_start ||
    { log "nginx did not start ($1, $2 workers)"; exit 1; }
}

# ab_run OUT URL ARGS...: one ab, its report in OUT.txt, its percentiles in OUT.csv.
ab_run() {
  local out=$1 url=$2; shift 2
  ab -q -S -l -s 30 -e "$out.csv" "$@" "$url" > "$out.txt" 2>&1
}

# several NAME N URLS... : N ab -c 1 at once (URL i to the i-th), -t T (or the extra ab args
# in AB_ARGS); waits for them all.
several() {
  local name=$1 n=$2; shift 2
  local urls=("$@") pids=() i
  for ((i = 0; i < n; i++)); do
    # shellcheck disable=SC2086
    ab_run "$name.$i" "${urls[$((i % ${#urls[@]}))]}" -c 1 ${AB_ARGS:--t $T -n 200000} &
    pids+=($!)
  done
  wait "${pids[@]}"
}

# One configuration, one round: results under $res/ROUND/PATH-WORKERS/.
measure() {
  local round=$1 path=$2 workers=$3
  local d=$res/$round/$path-$workers
  mkdir -p "$d"
  start "$path" "$workers"
  empty_store
  local status_urls=() start_urls=() sc
  for ((i = 0; i < CLIENTS; i++)); do
    read -r sid code < <(new_session)
    [ -n "$sid" ] || { log "no session from /pair/new ($path, $workers workers): $(tail -n 5 "$prefix/error.log")"; exit 1; }
    status_urls+=("http://127.0.0.1:$port/pair/status?sid=$sid")
    read -r sid2 code2 < <(new_session)
    start_urls+=("http://127.0.0.1:$port/pair/start?sid=$sid2&c=$code2")
  done
  # warm-up: every worker makes its connections (and LuaJIT compiles its traces)
  AB_ARGS="-n 60" several "$d/warm" "$CLIENTS" "${status_urls[@]}"
  AB_ARGS="-n 20" several "$d/warm2" "$CLIENTS" "${start_urls[@]}"
  # one client
  ab_run "$d/status1" "${status_urls[0]}" -c 1 -t "$T" -n 200000
  ab_run "$d/start1" "${start_urls[0]}" -c 1 -t "$T" -n 200000
  # 8 clients, the static page beside them
  ab_run "$d/static-status" "http://127.0.0.1:$port/pair" -c 1 -t "$T" -n 200000 &
  sc=$!
  several "$d/status8" "$CLIENTS" "${status_urls[@]}"
  wait "$sc"
  ab_run "$d/static-start" "http://127.0.0.1:$port/pair" -c 1 -t "$T" -n 200000 &
  sc=$!
  several "$d/start8" "$CLIENTS" "${start_urls[@]}"
  wait "$sc"
  # creates (the operator's server), the store emptied first (max_sessions)
  empty_store
  ab_run "$d/create1" "http://127.0.0.1:$oport/pair/new" -c 1 -m POST -n "$NCREATE1"
  empty_store
  AB_ARGS="-m POST -n $((NCREATE / CLIENTS))" several "$d/create8" "$CLIENTS" "http://127.0.0.1:$oport/pair/new"
  grep -c '\[error\]' "$prefix/error.log" > "$d/errors" || true
}

# The database frozen with pairing requests pending: the static page's latency meanwhile.
freeze() {
  local path=$1 workers=$2
  local d=$res/frozen/$path-$workers
  mkdir -p "$d"
  start "$path" "$workers"
  empty_store
  read -r sid _ < <(new_session)
  local url="http://127.0.0.1:$port/pair/status?sid=$sid"
  AB_ARGS="-n 40" several "$d/warm" "$CLIENTS" "$url" # (connections made in every worker)
  local pm
  pm=$("${PGCLUSTER[@]}" pid "$PAIRSTORE_TEST_PGDIR")
  # shellcheck disable=SC2207
  frozen=("$pm" $(pgrep -P "$pm"))
  kill -STOP "${frozen[@]}"
  local t0 pend=() i
  t0=$(date +%s%N)
  for ((i = 0; i < 2 * workers; i++)); do
    curl -s -o /dev/null --max-time 30 -w '%{http_code} %{time_total}\n' "$url" > "$d/pending.$i" &
    pend+=($!)
  done
  curl -s -o /dev/null --max-time 30 -X POST -w '%{http_code} %{time_total}\n' \
    "http://127.0.0.1:$oport/pair/new" > "$d/pending.create" &
  pend+=($!)
  sleep 0.3
  : > "$d/static"
  while (( ($(date +%s%N) - t0) / 1000000 < PROBE_S * 1000 )); do
    curl -s -o /dev/null --max-time 30 -w '%{http_code} %{time_total}\n' "http://127.0.0.1:$port/pair" >> "$d/static"
    sleep 0.05
  done
  kill -CONT "${frozen[@]}"
  frozen=()
  wait "${pend[@]}"
  echo $(( ($(date +%s%N) - t0) / 1000000 )) > "$d/frozen_ms"
  # after SIGCONT: the next requests succeed
  local ok=0
  for ((i = 0; i < 5; i++)); do
    c=$(curl -s -o /dev/null --max-time 10 -w '%{http_code}' "$url")
    [ "$c" = 200 ] && ok=$((ok + 1))
    sleep 0.1
  done
  echo "$ok" > "$d/after_ok"
}

t_start=$(date +%s)
log "$ROUNDS round(s), $T s per figure, $CLIENTS clients; nginx $(nginx -v 2>&1 | sed 's/.*\///'); $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for ((r = 1; r <= ROUNDS; r++)); do
  for w in "${WORKERS[@]}"; do
    for p in "${PATHS[@]}"; do
      log "round $r: $p, $w worker(s)"
      measure "$r" "$p" "$w"
    done
  done
done
for w in "${WORKERS[@]}"; do
  for p in "${PATHS[@]}"; do
    log "frozen database: $p, $w worker(s)"
    freeze "$p" "$w"
  done
done
ngx_stop
echo $(($(date +%s) - t_start)) > "$res/elapsed"
cut -d' ' -f1-3 /proc/loadavg > "$res/loadavg"

BENCH_QUICK=$QUICK ROUNDS=$ROUNDS T=$T CLIENTS=$CLIENTS PROBE_S=$PROBE_S \
  lua5.4 "$here/nginx_report.lua" "$res"
