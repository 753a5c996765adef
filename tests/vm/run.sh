#!/bin/bash
# run.sh - run the VM integration suite (tests/vm/test_*.sh) against $UBLKD.
#
# On a machine with /dev/ublk-control the suite runs natively (as root).
# Otherwise one throw-away guest is booted with tests/vm/ublk-vm and the
# whole suite runs inside it: Linux 6.12 by default, VM_KERNEL=7.3 for
# Debian trixie-backports' 7.3.  If the guest cannot boot this fails loudly,
# unless SKIP_VM=1.  VM_CPUS sets the guest's CPUs (default 2).  Arguments
# are test names (default: all).
# The last line is always "vm: N passed, N failed, N skipped".
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export UBLKD=${UBLKD:-$ROOT/build/ublkd}
[ -x "$UBLKD" ] || { echo "vm: $UBLKD is not built (make)"; echo "vm: 0 passed, 1 failed, 0 skipped"; exit 1; }

if [ -e /dev/ublk-control ]; then
  [ "$(id -u)" = 0 ] || { echo "vm: the native suite needs root"; echo "vm: 0 passed, 1 failed, 0 skipped"; exit 1; }
  exec "$HERE/suite.sh" "$@"
fi

start=$(date +%s)
work=$(mktemp -d /tmp/ublkd-vm.XXXXXX)
# The guest mounts a fresh tmpfs on /tmp and /run: a checkout or a daemon
# binary under them is shared again, read-only, at the same path.
ro=()
for d in "$ROOT" "$(dirname "$(realpath "$UBLKD")")"; do
  case $d/ in /tmp/*|/run/*) ro+=(-r "$d");; esac
done
echo "vm: kernel ${VM_KERNEL:-6.12}"
trap 'rm -rf "$work"' EXIT
# The guest inherits no environment: these knobs are passed on when set.
fwd=()
for v in TEST_TIMEOUT POWERLOSS_RECORDS POWERLOSS_POINTS POWERLOSS_NOISE POWERLOSS_CACHE POWERLOSS_FORMATS \
         POWERLOSS_XFS_FORMATS LOG_WRITES_REPLAY KILL9_CYCLES KILL9_FORMATS; do
  [ -n "${!v:-}" ] && fwd+=("$v=${!v}")
done
out=$work/console.log
# The guest sees the host's / read-only, so the repository and $UBLKD are
# visible at the same paths; $work is the only writable share.
# A guest that never reached its command (a kernel panic during boot under
# TCG, seen about once in a few dozen boots) is booted once more; a guest
# that booted and then failed is never retried.
for attempt in 1 2; do
  "$HERE/ublk-vm" -w "$work" "${ro[@]}" -c "${VM_CPUS:-2}" -t "${VM_TIMEOUT:-1500}" -- \
      env UBLKD="$UBLKD" VM_RESULTS="$work" "${fwd[@]}" "$HERE/suite.sh" "$@" 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  [ "$rc" = 125 ] && [ "$attempt" = 1 ] && grep -q 'ublk-vm: the guest did not boot' "$out" || break
  echo "vm: the guest did not boot; booting it once more"
done
echo "vm: guest run took $(( $(date +%s) - start ))s (boot included)"
if [ "$rc" = 125 ] || ! grep -q '^vm: [0-9]* passed' "$out"; then
  if [ "${SKIP_VM:-0}" = 1 ]; then
    echo "vm: could not run the guest; skipped because SKIP_VM=1"
    echo "vm: 0 passed, 0 failed, 0 skipped"
    exit 0
  fi
  echo "vm: FAILED to run the test guest (exit $rc); set SKIP_VM=1 to skip on machines that cannot boot it"
  echo "vm: 0 passed, 1 failed, 0 skipped"
  exit 1
fi
# Repeat the guest's verdict as the last line for CI.
grep '^vm: [0-9]* passed' "$out" | tail -1
exit "$rc"
