#!/bin/bash
# Run each cmocka unit-test binary given on the command line.  cmocka prints
# its own "[  PASSED  ] N test(s)." / "[  FAILED  ]" summary per suite; this
# adds one total line in the form CI understands and fails if any suite did.
# UNIT_THREAD_LIST=FILE: FILE gets the names of the suites that started a
# thread (tests/unit/thread-probe.c), for `make tsan`.
set -u
pass=0 fail=0 failed_suites=()
if [ -n "${UNIT_THREAD_LIST:-}" ]; then
    export UNIT_THREAD_PROBE=$UNIT_THREAD_LIST.tmp
    rm -f "$UNIT_THREAD_PROBE"
fi
for t in "$@"; do
    # A hung suite must not hang CI: each gets a generous fixed limit.
    out=$(timeout "${UNIT_TIMEOUT:-300}" "$t" 2>&1); rc=$?
    [ $rc -eq 124 ] && out+=$'\n'"$(basename "$t"): timed out after ${UNIT_TIMEOUT:-300}s"
    printf '%s\n' "$out"
    p=$(printf '%s\n' "$out" | sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' | tail -1)
    f=$(printf '%s\n' "$out" | sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' | tail -1)
    pass=$((pass + ${p:-0})); fail=$((fail + ${f:-0}))
    if [ $rc -ne 0 ]; then
        [ -z "$f" ] && fail=$((fail + 1))   # crashed before its summary
        failed_suites+=("$(basename "$t")")
    fi
done
if [ -n "${UNIT_THREAD_LIST:-}" ]; then
    sort -u "$UNIT_THREAD_PROBE" 2>/dev/null >"$UNIT_THREAD_LIST"
    rm -f "$UNIT_THREAD_PROBE"
fi
# UNIT_LABEL tells the plain run from the sanitizer runs (unit-asan, ...).
echo "${UNIT_LABEL:-unit}: $pass passed, $fail failed"
[ ${#failed_suites[@]} -eq 0 ] || { echo "failed suites: ${failed_suites[*]}"; exit 1; }
