#!/bin/bash
# bench_snapshot.sh - internal snapshot create and delete: `ublkd img snapshot`
# against `qemu-img snapshot` on the same image, a 10 GiB qcow2 (64k clusters)
# with 1 GiB written at spread offsets (one 1 MiB run every 10 MiB).  For each
# tool and each run a fresh copy of the image: create a snapshot, write 64 MiB
# over it (so the delete has freed clusters to give back), delete it.  Each
# figure is the median of RUNS runs, tools interleaved; every image is then
# checked with qemu-img check.  A benchmark, not a test: it never fails on
# numbers.  Needs ~2.5 GiB in $DIR (default /var/tmp).
set -eu
UBLKD=${UBLKD:-$(cd "$(dirname "$0")" && pwd)/../../build/ublkd}
DIR=${DIR:-/var/tmp/ublkd-bench-snapshot}
RUNS=${RUNS:-5}
mkdir -p "$DIR"
cd "$DIR"
if [ ! -f base.qcow2 ]; then
    echo "bench: making a 10 GiB qcow2 with 1 GiB written in $DIR" >&2
    qemu-img create -q -f qcow2 base.qcow2 10G
    cmds=()
    for i in $(seq 0 1023); do cmds+=(-c "write -P $((i % 255 + 1)) $((i * 10))M 1M"); done
    qemu-io "${cmds[@]}" base.qcow2 >/dev/null
fi
now() { date +%s.%N; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A T
for run in $(seq "$RUNS"); do
    for tool in qemu-img ublkd; do
        cp --sparse=always base.qcow2 t.qcow2
        sync t.qcow2
        if [ $tool = ublkd ]; then snap() { "$UBLKD" img snapshot "$@"; }; else snap() { qemu-img snapshot "$@"; }; fi
        a=$(now); snap -c s t.qcow2; b=$(now)
        qemu-io -c 'write -P 0x77 0 64M' t.qcow2 >/dev/null
        c=$(now); snap -d s t.qcow2; d=$(now)
        qemu-img check -q t.qcow2 || { echo "bench: $tool left an image qemu-img check rejects" >&2; exit 1; }
        T[$tool-create]+=" $(echo "$b - $a" | bc)"
        T[$tool-delete]+=" $(echo "$d - $c" | bc)"
    done
done
rm -f t.qcow2
printf '%-10s %12s %12s   (seconds, median of %s; 10 GiB image, 1 GiB written)\n' op qemu-img ublkd "$RUNS"
for op in create delete; do
    # shellcheck disable=SC2086
    printf '%-10s %12.3f %12.3f\n' $op "$(median ${T[qemu-img-$op]})" "$(median ${T[ublkd-$op]})"
done
