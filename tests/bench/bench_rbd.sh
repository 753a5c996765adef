#!/bin/bash
# bench_rbd.sh - ublkd img bench over the rbd protocol against `rbd bench` (librbd's own
# tool, no block layer) on the same image of a throwaway single-host cluster
# (tests/ceph/cluster.sh: one memstore OSD, so the figures are librbd's and the OSD's CPU
# cost on this machine, not a network's).  4k random writes and reads at QD16, 64k
# sequential writes at QD8; each figure the median of RUNS runs, tools interleaved.
# A benchmark, not a test: it never fails on numbers.
#   UBLKD=build/ublkd RUNS=3 COUNT=8192 tests/bench/bench_rbd.sh
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
UBLKD=${UBLKD:-$HERE/../../build/ublkd}
RUNS=${RUNS:-3}
COUNT=${COUNT:-8192}
CL=$(mktemp -d /tmp/ublkd-bench-rbd.XXXXXX)
trap '"$HERE/../ceph/cluster.sh" stop "$CL"; rm -rf "$CL"' EXIT
"$HERE/../ceph/cluster.sh" start "$CL"
export CEPH_CONF=$CL/ceph.conf
rbd create --size 512M rbd/bench
# Fill it first, so reads find data and writes overwrite allocated objects.
rbd bench --io-type write --io-size 4M --io-threads 4 --io-total 512M --io-pattern seq rbd/bench >/dev/null

# rbd bench prints "elapsed: S ops: N ops/sec: X bytes/sec: ..."
rbd_iops() { sed -n 's/^elapsed:.*ops\/sec: *\([0-9.]*\).*/\1/p' <<<"$1"; }
u_iops() { local s; s=$(secs_of "$1"); div "$2" "$s" %.0f; }
# row LABEL SIZE QD PATTERN TYPE
row() {
    local label=$1 size=$2 qd=$3 pattern=$4 type=$5 rs=() us=() uargs=()
    uargs=(-f raw -c "$COUNT" -s "$size" -d "$qd")
    [ "$type" = write ] && uargs+=(-w)
    [ "$pattern" = rand ] && uargs+=(--random)
    for _ in $(seq "$RUNS"); do
        rs+=("$(rbd_iops "$(rbd bench --io-type "$type" --io-size "$size" --io-threads "$qd" \
            --io-total $((COUNT * size)) --io-pattern "$pattern" rbd/bench 2>&1 | tail -n 1)")")
        us+=("$(u_iops "$("$UBLKD" img bench "${uargs[@]}" rbd:rbd/bench 2>&1)" "$COUNT")")
    done
    local rm um
    rm=$(printf '%s\n' "${rs[@]}" | median)
    um=$(printf '%s\n' "${us[@]}" | median)
    printf '%-28s %12s %12s %8s\n' "$label" "$rm" "$um" "$(ratio "$um" "$rm")"
}
printf '%-28s %12s %12s %8s\n' "ops/s (median of $RUNS)" "rbd bench" "ublkd img" "ublkd/rbd"
row "4k random write QD16" 4096 16 rand write
row "4k random read QD16" 4096 16 rand read
row "64k sequential write QD8" 65536 8 seq write
