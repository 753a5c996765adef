#!/bin/bash
# bench_vdi.sh - ublkd img bench vs qemu-img bench on vdi (docs/PERFORMANCE.md).
#   1. 4k reads and writes at QD32 on a fully allocated 1 GiB vdi (made by
#      qemu-img convert from random data), offsets scattered over the image
#      with the same stride for both tools (qemu-img 7.2 bench has no random
#      mode); ublkd's --random is reported too.
#   2. allocating sequential 1 MiB writes into an empty 1 GiB dynamic vdi.
# Each figure is the best of RUNS runs.  Needs ~2 GiB in $DIR.
set -eu
UBLKD=${UBLKD:-$(dirname "$0")/../../build/ublkd}
DIR=${DIR:-/tmp/ublkd-bench-vdi}
RUNS=${RUNS:-3}
CACHE=${CACHE:-none}
COUNT=${COUNT:-200000}
STRIDE=$((4096 * 2731))          # co-prime with the image size in 4k units
mkdir -p "$DIR"
cd "$DIR"
[ -f full.vdi ] || { head -c 1G /dev/urandom > src.raw; qemu-img convert -f raw -O vdi src.raw full.vdi; rm -f src.raw; }

best() {   # command...: prints the best "Run completed in X seconds" of RUNS runs
    local b=
    for _ in $(seq "$RUNS"); do
        t=$("$@" 2>&1 | sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p')
        [ -z "$b" ] || lt "$t" "$b" && b=$t
    done
    echo "$b"
}
. "$(dirname "$0")/lib.sh"
lt() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }
iops() { div "$1" "$2" %d; }

for mode in read write; do
    w=; [ $mode = write ] && w=-w
    q=$(best qemu-img bench $w -t "$CACHE" -i io_uring -f vdi -s 4k -S $STRIDE -c "$COUNT" -d 32 full.vdi)
    u=$(best "$UBLKD" img bench $w -t "$CACHE" -f vdi -s 4k -S $STRIDE -c "$COUNT" -d 32 full.vdi)
    r=$(best "$UBLKD" img bench $w -t "$CACHE" -f vdi -s 4k --random -c "$COUNT" -d 32 full.vdi)
    echo "4k $mode QD32 stride: qemu-img $(iops "$COUNT" "$q") IOPS, ublkd $(iops "$COUNT" "$u") IOPS" \
         "(x$(div "$q" "$u" %.2f)); ublkd --random $(iops "$COUNT" "$r") IOPS"
done

for tool in qemu-img ublkd; do
    b=
    for _ in $(seq "$RUNS"); do
        rm -f empty.vdi
        qemu-img create -q -f vdi empty.vdi 1G
        if [ $tool = qemu-img ]; then
            t=$(qemu-img bench -w -t "$CACHE" -i io_uring -f vdi -s 1M -S 1M -c 1024 -d 4 empty.vdi 2>&1)
        else
            t=$("$UBLKD" img bench -w -t "$CACHE" -f vdi -s 1M -S 1M -c 1024 -d 4 empty.vdi 2>&1)
        fi
        t=$(echo "$t" | sed -n 's/^Run completed in \([0-9.]*\) seconds.*/\1/p')
        [ -z "$b" ] || lt "$t" "$b" && b=$t
        qemu-img check -q empty.vdi || echo "$tool: qemu-img check failed"
    done
    echo "allocating 1M sequential writes, 1 GiB, QD4: $tool $(div 1024 "$b" %d) MiB/s"
done
