#!/usr/bin/env bash
# A pgbouncer (Debian's, 1.18) in front of the suite's private cluster, for the tests.
#
#   pgbouncer.sh start DIR PGDIR [transaction|session] [POOL]   start it, print its target
#   pgbouncer.sh stop DIR                                        stop it and remove DIR
#
# PGDIR is the cluster's directory (spec/support/pgcluster.sh: its unix socket is there).
# pgbouncer listens on a unix socket in DIR only (no TCP), authentication trust (the user
# `pairstore` of the cluster), one database `pairstore` with a pool of POOL (default 3)
# server connections, in the pool mode given (default transaction). The target printed (and
# written to DIR/target) is a libpq URI: postgresql:///pairstore?host=DIR&port=6432&user=pairstore
# pgbouncer refuses to run as root: as root, it runs as the `postgres` user (who owns the
# cluster), and DIR belongs to it.
set -euo pipefail

cmd=${1:?usage: pgbouncer.sh start|stop DIR ...}
dir=${2:?usage: pgbouncer.sh $cmd DIR}

as_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case $cmd in
start)
  pgdir=${3:?usage: pgbouncer.sh start DIR PGDIR [mode] [pool]}
  mode=${4:-transaction}
  pool=${5:-3}
  case $mode in transaction|session) ;; *) echo "pgbouncer.sh: mode $mode (transaction or session)" >&2; exit 2 ;; esac
  command -v pgbouncer >/dev/null 2>&1 || { echo "pgbouncer.sh: pgbouncer not found (apt-get install pgbouncer)" >&2; exit 1; }
  mkdir -p "$dir"
  chmod 0755 "$dir"
  echo '"pairstore" ""' > "$dir/userlist.txt"
  cat > "$dir/pgbouncer.ini" <<INI
[databases]
pairstore = host=$pgdir dbname=pairstore user=pairstore pool_size=$pool

[pgbouncer]
listen_addr =
listen_port = 6432
unix_socket_dir = $dir
unix_socket_mode = 0777
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = $mode
default_pool_size = $pool
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 200
max_db_connections = $pool
logfile = $dir/log
pidfile = $dir/pid
server_login_retry = 1
ignore_startup_parameters = extra_float_digits,options
INI
  [ "$(id -u)" -eq 0 ] && chown -R postgres:postgres "$dir"
  as_owner pgbouncer -d -q "$dir/pgbouncer.ini" || { cat "$dir/log" >&2 2>/dev/null; exit 1; }
  for _ in $(seq 100); do [ -S "$dir/.s.PGSQL.6432" ] && break; sleep 0.05; done
  [ -S "$dir/.s.PGSQL.6432" ] || { echo "pgbouncer.sh: no socket in $dir" >&2; cat "$dir/log" >&2 2>/dev/null; exit 1; }
  echo "postgresql:///pairstore?host=$dir&port=6432&user=pairstore" | tee "$dir/target"
  ;;
stop)
  pid=$(cat "$dir/pid" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true # (1.18: SIGTERM is the immediate shutdown; SIGINT waits for clients)
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
  ;;
*)
  echo "pgbouncer.sh: unknown command $cmd" >&2; exit 2
  ;;
esac
