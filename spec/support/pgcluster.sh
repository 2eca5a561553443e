#!/usr/bin/env bash
# A private PostgreSQL cluster for the tests, in a directory of its own, reachable only on a
# unix socket in that directory (no TCP port, nothing shared with the machine's clusters).
#
#   pgcluster.sh start DIR [standby-of PRIMARY_DIR]   initdb (or pg_basebackup), start, print the target
#   pgcluster.sh pair DIR STANDBY_DIR                 a primary in DIR and a synchronous streaming
#                                                     standby in STANDBY_DIR (named in the primary's
#                                                     synchronous_standby_names, sync_state checked);
#                                                     prints the multi-host target (read-write)
#   pgcluster.sh stop DIR                             stop (fast) and remove DIR
#   pgcluster.sh ctl DIR ARGS...                      pg_ctl ARGS as the cluster's user (stop -m immediate, start, promote)
#   pgcluster.sh psql DIR ARGS...                     psql as the superuser on the cluster's socket
#   pgcluster.sh pid DIR                              the postmaster's pid
#
# The server refuses to run as root: as root, the cluster belongs to the `postgres` user the
# Debian package creates (DIR is given to it); otherwise to the caller. The superuser role is
# `pairstore`, authentication is `trust` on the socket only, the database is `pairstore`;
# except for members of the role `pairstore_password`, which log in with a password (scram).
# The target printed by start (and written to DIR/target) is a libpq URI:
#   postgresql:///pairstore?host=DIR&user=pairstore
set -euo pipefail

PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
cmd=${1:?usage: pgcluster.sh start|pair|stop|ctl|psql|pid DIR}
dir=${2:?usage: pgcluster.sh $cmd DIR}
shift 2

# (from /: the caller's directory may be one the owner cannot enter, such as a clone in /root)
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

case $cmd in
start)
  [ -x "$PGBIN/initdb" ] || { echo "pgcluster: $PGBIN/initdb not found (apt-get install postgresql-15)" >&2; exit 1; }
  mkdir -p "$dir"
  chmod 0700 "$dir"
  [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$dir"
  if [ "${1:-}" = standby-of ]; then
    primary=${2:?standby-of needs the primary directory}
    as_owner "$PGBIN/pg_basebackup" -h "$primary" -U pairstore -D "$dir/data" -X stream -R -c fast >/dev/null
    # its own socket; the primary's streaming connection names the standby
    sed -i "/^unix_socket_directories/d; /^cluster_name/d" "$dir/data/postgresql.conf"
    name=standby
  else
    as_owner "$PGBIN/initdb" -D "$dir/data" -U pairstore --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
    name=primary
    printf '%s\n' "wal_level = replica" "max_wal_senders = 4" "synchronous_commit = on" \
      >> "$dir/data/postgresql.conf"
    echo "local replication all trust" >> "$dir/data/pg_hba.conf"
    sed -i '1i local all +pairstore_password scram-sha-256' "$dir/data/pg_hba.conf"
  fi
  printf '%s\n' "listen_addresses = ''" "unix_socket_directories = '$dir'" "cluster_name = '$name'" \
    "max_connections = 100" "shared_buffers = 64MB" "logging_collector = off" >> "$dir/data/postgresql.conf"
  as_owner "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 start >/dev/null ||
    { cat "$dir/log" >&2; exit 1; }
  if [ "$name" = primary ]; then
    as_owner "$PGBIN/psql" -h "$dir" -U pairstore -d postgres -qAt -c "CREATE DATABASE pairstore" \
      -c "CREATE ROLE pairstore_password NOLOGIN" >/dev/null
  fi
  echo "postgresql:///pairstore?host=$dir&user=pairstore" | tee "$dir/target"
  ;;
pair)
  standby=${1:?usage: pgcluster.sh pair DIR STANDBY_DIR}
  bash "$0" start "$dir" >/dev/null || { echo "pgcluster: the primary did not start" >&2; exit 1; }
  bash "$0" start "$standby" standby-of "$dir" >/dev/null || { echo "pgcluster: the standby did not start" >&2; exit 1; }
  # every commit waits for the standby (ALTER SYSTEM cannot share a psql call with the reload)
  if ! bash "$0" psql "$dir" -c "ALTER SYSTEM SET synchronous_standby_names = 'standby'" >/dev/null ||
    ! bash "$0" psql "$dir" -c "SELECT pg_reload_conf()" >/dev/null; then
    echo "pgcluster: could not set synchronous_standby_names" >&2; exit 1
  fi
  state=
  for _ in $(seq 1 100); do
    state=$(bash "$0" psql "$dir" -c \
      "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby'" 2>/dev/null || true)
    [ "$state" = sync ] && break
    sleep 0.1
  done
  [ "$state" = sync ] || { echo "pgcluster: the standby is not synchronous (sync_state '$state')" >&2; exit 1; }
  echo "postgresql:///pairstore?host=$dir,$standby&user=pairstore&target_session_attrs=read-write"
  ;;
stop)
  if [ -d "$dir/data" ]; then
    as_owner "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1 ||
      as_owner "$PGBIN/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    pid=$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null || true)
    [ -n "$pid" ] && kill -CONT "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
  ;;
ctl)
  as_owner "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/log" "$@"
  ;;
psql)
  as_owner "$PGBIN/psql" -h "$dir" -U pairstore -d pairstore -v ON_ERROR_STOP=1 -qAtX "$@"
  ;;
pid)
  head -n 1 "$dir/data/postmaster.pid"
  ;;
*)
  echo "pgcluster: unknown command $cmd" >&2; exit 2
  ;;
esac
