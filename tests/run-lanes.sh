#!/bin/bash
# run-lanes.sh - `make test` after its builds: the host suites and the VM
# guests run side by side, in lanes.
#
# The host suites (unit, install, the sanitizer unit runs, interop, fuzz,
# the rbd protocol against a one-host Ceph cluster) spend much of their time
# waiting on fsync, qemu-img, sleeps and kill -9 points; each VM guest spends
# its time in TCG.  One after the other they took ~45 min on 2 cores; side by
# side the wall time is close to the longest lane.
# The first lane prints as it goes; every other lane's output goes to a log
# that is shown once the first lane is done (each then followed to its
# end), so lanes never interleave.  Exits non-zero if any lane failed.
#   LANE1, LANE2, ...: the make targets of each lane, run in order within
#   it (-k: one target's failure does not stop the next).
#   LANES=1: every lane's targets one after the other (a loaded machine).
set -u
cd "$(dirname "$0")/.."
MAKE=make   # not $(MAKE) in the recipe: `make -n test` would run this
BUILD=${BUILD:-build}
# Three lanes on two cores: each has idle time (fsync, 9p, sleeps) that the
# others fill; the per-test time limits in every suite are several times the
# tests' own run times, so the sharing cannot fail a test.
LANE1=${LANE1:-check-unit check-install asan tsan check-interop check-hostile-quick check-fuzz test-ceph}
LANE2=${LANE2:-check-vm-lane}
LANE3=${LANE3:-check-vm-7.3-lane check-vm-asan-quick}
lanes=("$LANE1" "$LANE2")
[ -n "$LANE3" ] && lanes+=("$LANE3")

if [ "${LANES:-}" = 1 ]; then
    rc=0
    for l in "${lanes[@]}"; do $MAKE --no-print-directory -k $l || rc=1; done
    exit $rc
fi

mkdir -p "$BUILD"
start=$(date +%s)
pids=() logs=()
for ((i = 1; i < ${#lanes[@]}; i++)); do
    log=$BUILD/lane$((i + 1)).log
    : >"$log"
    # Each lane reports its own time in its log: the wall clock of the run
    # is the longest lane's.
    ( $MAKE --no-print-directory -k ${lanes[$i]}; r=$?
      echo "lanes: lane $((i + 1)) done after $(( $(date +%s) - start ))s (exit $r)"; exit $r ) >"$log" 2>&1 &
    pids+=($!) logs+=("$log")
    echo "lanes: lane $((i + 1)) (${lanes[$i]}) runs alongside; its output follows lane 1's"
done
trap 'kill "${pids[@]}" 2>/dev/null' INT TERM
$MAKE --no-print-directory -k ${lanes[0]}; rc=$?
echo "lanes: lane 1 done after $(( $(date +%s) - start ))s (exit $rc)"
for ((i = 0; i < ${#pids[@]}; i++)); do
    echo "---- lane $((i + 2)) (${lanes[$((i + 1))]}), run alongside ----"
    tail -n +1 -f --pid="${pids[$i]}" "${logs[$i]}"
    wait "${pids[$i]}" || rc=1
done
echo "lanes: all done after $(( $(date +%s) - start ))s"
exit $rc
