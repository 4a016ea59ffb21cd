#!/usr/bin/env bash
# Runs each built fuzz target for SECONDS (one process each, one after the other) on its corpus in
# BUILD/corpus/<target> (seeded by fuzz/seed.sh) and fails if any target finds a crash, a leak, a
# sanitizer report or a timeout. Crashing inputs are written to BUILD/crashes/<target>-crash-<sha1>.
#   usage: fuzz/run.sh BUILD SECONDS TARGET_BINARY...
set -uo pipefail
build=$1 secs=$2
shift 2
fuzz/seed.sh "$build/corpus" || exit 1
mkdir -p "$build/crashes"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/lsan.supp:print_suppressions=0}
failed=0 summary=""
for bin in "$@"; do
    t=$(basename "$bin")
    log="$build/$t.log"
    if [ "$t" = fuzz_clip_tokenizer ] && [ ! -d "${RELBOOTH_GOLDEN:-../shared/golden}/clip_tokenizer" ]; then
        echo "$t: skipped (needs the golden vocabularies; set RELBOOTH_GOLDEN)"
        continue
    fi
    # -jobs/-workers are left at their default (a single process) because the machine is shared.
    "$bin" "$build/corpus/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$build/crashes/$t-" >"$log" 2>&1
    rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
    line="$t: ${secs}s, ${runs:-?} runs, ${speed:-?} exec/s, ${cov:-cov: ?}"
    if [ $rc -ne 0 ]; then
        failed=1
        line="$line: FAILED (exit $rc, log $log)"
        grep -E 'ERROR|SUMMARY|runtime error|Test unit written' "$log" | head -n 8 | sed 's/^/    /'
    fi
    echo "$line"
    summary="$summary$line"$'\n'
done
printf '%s' "$summary" >"$build/fuzz-summary.txt"
exit $failed
