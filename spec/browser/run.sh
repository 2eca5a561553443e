#!/usr/bin/env bash
# spec/browser/run.sh [file|pg]: the phone page (examples/nginx/html) in Debian's headless
# Chromium, driven by playwright-core (spec/browser/package-lock.json; no browser download),
# against the nginx example as `make test-nginx` starts it (spec/nginx/run.sh: a temp
# prefix, a free loopback port, 4 workers), on the file store and on PostgreSQL
# (spec/support/with-pg.sh). spec/nginx/run.sh runs driver.sh in place of its own driver,
# and stops and removes everything at the end, also on failure. Ends with
# "N passed, N failed"; exits non-zero on any failure.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tree=$(cd "$here/../.." && pwd)
fail() { echo "test-browser: $*"; echo "0 passed, 1 failed"; exit 1; }

# Chromium (Debian's package) and Node.js 20 or later (playwright-core's floor).
export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM" ]; then
  if [ "$(id -u)" -eq 0 ] && [ "$CHROMIUM" = /usr/bin/chromium ]; then
    echo "test-browser: installing Debian's chromium"
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }; then
      fail "apt-get install chromium failed"
    fi
  else
    fail "$CHROMIUM not found: sudo apt-get install -y chromium (or set CHROMIUM)"
  fi
fi
command -v node >/dev/null 2>&1 || fail "node not found (Node.js 20 or later)"
[ "$(node -p 'process.versions.node.split(".")[0]')" -ge 20 ] || fail "Node.js $(node -v) is too old: playwright-core needs 20 or later"

# playwright-core as the lock file says, into spec/browser/node_modules (gitignored).
cd "$here" || fail "no $here"
want=$(node -p 'require("./package-lock.json").packages["node_modules/playwright-core"].version')
have=$(node -p 'try { require("./node_modules/playwright-core/package.json").version } catch (e) { "" }')
if [ "$want" != "$have" ]; then
  echo "test-browser: npm ci (playwright-core $want)"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 timeout 300 npm ci --no-audit --no-fund --loglevel=error ||
    fail "npm ci failed"
fi
cd "$tree" || fail "no $tree"

backends=${1:-file pg}
out=$(mktemp /tmp/pairstore-browser-out.XXXXXX)
trap 'rm -f "$out"' EXIT
trap 'echo "test-browser: interrupted"; exit 130' INT TERM # (after the running backend has cleaned up)
runs=0
for b in $backends; do
  case $b in
  file) NGX_DRIVER=$here/driver.sh bash spec/nginx/run.sh file 2>&1 | tee -a "$out" ;;
  pg) NGX_DRIVER=$here/driver.sh bash spec/support/with-pg.sh bash spec/nginx/run.sh pg 2>&1 | tee -a "$out" ;;
  *) fail "usage: run.sh [file|pg]" ;;
  esac
  runs=$((runs + 1))
done
p=0 f=0
while read -r a _ c _; do p=$((p + a)); f=$((f + c)); done < <(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$out")
[ "$(grep -cE '^[0-9]+ passed, [0-9]+ failed$' "$out")" -eq "$runs" ] || f=$((f + 1)) # a backend that did not finish
echo "test-browser: $backends"
echo "$p passed, $f failed"
[ "$f" -eq 0 ]
