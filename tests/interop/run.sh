#!/bin/bash
# run.sh - run the interop tests against qemu-img/qemu-io 7.2.
#
# Runs every tests/interop/test_*.sh (or those named on the command line),
# each in its own bash, and prints one line per test and a closing
#     interop: N passed, N failed, N skipped
# A test exits 0 (pass), 4 (skip) or anything else (fail); a failing test's
# output is shown.  Exits 1 if any test failed.  Needs $UBLKD.
#
# --parity (first argument): every qemu-img the tests run is also run as
# `ublkd img` on a copy of its directory (tests/interop/parity/qemu-img),
# and a closing line counts those whose stdout, stderr and exit code match:
#     parity: M of N qemu-img invocations match ublkd img byte for byte (S not compared)
# The per-invocation verdicts are kept in $UBLKD_PARITY_LOG (default
# /tmp/ublkd-parity.log).
set -u
parity=0
if [ "${1:-}" = --parity ]; then
    parity=1
    shift
    export UBLKD_PARITY_REAL=$(command -v "${QEMU_IMG:-qemu-img}")
    export UBLKD_PARITY_LOG=${UBLKD_PARITY_LOG:-/tmp/ublkd-parity.log}
    : >"$UBLKD_PARITY_LOG"
    export PATH="$(cd "$(dirname "$0")" && pwd)/parity:$PATH"
    export QEMU_IMG=qemu-img
fi
here=$(cd "$(dirname "$0")" && pwd)
: "${UBLKD:?set UBLKD to the ublkd binary (make check-interop does)}"
[ -x "$UBLKD" ] || { echo "interop: $UBLKD is not executable" >&2; exit 2; }
export UBLKD

if [ $# -gt 0 ]; then
    tests=("$@")
else
    tests=("$here"/test_*.sh)
fi
# INTEROP_JOBS=N runs N tests at once (each has its own directory; most
# wait on qemu-img, fsync or kill -9 points more than on the CPU).  Output
# stays one block per test; --parity runs one at a time (one shared log).
jobs=${INTEROP_JOBS:-1}
[ $parity = 1 ] && jobs=1
case $jobs in ''|*[!0-9]*|0) echo "interop: INTEROP_JOBS must be a positive number" >&2; exit 2 ;; esac
results=$(mktemp -d /tmp/ublkd-interop-run.XXXXXX)
trap 'rm -rf "$results"' EXIT

run_one() {   # run_one TEST INDEX: result into $results/INDEX.{rc,ms,out}
    local t=$1 i=$2 start rc
    start=$(date +%s%N)
    UBLKD_PARITY_TEST=$(basename "$t" .sh) bash "$t" >"$results/$i.out" 2>&1
    rc=$?
    echo $(( ($(date +%s%N) - start) / 1000000 )) >"$results/$i.ms"
    echo $rc >"$results/$i.rc.new" && mv "$results/$i.rc.new" "$results/$i.rc"
}

report() {    # report TEST INDEX: the test's line (and output if it failed)
    local name rc ms secs out
    name=$(basename "$1" .sh)
    rc=$(cat "$results/$2.rc") ms=$(cat "$results/$2.ms")
    secs=$((ms / 1000)).$(( (ms % 1000) / 100 ))
    out=$(cat "$results/$2.out")
    case $rc in
    0) pass=$((pass + 1)); echo "PASS $name (${secs}s)" ;;
    4) skip=$((skip + 1)); echo "SKIP $name: $(printf '%s\n' "$out" | grep -m1 SKIP | sed 's/^SKIP: //')" ;;
    *) fail=$((fail + 1)); failed+=("$name"); echo "FAIL $name (exit $rc)"
       printf '%s\n' "$out" | tail -40 | sed 's/^/    /' ;;
    esac
}

pass=0 fail=0 skip=0 failed=()
paths=()
for t in "${tests[@]}"; do
    [ -f "$t" ] || t="$here/$t"
    paths+=("$t")
done
# Start tests in order, at most $jobs at a time; report them in order as
# they finish, so the log reads the same whatever the timing.
next_report=0 running=0
for i in "${!paths[@]}"; do
    while [ $running -ge $jobs ]; do
        wait -n 2>/dev/null
        running=$(jobs -rp | wc -l)
    done
    run_one "${paths[$i]}" $i &
    running=$((running + 1))
    while [ $next_report -lt $i ] && [ -f "$results/$next_report.rc" ]; do
        report "${paths[$next_report]}" $next_report
        next_report=$((next_report + 1))
    done
done
wait
while [ $next_report -lt ${#paths[@]} ]; do
    report "${paths[$next_report]}" $next_report
    next_report=$((next_report + 1))
done
echo "interop: $pass passed, $fail failed, $skip skipped"
if [ $parity = 1 ]; then
    m=$(grep -c '^MATCH' "$UBLKD_PARITY_LOG") d=$(grep -c '^DIFF' "$UBLKD_PARITY_LOG")
    s=$(grep -c '^SKIP' "$UBLKD_PARITY_LOG")
    echo "parity: $m of $((m + d)) qemu-img invocations match ublkd img byte for byte ($s not compared; verdicts in $UBLKD_PARITY_LOG)"
fi
[ $fail -eq 0 ] || { echo "failed: ${failed[*]}"; exit 1; }
