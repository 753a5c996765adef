#!/bin/bash
# run.sh - run the interop tests against qemu-img/qemu-io 7.2.
#
# Runs every tests/interop/test_*.sh (or those named on the command line),
# each in its own bash, and prints one line per test and a closing
#     interop: N passed, N failed, N skipped
# A test exits 0 (pass), 4 (skip) or anything else (fail); a failing test's
# output is shown.  Exits 1 if any test failed.  Needs $UBLKD.
set -u
here=$(cd "$(dirname "$0")" && pwd)
: "${UBLKD:?set UBLKD to the ublkd binary (make check-interop does)}"
[ -x "$UBLKD" ] || { echo "interop: $UBLKD is not executable" >&2; exit 2; }
export UBLKD

if [ $# -gt 0 ]; then
    tests=("$@")
else
    tests=("$here"/test_*.sh)
fi
pass=0 fail=0 skip=0 failed=()
for t in "${tests[@]}"; do
    [ -f "$t" ] || t="$here/$t"
    name=$(basename "$t" .sh)
    start=$(date +%s%N)
    out=$(bash "$t" 2>&1)
    rc=$?
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    secs=$((ms / 1000)).$(( (ms % 1000) / 100 ))
    case $rc in
    0) pass=$((pass + 1)); echo "PASS $name (${secs}s)" ;;
    4) skip=$((skip + 1)); echo "SKIP $name: $(printf '%s\n' "$out" | grep -m1 SKIP | sed 's/^SKIP: //')" ;;
    *) fail=$((fail + 1)); failed+=("$name"); echo "FAIL $name (exit $rc)"
       printf '%s\n' "$out" | tail -40 | sed 's/^/    /' ;;
    esac
done
echo "interop: $pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ] || { echo "failed: ${failed[*]}"; exit 1; }
