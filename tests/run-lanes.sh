#!/bin/bash
# run-lanes.sh - `make test` after its builds: the host suites and the VM
# guests run side by side, as two lanes.
#
# The host suites (unit, install, the sanitizer unit runs, interop, fuzz,
# the rbd protocol against a one-host Ceph cluster)
# spend most of their time waiting on fsync, qemu-img, sleeps and kill -9
# points; the VM guests spend theirs in TCG.  One after the other they took
# ~28 min on 2 cores; side by side the wall time is the longer lane.
# The host lane prints as it goes; the VM lane's output goes to a log that
# is shown once the host lane is done (and then followed to its end), so the
# two never interleave.  Exits non-zero if either lane failed.
#   HOST_TARGETS / VM_TARGETS: the make targets of each lane.
#   LANES=1: one lane after the other, as before (for a loaded machine).
set -u
cd "$(dirname "$0")/.."
MAKE=make   # not $(MAKE) in the recipe: `make -n test` would run this
BUILD=${BUILD:-build}
HOST_TARGETS=${HOST_TARGETS:-check-unit check-install asan tsan check-interop check-hostile-quick check-fuzz test-ceph}
VM_TARGETS=${VM_TARGETS:-check-vm check-vm-7.3}

if [ "${LANES:-2}" = 1 ]; then
    $MAKE --no-print-directory $HOST_TARGETS; h=$?
    $MAKE --no-print-directory $VM_TARGETS; v=$?
    [ $h = 0 ] && [ $v = 0 ]; exit
fi

mkdir -p "$BUILD"
log=$BUILD/vm-lane.log
: >"$log"
start=$(date +%s)
# -k: one kernel's failure does not keep the other's suite from running.
$MAKE --no-print-directory -k $VM_TARGETS >"$log" 2>&1 &
vm=$!
trap 'kill $vm 2>/dev/null' INT TERM
echo "lanes: the VM lane ($VM_TARGETS) runs alongside; its output follows the host lane's"
$MAKE --no-print-directory -k $HOST_TARGETS; h=$?
echo "lanes: host lane done after $(( $(date +%s) - start ))s (exit $h)"
echo "---- VM lane ($VM_TARGETS), run alongside ----"
tail -n +1 -f --pid=$vm "$log"
wait $vm; v=$?
echo "lanes: VM lane done after $(( $(date +%s) - start ))s (exit $v)"
[ $h = 0 ] && [ $v = 0 ]
