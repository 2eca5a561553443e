#!/usr/bin/env bash
# with-pg.sh COMMAND...: runs COMMAND with a private PostgreSQL cluster started for it
# (spec/support/pgcluster.sh) and removes the cluster afterwards, also when COMMAND fails or
# is interrupted. COMMAND sees:
#   PAIRSTORE_TEST_PG       the target of the test database (a libpq URI, unix socket)
#   PAIRSTORE_TEST_PGDIR    the cluster's directory (for pgcluster.sh ctl/psql/pid)
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d /tmp/pairstore-pg.XXXXXX)
cleanup() { bash "$here/pgcluster.sh" stop "$dir"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
target=$(bash "$here/pgcluster.sh" start "$dir") || { echo "with-pg: could not start PostgreSQL" >&2; exit 1; }
export PAIRSTORE_TEST_PG=$target PAIRSTORE_TEST_PGDIR=$dir
"$@"
