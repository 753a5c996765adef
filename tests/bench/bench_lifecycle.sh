#!/bin/bash
# bench_lifecycle.sh - commit and rebase throughput, ublkd img against qemu-img 7.2
# (qcow2 lifecycle issue, "Measured"), on identical copies:
#   rebase   safe rebase of a 1 GiB overlay (256 MiB written in 64 KiB pieces, one per
#            256 KiB) from a fully written 1 GiB base onto an empty 1 GiB image: every
#            range the overlay does not allocate is read from both and written (768 MiB)
#   commit   commit of the same overlay into its base (256 MiB copied, the overlay emptied)
# Each tool's wall time is the median of RUNS runs (tools interleaved), from fresh copies.
# A benchmark, not a test: it never fails on numbers.  Needs ~4 GiB in $DIR.
set -eu
UBLKD=${UBLKD:-$(cd "$(dirname "$0")/../.." && pwd)/build/ublkd}
DIR=${DIR:-/var/tmp/ublkd-bench-lifecycle}
RUNS=${RUNS:-1}
mkdir -p "$DIR"
cd "$DIR"
if [ ! -f base.qcow2 ]; then
    head -c 1G /dev/urandom > base.raw
    qemu-img convert -f raw -O qcow2 base.raw base.qcow2 && rm base.raw
    qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2
    cmds=()
    for ((i = 0; i < 4096; i++)); do cmds+=(-c "write -P $((i % 250 + 1)) $((i * 256))k 64k"); done
    qemu-io "${cmds[@]}" ov.qcow2 >/dev/null
    qemu-img create -q -f qcow2 empty.qcow2 1G
fi
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
timed() { local s=$(date +%s.%N); "$@" >/dev/null; echo "$(date +%s.%N) - $s" | bc; }
run() {   # run OP TOOL...: fresh copies in w/, the time of one run
    rm -rf w && mkdir w && cp --sparse=always base.qcow2 ov.qcow2 empty.qcow2 w/ && sync
    (cd w && case $1 in
        rebase) shift; timed "$@" rebase -b empty.qcow2 -F qcow2 ov.qcow2 ;;
        commit) shift; timed "$@" commit ov.qcow2 ;;
    esac)
}
for op in rebase commit; do
    u=() q=()
    for ((r = 0; r < RUNS; r++)); do
        u+=("$(run $op "$UBLKD" img)")
        q+=("$(run $op qemu-img)")
    done
    um=$(printf '%s\n' "${u[@]}" | median) qm=$(printf '%s\n' "${q[@]}" | median)
    printf '%-7s ublkd img %6.2f s   qemu-img %6.2f s\n' "$op" "$um" "$qm"
done
rm -rf w
