#!/bin/bash
# The images the unit crash simulator (tests/unit/test-qcow2-crash.c) leaves
# after simulated crashes of ublkd's qcow2 driver, judged by qemu-img:
#   - qemu-img check finds no corruption (leaked clusters are allowed);
#   - an image lazy refcounts left dirty is repaired by qemu-img check -r all
#     and is clean after;
#   - qemu-img convert -O raw reads what ublkd's driver read from it (which
#     the simulator checked against every write acknowledged before the
#     last completed flush).
# Needs the unit test binary next to ublkd (make tests; make check-interop
# builds it).  CRASH_SEEDS / CRASH_POINTS as for the unit test.
. "$(dirname "$0")/lib.sh"
require_format qcow2
sim=$(dirname "$UBLKD")/tests/test-qcow2-crash
[ -x "$sim" ] || skip "$sim not built (make tests)"
require_cmd sha256sum

mkdir dump
CRASH_DUMP_DIR=$WORK/dump CRASH_POINTS=${CRASH_POINTS:-5} "$sim" > sim.out 2>&1 || {
    cat sim.out >&2; fail "the crash simulator failed"; }
n=0 dirty=0 leaky=0
for img in dump/*.qcow2; do
    t=${img%.qcow2}
    if [ -f "$t.base" ]; then
        src="json:{\"driver\":\"qcow2\",\"file\":{\"driver\":\"file\",\"filename\":\"$img\"},\"backing\":{\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":\"$t.base\"}}}"
    else
        src=$img
    fi
    if qemu-img info --output=json "$img" | grep -q '"dirty-flag": true'; then
        dirty=$((dirty + 1))
        cp "$img" repair.qcow2
        qemu-img check -r all repair.qcow2 > check.out 2>&1 || { cat check.out >&2; fail "$t: qemu-img check -r all"; }
        qemu-img check repair.qcow2 > check.out 2>&1 || { cat check.out >&2; fail "$t: not clean after repair"; }
    else
        qemu-img check --output=json "$img" > check.json 2>&1
        rc=$?
        grep -q '"corruptions"' check.json && { cat check.json >&2; fail "$t: qemu-img check finds corruption"; }
        case $rc in
        0) ;;
        3) leaky=$((leaky + 1)) ;;
        *) cat check.json >&2; fail "$t: qemu-img check exit $rc" ;;
        esac
    fi
    rm -f q.raw
    qemu-img convert -O raw "$src" q.raw || fail "$t: qemu-img convert"
    [ "$(sha256sum < q.raw)" = "$(sha256sum < "$t.raw")" ] || {
        cmp q.raw "$t.raw" | head -3 >&2; fail "$t: qemu-img reads something else than ublkd"; }
    n=$((n + 1))
done
[ $n -gt 0 ] || fail "the simulator left no images in dump/"
echo "$n crash images: $dirty dirty (repaired), $leaky with leaked clusters, none corrupt"
