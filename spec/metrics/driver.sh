#!/usr/bin/env bash
# spec/metrics/driver.sh: run by spec/nginx/run.sh (NGX_DRIVER) against the nginx example it
# started: starts a Prometheus server on loopback that scrapes the example's /metrics every
# second (its data in a temp directory under NGX_WORK), runs driver.lua, and stops and
# removes Prometheus afterwards, also on failure or interruption.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d "$NGX_WORK/prometheus.XXXXXX")
prom= drv=
# shellcheck disable=SC2317  # (called by the trap)
cleanup() {
  if [ -n "$drv" ]; then kill -TERM "$drv" 2>/dev/null; wait "$drv" 2>/dev/null; fi
  if [ -n "$prom" ]; then
    kill -TERM "$prom" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$prom" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$prom" 2>/dev/null
    wait "$prom" 2>/dev/null
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

cat > "$work/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: pairstore
    static_configs:
      - targets: ["127.0.0.1:$NGX_OPERATOR_PORT"]
YML

ready=
for _ in 1 2 3; do
  port=$((20000 + RANDOM % 40000))
  [ -z "$(ss -Htln "sport = :$port" 2>/dev/null)" ] || continue
  prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/data" \
    --web.listen-address="127.0.0.1:$port" --log.level=warn > "$work/prometheus.log" 2>&1 &
  prom=$!
  for _ in $(seq 150); do
    if curl -sf --max-time 2 -o /dev/null "http://127.0.0.1:$port/-/ready"; then ready=1; break; fi
    kill -0 "$prom" 2>/dev/null || break
    sleep 0.2
  done
  [ -n "$ready" ] && break
  kill -KILL "$prom" 2>/dev/null; wait "$prom" 2>/dev/null; prom=
done
if [ -z "$ready" ]; then
  echo "driver.sh: Prometheus did not start:"; tail -n 20 "$work/prometheus.log"
  echo "0 passed, 1 failed"
  exit 1
fi
echo "Prometheus $(prometheus --version 2>&1 | head -n 1 | awk '{print $3}') on 127.0.0.1:$port, pid $prom, data in $work"

PROM_URL="http://127.0.0.1:$port" timeout 280 lua5.4 "$here/driver.lua" &
drv=$!
wait "$drv"
rc=$?
drv=
[ $rc -eq 124 ] && echo "driver.lua timed out" && echo "0 passed, 1 failed"
[ $rc -ne 0 ] && { echo "--- prometheus.log (last 10 lines)"; tail -n 10 "$work/prometheus.log"; }
exit $rc
