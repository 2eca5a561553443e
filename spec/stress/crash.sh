#!/usr/bin/env bash
# Crash atomicity: a writer rewrites a ~1 MB sessions file in a loop and is SIGKILLed at a random
# moment, STRESS_CRASH_KILLS times (default 300); after each kill the file must parse and be one
# complete version, never older than the last one seen. Then the negative control: an in-place
# writer (open "w", 64 KiB chunks) killed the same way must leave at least one torn file.
set -u
cd "$(dirname "$0")/../.."
KILLS=${STRESS_CRASH_KILLS:-300}
work=$(mktemp -d /tmp/pairstore-crash.XXXXXX)
path=$work/pair-sessions.json
passed=0; failed=0
check() { if [ "$2" = 0 ]; then passed=$((passed+1)); echo "ok   $1"; else failed=$((failed+1)); echo "FAIL $1${3:+: $3}"; fi; }

# Seed: 3 sessions (the first one carries the 1 MiB field), written by pairstore.
sid=$(lua5.4 spec/fault/one_op.lua "$path" seed | sed -n 's/^ok //p')
lua5.4 spec/fault/one_op.lua "$path" seed >/dev/null
lua5.4 spec/fault/one_op.lua "$path" seed >/dev/null
lua5.4 spec/stress/writer.lua "$path" "$sid" prepare
size=$(stat -c %s "$path")

run() { # $1 = pairstore|inplace, $2 = max kills, $3 = stop at the first torn file (1) or not
  local how=$1 max=$2 stop=$3 k=0 torn=0 ok=0 first="" line writer versions=0 last=-1
  coproc WATCH { lua5.4 spec/stress/check.lua watch "$path"; }
  while [ "$k" -lt "$max" ]; do
    lua5.4 spec/stress/writer.lua "$path" "$sid" "$how" 2>>"$work/stderr" &
    writer=$!
    # 10..200 ms: from the writer's start-up through several complete rewrites
    sleep "0.$(printf %03d $((10 + RANDOM % 191)))"
    kill -KILL "$writer" 2>/dev/null
    { wait "$writer"; } 2>/dev/null
    k=$((k + 1))
    echo 3 >&"${WATCH[1]}"
    read -r line <&"${WATCH[0]}"
    case $line in
      ok*) ok=$((ok + 1)); last=${line#ok } ;;
      *) torn=$((torn + 1)); [ -z "$first" ] && first="kill $k: $line"
         [ "$stop" = 1 ] && break
         # restore a complete file for the next round
         lua5.4 spec/stress/writer.lua "$path" "$sid" prepare >/dev/null 2>&1 ;;
    esac
  done
  exec {WATCH[1]}>&-
  wait "$WATCH_PID" 2>/dev/null
  echo "$k $ok $torn $last $first"
}

read -r k ok torn last first <<<"$(run pairstore "$KILLS" 0)"
check "crash: $k kills of the pairstore writer, every file a complete version" "$([ "$torn" = 0 ] && [ "$ok" = "$k" ] && echo 0 || echo 1)" "$torn torn; first: $first"
check "crash: the writer made progress (reached version $last)" "$([ "${last:-0}" -gt 20 ] && echo 0 || echo 1)"
left=$(ls -A "$work" | grep -v -e '^pair-sessions.json$' -e '^stderr$' | tr '\n' ' ')
lua5.4 spec/fault/one_op.lua "$path" list >/dev/null
left2=$(ls -A "$work" | grep -v -e '^pair-sessions.json$' -e '^stderr$' | tr '\n' ' ')
check "crash: orphans of killed writers swept by the next call" "$([ -z "$left2" ] && echo 0 || echo 1)" "$left2"
echo "crash: $k kills, $ok complete versions, $torn torn, last version $last, file $size bytes, orphans before the sweep: $(echo $left | wc -w)"

# Negative control: the same kills on an in-place writer must tear the file.
read -r nk nok ntorn nlast nfirst <<<"$(run inplace "$KILLS" 1)"
check "crash: negative control: an in-place writer leaves a torn file (after $nk kills)" "$([ "$ntorn" -ge 1 ] && echo 0 || echo 1)" "no torn file in $nk kills"
echo "crash negative control: in-place writer torn after $nk kills ($nfirst)"

echo "$passed passed, $failed failed"
[ "$failed" = 0 ] && [ -z "${STRESS_KEEP:-}" ] && rm -rf "$work"
[ "$failed" = 0 ]
