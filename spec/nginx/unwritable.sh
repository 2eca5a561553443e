#!/usr/bin/env bash
# spec/nginx/unwritable.sh (run by spec/nginx/run.sh on the file backend): nginx started on a
# file store whose directory the workers' user may not write. init_by_lua (the master, as
# root) cannot tell; each worker can: the example's init_worker logs one alert naming the
# store, the directory and the user when the workers start, and a request that writes then
# answers 500 (not 503: waiting will not help) with the cause in the error log.
set -uo pipefail
p=0 f=0
check() { # check NAME COMMAND...
  local name=$1; shift
  if "$@"; then echo "ok   $name"; p=$((p + 1)); else echo "FAIL $name"; f=$((f + 1)); fi
}
log=$NGX_PREFIX/error.log
alert="\\[alert\\].*pairing_gateway: the store $PAIRSTORE_TARGET cannot be written by the workers' user"
for _ in $(seq 50); do grep -q "$alert" "$log" && break; sleep 0.1; done
check "one alert at start names the store, the directory and the user" \
  test "$(grep -c "$alert.*(uid [0-9]*): ${PAIRSTORE_TARGET%/*}: Permission denied" "$log")" -eq 1
code=$(curl -s -o "$NGX_WORK/new.out" -w '%{http_code}' --max-time 10 -X POST "http://127.0.0.1:$NGX_OPERATOR_PORT/pair/new")
check "a request that writes answers 500 (got $code)" test "$code" = 500
check "its cause is in the error log" grep -q "pair-sessions.json.*Permission denied" "$log"
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "http://127.0.0.1:$NGX_PORT/pair")
check "the page is served meanwhile (got $code)" test "$code" = 200
echo "$p passed, $f failed"
[ "$f" -eq 0 ]
