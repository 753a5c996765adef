#!/bin/bash
# bench_qcow2.sh - the qcow2 figures of docs/PERFORMANCE.md, side by side in one run.
#   native     ublkd img bench vs qemu-img bench on the same fully allocated 1 GiB qcow2
#              (qemu-img convert from random data): 4k read and write QD32 at scattered
#              offsets (same stride for both: qemu-img 7.2 bench has no random mode),
#              128k sequential read QD8; for CACHE in $CACHES.
#   scaling    ublkd --threads 2 against 1: 4k --random reads, writeback (page cache);
#              4k allocating writes into an empty image.
#   allocating 4k writes, one per 64k cluster, into an empty image made fresh for every
#              run, QD1 and QD32: writes/s, ublkd against qemu-img; every image is then
#              checked with qemu-img check.
#   vs raw     ublkd qcow2 against ublkd raw (same data), 4k --random reads QD32.
# Tools interleaved run by run; each figure is the median of RUNS runs.  A benchmark, not a
# test: it never fails on numbers.  Needs ~3 GiB in $DIR (default /var/tmp: O_DIRECT).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
UBLKD=${UBLKD:-$HERE/../../build/ublkd}
DIR=${DIR:-/var/tmp/ublkd-bench-qcow2}
RUNS=${RUNS:-3}
CACHES=${CACHES:-none writeback}
COUNT=${COUNT:-200000}
SEQCOUNT=${SEQCOUNT:-8192}
STRIDE=$((4096 * 2731))          # co-prime with the image size in 4k units
mkdir -p "$DIR"
cd "$DIR"
if [ ! -f full.qcow2 ]; then
    echo "bench: making a fully allocated 1 GiB qcow2 and raw in $DIR" >&2
    head -c 1G /dev/urandom > full.raw
    qemu-img convert -f raw -O qcow2 full.raw full.qcow2
fi

q() { secs_of "$(qemu-img bench -i io_uring "$@" 2>&1)"; }
u() { secs_of "$("$UBLKD" img bench "$@" 2>&1)"; }
# pair LABEL COUNT ARGS...: median seconds of qemu-img and ublkd, interleaved; prints a row
pair() {
    local label=$1 n=$2; shift 2
    local qs=() us=()
    for _ in $(seq "$RUNS"); do qs+=("$(q "$@")"); us+=("$(u "$@")"); done
    local qm um
    qm=$(printf '%s\n' "${qs[@]}" | median); um=$(printf '%s\n' "${us[@]}" | median)
    echo "| $label | $(div "$n" "$qm" %d) | $(div "$n" "$um" %d) | **$(ratio "$qm" "$um")** |"
}

echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) CPUs; load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$(qemu-img --version | head -1); ublkd $("$UBLKD" --version | awk '{ print $3 }'); median of $RUNS"
echo
echo "| native, 1 GiB allocated qcow2 | qemu-img IOPS | ublkd IOPS | ublkd/qemu |"
echo "|---|---|---|---|"
for c in $CACHES; do
    pair "4k read QD32, -t $c" "$COUNT" -f qcow2 -t "$c" -s 4k -S $STRIDE -c "$COUNT" -d 32 full.qcow2
    pair "4k write QD32, -t $c" "$COUNT" -w -f qcow2 -t "$c" -s 4k -S $STRIDE -c "$COUNT" -d 32 full.qcow2
    pair "128k seq read QD8, -t $c" "$SEQCOUNT" -f qcow2 -t "$c" -s 128k -c "$SEQCOUNT" -d 8 full.qcow2
done

# Allocating 4k writes, one per cluster, into a fresh image for every run.
alloc() {   # alloc TOOL QD [THREADS]: seconds for 16384 allocating writes
    rm -f empty.qcow2
    qemu-img create -q -f qcow2 empty.qcow2 1G
    local t
    if [ "$1" = qemu-img ]; then
        t=$(q -w -t none -f qcow2 -s 4k -S 64k -c 16384 -d "$2" empty.qcow2)
    else
        t=$(u -w -t none -f qcow2 -s 4k -S 64k -c 16384 -d "$2" --threads="${3:-1}" empty.qcow2)
    fi
    qemu-img check -q empty.qcow2 || echo "bench: qemu-img check failed after $1 QD$2" >&2
    echo "$t"
}
echo
echo "| allocating 4k writes (one per 64k cluster), -t none | qemu-img writes/s | ublkd writes/s | ublkd/qemu |"
echo "|---|---|---|---|"
for qd in 1 32; do
    qs=(); us=()
    for _ in $(seq "$RUNS"); do qs+=("$(alloc qemu-img $qd)"); us+=("$(alloc ublkd $qd)"); done
    qm=$(printf '%s\n' "${qs[@]}" | median); um=$(printf '%s\n' "${us[@]}" | median)
    echo "| QD$qd | $(div 16384 "$qm" %d) | $(div 16384 "$um" %d) | **$(ratio "$qm" "$um")** |"
done

echo
echo "| ublkd alone | 1 | 2 | 2/1 |"
echo "|---|---|---|---|"
one=(); two=()
for _ in $(seq "$RUNS"); do
    one+=("$(u -f qcow2 -t writeback -s 4k --random -c "$COUNT" -d 32 --threads=1 full.qcow2)")
    two+=("$(u -f qcow2 -t writeback -s 4k --random -c "$COUNT" -d 32 --threads=2 full.qcow2)")
done
o=$(printf '%s\n' "${one[@]}" | median); t=$(printf '%s\n' "${two[@]}" | median)
echo "| threads: 4k random read QD32, writeback (IOPS) | $(div "$COUNT" "$o" %d) | $(div "$COUNT" "$t" %d) | **$(ratio "$o" "$t")** |"
one=(); two=()
for _ in $(seq "$RUNS"); do one+=("$(alloc ublkd 32 1)"); two+=("$(alloc ublkd 32 2)"); done
o=$(printf '%s\n' "${one[@]}" | median); t=$(printf '%s\n' "${two[@]}" | median)
echo "| threads: allocating 4k writes QD32, none (writes/s) | $(div 16384 "$o" %d) | $(div 16384 "$t" %d) | **$(ratio "$o" "$t")** |"

echo
echo "| ublkd 4k random read QD32, -t none | raw IOPS | qcow2 IOPS | qcow2/raw |"
echo "|---|---|---|---|"
rs=(); cs=()
for _ in $(seq "$RUNS"); do
    rs+=("$(u -f raw -t none -s 4k --random -c "$COUNT" -d 32 full.raw)")
    cs+=("$(u -f qcow2 -t none -s 4k --random -c "$COUNT" -d 32 full.qcow2)")
done
r=$(printf '%s\n' "${rs[@]}" | median); c=$(printf '%s\n' "${cs[@]}" | median)
echo "| allocated clusters | $(div "$COUNT" "$r" %d) | $(div "$COUNT" "$c" %d) | **$(ratio "$r" "$c")** |"
