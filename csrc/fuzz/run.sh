#!/usr/bin/env bash
# make fuzz: build the libFuzzer target (clang -fsanitize=fuzzer,address,undefined) over the
# load-and-validate path and run it for FUZZ_SECONDS (default 60) from the seeds in
# csrc/fuzz/seeds plus the corpus kept in build-fuzz/corpus. Then a negative control: with
# PAIRSTORE_FUZZ_SELFTEST the target echoes its input into a message, and the canary check must
# catch it on the canary seed. Prints "N passed, N failed".
#   FUZZ_SECONDS, FUZZ_JOBS (parallel fuzzing processes, default 1), CC_FUZZ (default clang)
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
SECS=${FUZZ_SECONDS:-60}
CC_FUZZ=${CC_FUZZ:-clang}
out=build-fuzz
mkdir -p "$out/corpus" "$out/artifacts"
passed=0; failed=0
check() { if [ "$2" = 0 ]; then passed=$((passed+1)); echo "ok   $1"; else failed=$((failed+1)); echo "FAIL $1${3:+: $3}"; fi; }

srcs=""
for f in csrc/*.c csrc/engine/file/*.c; do
  case $f in csrc/testhooks.c|csrc/pg_none.c|csrc/qr_none.c) continue ;; esac
  srcs="$srcs $f" # what ships: no test hooks, no PG=0/QR=0 stand-ins
done
cflags="-g -O1 -std=c11 -D_GNU_SOURCE -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all"
deps="$(pkg-config --cflags --libs lua5.4 libsodium libqrencode libpq 2>/dev/null || echo "-I/usr/include/lua5.4 -I/usr/include/postgresql -llua5.4 -lsodium -lqrencode -lpq") -ldl -lpthread"
if ! log=$($CC_FUZZ $cflags -o "$out/fuzz_load" csrc/fuzz/fuzz_load.c $srcs $deps -lm 2>&1); then
  check "fuzz: build the target with $CC_FUZZ (needs libclang-rt-14-dev)" 1 "$log"
  echo "$passed passed, $failed failed"; exit 1
fi
check "fuzz: built $out/fuzz_load with $CC_FUZZ -fsanitize=fuzzer,address,undefined" 0

export PAIRSTORE_ROOT=$ROOT
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# Every seed alone first (a crash there is not a matter of luck).
if log=$("$out/fuzz_load" -runs=0 csrc/fuzz/seeds 2>&1); then rc=0; else rc=1; fi
check "fuzz: every seed passes ($(ls csrc/fuzz/seeds | wc -l) seeds)" $rc "$(echo "$log" | tail -20)"

t0=$SECONDS
jobs=${FUZZ_JOBS:-1}
extra=()
[ "$jobs" -gt 1 ] && extra=(-jobs="$jobs" -workers="$jobs")
"$out/fuzz_load" -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
  -dict=csrc/fuzz/json.dict -artifact_prefix="$out/artifacts/" -print_final_stats=1 "${extra[@]}" \
  "$out/corpus" csrc/fuzz/seeds > "$out/fuzz.log" 2>&1
rc=$?
runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out/fuzz.log" | tail -1)
cov=$(grep -o 'cov: [0-9]*' "$out/fuzz.log" | tail -1)
crashes=$(ls "$out/artifacts" 2>/dev/null | grep -c -E '^(crash|leak|timeout|oom)-')
check "fuzz: $SECS s without a crash, hang, leak, raise or canary (exit $rc)" "$([ "$rc" = 0 ] && [ "$crashes" = 0 ] && echo 0 || echo 1)" \
  "$(grep -E 'ERROR|fuzz_load:|runtime error|SUMMARY' "$out/fuzz.log" | head -8); artifacts in $out/artifacts"

# Negative control: an input echoed into a message must be caught.
if log=$(PAIRSTORE_FUZZ_SELFTEST=1 "$out/fuzz_load" -runs=0 csrc/fuzz/seeds/canary.json 2>&1); then rc2=0; else rc2=1; fi
check "fuzz: negative control: a message carrying the input's canary aborts the run" \
  "$([ "$rc2" = 1 ] && echo "$log" | grep -q 'canary in a message' && echo 0 || echo 1)" "$(echo "$log" | tail -5)"
echo "fuzz: ${runs:-?} runs in $((SECONDS - t0)) s, ${cov:-cov: ?}, corpus $(ls "$out/corpus" | wc -l) inputs, $crashes crashes"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
