#!/bin/bash
# suite.sh - run tests/vm/test_*.sh (or the names given) inside a machine
# that has the ublk driver, as root.  Each test is a script: exit 0 pass,
# 4 skip, anything else fail; its output is shown only when it fails.
# Between tests every ublk device is deleted so one failure does not cascade.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
export UBLKD=${UBLKD:?UBLKD must point at the ublkd binary}
export PATH=$PATH:/usr/sbin:/sbin
cd "$HERE"
# A bare devtmpfs (the test guest) lacks these; bash process substitution needs /dev/fd.
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd 2>/dev/null || true
for i in 0 1 2; do [ -e /dev/std$( echo in out err | cut -d' ' -f$((i + 1)) ) ] || ln -s /proc/self/fd/$i /dev/std$( echo in out err | cut -d' ' -f$((i + 1)) ) 2>/dev/null || true; done
if [ $# -gt 0 ]; then
  tests=()
  for t in "$@"; do t=${t%.sh}; tests+=("${t#test_}"); done
  tests=("${tests[@]/#/test_}"); tests=("${tests[@]/%/.sh}")
else
  tests=(test_*.sh)
fi
pass=0 fail=0 skip=0 failed=()
suite_start=$(date +%s)
for t in "${tests[@]}"; do
  [ -f "$t" ] || { echo "FAIL $t (no such test)"; fail=$((fail + 1)); failed+=("$t"); continue; }
  log=$(mktemp /tmp/ublkd-vmtest.XXXXXX)
  s=$(date +%s)
  timeout -k 10 "${TEST_TIMEOUT:-300}" bash "$t" >"$log" 2>&1
  rc=$?
  d=$(( $(date +%s) - s ))
  case $rc in
    0) echo "PASS $t (${d}s)"; pass=$((pass + 1));;
    4) echo "SKIP $t (${d}s): $(tail -1 "$log")"; skip=$((skip + 1));;
    *) echo "FAIL $t (${d}s, exit $rc$( [ $rc = 124 ] && echo ', timeout'))"; fail=$((fail + 1)); failed+=("$t")
       sed 's/^/    | /' "$log" | tail -60;;
  esac
  rm -f "$log"
  "$UBLKD" del -a --force >/dev/null 2>&1 || "$UBLKD" del -a >/dev/null 2>&1 || true
done
echo "vm: suite took $(( $(date +%s) - suite_start ))s"
[ ${#failed[@]} -eq 0 ] || echo "vm: failed: ${failed[*]}"
echo "vm: $pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
