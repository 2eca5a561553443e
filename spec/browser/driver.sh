#!/usr/bin/env bash
# driver.sh: run by spec/nginx/run.sh (NGX_DRIVER) against the nginx it started, with its
# environment (NGX_PORT, NGX_OPERATOR_PORT, NGX_WORK, BACKEND, PAIRSTORE_PAYLOAD_DIR, TREE), as nobody when
# root. Chromium's profile, its temp files and the screenshots go under NGX_WORK, which
# run.sh removes with the rest of nginx's prefix; the last screenshot of a failed check is
# copied to /tmp/pairstore-browser-failed.*/ and its path printed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export HOME=$NGX_WORK/home TMPDIR=$NGX_WORK/tmp SHOT_DIR=$NGX_WORK/shots KEEP_DIR=${KEEP_DIR:-/tmp}
mkdir -p "$HOME" "$TMPDIR" "$SHOT_DIR"
base=http://127.0.0.1:$NGX_PORT
PAIR_TARGETS=$(printf '[{"name":"%s","base":"%s","operator":"%s/pair/new","payload_dir":"%s","access_log":"%s"}]' \
  "$BACKEND" "$base" "http://127.0.0.1:$NGX_OPERATOR_PORT" "$PAIRSTORE_PAYLOAD_DIR" "$NGX_PREFIX/access.log")
export PAIR_TARGETS VECTORS=$TREE/spec/fixtures/pairing-vectors.json
exec node "$here/pair_test.mjs"
