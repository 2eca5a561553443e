#!/usr/bin/env bash
# spec/metrics/run.sh [file|pg]: the nginx example's /metrics (issue 21) under a real
# Prometheus server, on the file store and on PostgreSQL (spec/support/with-pg.sh).
# spec/nginx/run.sh starts nginx as `make test-nginx` does (a temp prefix, free loopback
# ports, 4 workers, as nobody when root) and runs spec/metrics/driver.sh in place of its own
# driver; driver.sh starts Prometheus (loopback, a temp data dir in the prefix, stopped and
# removed at the end, also on failure) and spec/metrics/driver.lua runs the checks.
# `nginx -s reload` is the master's user's to send: the driver (nobody) asks for it through
# a request directory that a helper of this script (the caller's user) watches; the helper
# signals only a process whose command line says it is an nginx master. Ends with
# "N passed, N failed"; exits non-zero on any failure.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tree=$(cd "$here/../.." && pwd)
fail() { echo "test-metrics: $*"; echo "0 passed, 1 failed"; exit 1; }

command -v prometheus >/dev/null 2>&1 || fail "prometheus not found (apt-get install prometheus)"
command -v promtool >/dev/null 2>&1 || fail "promtool not found (apt-get install prometheus)"

ctl=$(mktemp -d /tmp/pairstore-metrics-ctl.XXXXXX)
out=$(mktemp /tmp/pairstore-metrics-out.XXXXXX)
reloader=
# shellcheck disable=SC2317  # (called by the trap)
cleanup() {
  if [ -n "$reloader" ]; then kill "$reloader" 2>/dev/null; wait "$reloader" 2>/dev/null; fi
  rm -rf "$ctl" "$out"
}
trap cleanup EXIT
trap 'echo "test-metrics: interrupted"; exit 130' INT TERM

# Requests go to $ctl/req (the driver's to write), answers to $ctl/ans (ours; readable).
mkdir -m 0755 "$ctl/req" "$ctl/ans"
chmod 0755 "$ctl"
[ "$(id -u)" -eq 0 ] && chown nobody:nogroup "$ctl/req"
(
  while :; do
    for f in "$ctl"/req/reload-*; do
      [ -f "$f" ] || continue
      name=${f##*/}
      pid=$(head -c 16 "$f" | tr -cd 0-9)
      rm -f "$f"
      answer=refused
      if [ -n "$pid" ] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q '^nginx: master process'; then
        kill -HUP "$pid" && answer=sent
      fi
      echo "$answer" > "$ctl/ans/$name.tmp" && mv "$ctl/ans/$name.tmp" "$ctl/ans/$name"
    done
    sleep 0.1
  done
) &
reloader=$!

backends=${1:-file pg}
runs=0
for b in $backends; do
  case $b in
  file) NGX_DRIVER=$here/driver.sh METRICS_CTL=$ctl bash "$tree/spec/nginx/run.sh" file 2>&1 | tee -a "$out" ;;
  pg) NGX_DRIVER=$here/driver.sh METRICS_CTL=$ctl bash "$tree/spec/support/with-pg.sh" bash "$tree/spec/nginx/run.sh" pg 2>&1 | tee -a "$out" ;;
  *) fail "usage: run.sh [file|pg]" ;;
  esac
  runs=$((runs + 1))
done
p=0 f=0
while read -r a _ c _; do p=$((p + a)); f=$((f + c)); done < <(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out")
[ "$(grep -cE '^[0-9]+ passed, [0-9]+ failed$' "$out")" -eq "$runs" ] || f=$((f + 1)) # a backend that did not finish
echo "test-metrics: $backends"
echo "$p passed, $f failed"
[ "$f" -eq 0 ]
