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
# Sanitizer reports of an instrumented $UBLKD (make check-vm SAN=asan, make
# soak) go to files under $SAN_DIR, never to a test's stderr: a daemon's
# stderr is /dev/null, and a report must fail the test even when the test
# itself passed.  A plain build ignores these variables.
SAN_DIR=${VM_RESULTS:-$(mktemp -d /tmp/ublkd-san.XXXXXX)}/sanitizer
mkdir -p "$SAN_DIR"
export ASAN_OPTIONS="log_path=$SAN_DIR/asan:halt_on_error=1:abort_on_error=0:detect_leaks=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="log_path=$SAN_DIR/ubsan:halt_on_error=1:print_stacktrace=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
export TSAN_OPTIONS="log_path=$SAN_DIR/tsan:halt_on_error=0:second_deadlock_stack=1${TSAN_OPTIONS:+:$TSAN_OPTIONS}"
# san_reports: print the reports written since the last call and move them
# aside (to $SAN_DIR/seen), so each one fails exactly the test it came from.
san_reports() {
  local f found=1
  mkdir -p "$SAN_DIR/seen"
  for f in "$SAN_DIR"/asan.* "$SAN_DIR"/ubsan.* "$SAN_DIR"/tsan.*; do
    [ -f "$f" ] || continue
    echo "    | sanitizer report $(basename "$f"):"
    sed 's/^/    | /' "$f" | head -80
    mv "$f" "$SAN_DIR/seen/"
    found=0
  done
  return $found
}
# run_limited S CMD...: CMD in a process group of its own, ended (TERM, then KILL 10 s
# later, the whole group, as `timeout -k 10` does; exit 124) once S seconds have passed
# on /proc/uptime.  Not `timeout`: coreutils' timer runs on the wall clock, and a TCG
# guest's wall clock once jumped ~5 days forward in the middle of a test (CI,
# 2026-12-03), which ended a test that was doing fine.
run_limited() {
  local lim=$1 pid wd rc
  shift
  rm -f "$log.timeout"
  setsid -w "$@" & pid=$!
  ( up() { local u _; read -r u _ </proc/uptime; echo "${u%.*}"; }
    end=$(( lim + $(up) ))
    while [ "$(up)" -lt "$end" ]; do
      sleep 1; kill -0 "$pid" 2>/dev/null || exit 0
    done
    : >"$log.timeout"; kill -TERM -- "-$pid" 2>/dev/null; sleep 10; kill -KILL -- "-$pid" 2>/dev/null
  ) </dev/null >/dev/null 2>&1 &
  wd=$!
  wait "$pid"; rc=$?
  kill "$wd" 2>/dev/null; wait "$wd" 2>/dev/null
  [ -e "$log.timeout" ] && rc=124
  rm -f "$log.timeout"
  return $rc
}
san_total=0
pass=0 fail=0 skip=0 failed=()
suite_start=$(date +%s)
for t in "${tests[@]}"; do
  [ -f "$t" ] || { echo "FAIL $t (no such test)"; fail=$((fail + 1)); failed+=("$t"); continue; }
  log=$(mktemp /tmp/ublkd-vmtest.XXXXXX)
  s=$(date +%s)
  # A test that needs longer than 300 s says so in a "# vm-timeout: S" line.
  tmo=$(sed -n 's/^# vm-timeout: *\([0-9][0-9]*\)$/\1/p' "$t" | head -1)
  run_limited "${TEST_TIMEOUT:-${tmo:-300}}" bash "$t" >"$log" 2>&1
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
  # The del above stops the test's daemons, whose exit-time (leak) reports
  # belong to this test too.
  if san=$(san_reports); then
    echo "FAIL $t: the sanitizer reported"
    echo "$san"
    san_total=$((san_total + 1))
    if [ $rc = 0 ] || [ $rc = 4 ]; then
      [ $rc = 0 ] && pass=$((pass - 1)) || skip=$((skip - 1))
      fail=$((fail + 1)); failed+=("$t")
    fi
  fi
done
[ $san_total = 0 ] || echo "vm: sanitizer reports in $san_total test(s)"
echo "vm: suite took $(( $(date +%s) - suite_start ))s"
[ ${#failed[@]} -eq 0 ] || echo "vm: failed: ${failed[*]}"
echo "vm: $pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
