# shellcheck shell=bash
# spec/nginx/serve.sh: sourced (bash) by spec/nginx/run.sh (make test-nginx, test-metrics,
# test-browser) and spec/bench/nginx.sh (make bench-nginx): the nginx example
# (examples/nginx/nginx.conf) rendered into a temporary prefix and started on free loopback
# ports; stopped again.
#
#   ngx_free_port                 a free loopback TCP port (printed)
#   ngx_start                     render and start; uses prefix, tree, jitdir, target,
#                                 user_line (and NGX_WORKERS, NGX_RATE); sets port, oport,
#                                 master; 1 (with what nginx said) when it did not start
#   ngx_stop                      stop master and its workers (QUIT, TERM, then KILL by pid)
#
# nginx gets the caller's environment: PAIRSTORE_TARGET (target), PAIRSTORE_PAYLOAD_DIR
# ($prefix/payloads) and PAIRSTORE_BASE_URL are set here; anything else the template passes
# on with `env NAME;` (PAIRSTORE_PG_THREAD_POOL) is taken from the caller's exports.

ngx_free_port() {
  local p
  for _ in $(seq 100); do
    p=$((20000 + RANDOM % 40000))
    [ -z "$(ss -Htln "sport = :$p" 2>/dev/null)" ] && { echo "$p"; return 0; }
  done
  return 1
}

# shellcheck disable=SC2154  # (prefix, tree, jitdir, target, user_line: the caller's)
ngx_start() {
  local started=
  for _ in 1 2 3; do
    port=$(ngx_free_port) || break
    oport=$(ngx_free_port) || break
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
    ngx_stop
  done
  if [ -z "$started" ]; then
    cat "$prefix/start.err" "$prefix/error.log" 2>/dev/null | tail -n 20
    return 1
  fi
}

ngx_stop() {
  [ -n "${master:-}" ] || return 0
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
