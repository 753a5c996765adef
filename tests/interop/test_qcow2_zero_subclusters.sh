#!/bin/bash
# Write-zeroes of whole subclusters on extended_l2=on images: the same
# `write -z` sequence through qemu-io and `ublkd img io` on copies of one
# image (allocated, partly allocated, unallocated over a backing file or
# over nothing and compressed clusters; requests inside a cluster, across
# two, at the end of the image, with and without -u, and parts of a
# subcluster whose rest reads as zeros or not; and the same on an image
# without extended L2) leaves the same map, contents
# and the same L2 entries and bitmaps; both checks are clean.
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
require_format qcow2
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3

run() {   # run TAG CREATE-OPTIONS: one image, both tools
    local tag=$1 opts=$2
    qemu-img create -q -f qcow2 base.qcow2 1M
    qemu-io -c "write -P 7 0 1M" base.qcow2 > /dev/null || fail "$tag: qemu-io base"
    if [ "${3:-}" = nobacking ]; then
        qemu-img create -q -f qcow2 -o "$opts" x.qcow2 1M
    else
        qemu-img create -q -f qcow2 -o "$opts" -b base.qcow2 -F qcow2 x.qcow2 1M
    fi
    qemu-io -c "write -P 1 0 64k" -c "write -c -P 3 128k 64k" -c "write -P 4 192k 64k" \
            -c "write -P 5 256k 4k" -c "write -P 6 320k 64k" x.qcow2 > /dev/null ||
        fail "$tag: qemu-io x"
    cp x.qcow2 q.qcow2; cp x.qcow2 u.qcow2
    local cmds=(-c "write -z 4k 8k" -c "write -z 66k 4k" -c "write -z 136k 8k"
                -c "write -z 60k 10k" -c "write -z -u 192k 32k" -c "write -z -u 224k 32k"
                -c "write -z 256k 2k" -c "write -z 320k 32k" -c "write -z 352k 32k"
                -c "write -z 448k 2k" -c "write -z 510k 4k" -c "write -z -u 1020k 4k"
                -c "write -z 700k 1k" -c "write -z 4608 512" -c "write -z 1023k 1k"
                -c "write -z 771k 1k" -c "write -z 200k 1k" -c "write -z 130k 1k")
    qemu-io "${cmds[@]}" q.qcow2 > q.out || fail "$tag: qemu-io write -z"
    "$UBLKD" img io "${cmds[@]}" u.qcow2 > u.out || fail "$tag: ublkd img io write -z"
    qemu-img map --output=json q.qcow2 > q.map
    qemu-img map --output=json u.qcow2 > u.map
    diff q.map u.map >&2 || fail "$tag: maps differ"
    qemu-img compare -q q.qcow2 u.qcow2 || fail "$tag: contents differ"
    qemu-img check -q u.qcow2 || fail "$tag: qemu-img check of ublkd's image"
    "$UBLKD" img check q.qcow2 > /dev/null || fail "$tag: ublkd img check of qemu's image"
    "$UBLKD" img check u.qcow2 > /dev/null || fail "$tag: ublkd img check of its image"
    # the L2 entries and bitmaps of the first 16 clusters, as QEMU wrote them
    $PY - q.qcow2 u.qcow2 <<'PYEOF' || fail "$tag: L2 entries or bitmaps differ"
import struct, sys
def l2(p):
    with open(p, "rb") as f:
        f.seek(72); es = 16 if struct.unpack(">Q", f.read(8))[0] & 16 else 8
        f.seek(40); l1 = struct.unpack(">Q", f.read(8))[0]
        f.seek(l1); t = struct.unpack(">Q", f.read(8))[0] & 0x00fffffffffffe00
        f.seek(t); return es, f.read(16 * es)
(es, a), (_, b) = l2(sys.argv[1]), l2(sys.argv[2])
if a != b:
    for i in range(16):
        print(i, a[es*i:es*i+es].hex(), b[es*i:es*i+es].hex(), file=sys.stderr)
    sys.exit(1)
PYEOF
}

run "64k/2k" "extended_l2=on,cluster_size=65536"
run "32k/1k" "extended_l2=on,cluster_size=32768"
run "64k/2k, no backing file" "extended_l2=on,cluster_size=65536" nobacking
# without extended L2 the same requests work on whole clusters
run "64k, no backing file" "extended_l2=off" nobacking
echo "zero subclusters: same as qemu-io"
