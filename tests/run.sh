#!/usr/bin/env bash
# Runs every test program in BUILD/tests (or only the programs named after BUILD) and prints the
# totals as "N passed, N failed, N skipped".
# A program that dies (signal, non-zero exit without a FAIL line) counts as one failure.
build=${1:-build}
shift
progs=("$@")
[ ${#progs[@]} -gt 0 ] || progs=("$build"/tests/test_*)
pass=0 fail=0 skip=0
log=$(mktemp)
for t in "${progs[@]}"; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    start=$(date +%s.%N)
    "$t" >"$log" 2>"$log.err"
    rc=$?
    secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e-s}')
    p=$(grep -c '^PASS ' "$log"); f=$(grep -c '^FAIL ' "$log"); s=$(grep -c '^SKIP ' "$log")
    sed "s/^/  $name: /" "$log" | grep -v ': PASS ' || true
    if [ "$f" -gt 0 ] || [ $rc -ne 0 ]; then
        sed "s/^/    /" "$log.err" | tail -n 40
        [ "$f" -eq 0 ] && { f=1; echo "  $name: FAIL exit status $rc"; }
    fi
    echo "$name: $p passed, $f failed, $s skipped (${secs}s)"
    pass=$((pass + p)) fail=$((fail + f)) skip=$((skip + s))
done
rm -f "$log" "$log.err"
echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
