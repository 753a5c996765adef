#!/bin/bash
# img measure (qcow2 lifecycle issue, item 6): ublkd img measure prints
# qemu-img 7.2's figures and messages byte for byte, for images (sparse raw,
# qcow2 with data, zero clusters, a backing chain, persistent bitmaps) and for
# bare sizes, across cluster sizes, refcount widths, extended L2, versions,
# preallocation modes and every option error qemu-img reports.  Then the
# figure is checked against reality: a convert into a file of exactly the
# "required" size fits.
. "$(dirname "$0")/lib.sh"
require_format qcow2

both() {
    "$QEMU_IMG" measure "$@" >q.out 2>&1
    local qrc=$?
    uimg measure "$@" >u.out 2>&1
    local urc=$?
    [ $urc = $qrc ] || { sed 's/^/    u| /' u.out >&2; sed 's/^/    q| /' q.out >&2
                         fail "measure $*: ublkd exit $urc, qemu-img $qrc"; }
    same_output "measure $*" u.out q.out
}

"$QEMU_IMG" create -q -f qcow2 a.qcow2 1G
"$QEMU_IO" -c 'write -P 1 0 3M' -c 'write 100M 64k' -c 'write -z 200M 1M' \
           -c 'write -P 2 300M 1k' a.qcow2 >/dev/null
"$QEMU_IMG" create -q -f qcow2 b.qcow2 100M
"$QEMU_IMG" bitmap --add b.qcow2 bm1
"$QEMU_IMG" bitmap --add -g 4k b.qcow2 a-much-longer-bitmap-name
truncate -s 10M h.raw
printf x | dd of=h.raw bs=1 seek=5M conv=notrunc status=none
printf y | dd of=h.raw bs=1 seek=9M conv=notrunc status=none
"$QEMU_IMG" create -q -f qcow2 -b a.qcow2 -F qcow2 ov.qcow2
"$QEMU_IO" -c 'write -P 3 500M 128k' ov.qcow2 >/dev/null
"$QEMU_IMG" create -q -f qcow2 -o compat=0.10 v2.qcow2 64M
"$QEMU_IO" -c 'write -P 4 1M 1M' v2.qcow2 >/dev/null

n=0
while IFS= read -r line; do
    [ -z "$line" ] && continue
    eval "set -- $line"
    both "$@"
    n=$((n + 1))
done <<'CASES'
a.qcow2
-O qcow2 a.qcow2
-O qcow2 --size 1G
-O raw --size 1G
--size 1000
--size 0
-O qcow2 --size 0
-O qcow2 -o cluster_size=4k a.qcow2
-O qcow2 -o cluster_size=512 a.qcow2
-O qcow2 -o cluster_size=2M a.qcow2
-O qcow2 -o cluster_size=1k h.raw
-O qcow2 -o compat=0.10 a.qcow2
-O qcow2 -o compat=1.1,lazy_refcounts=on a.qcow2
-O qcow2 -o lazy_refcounts --size 1M
-O qcow2 -o preallocation=full a.qcow2
-O qcow2 -o preallocation=falloc --size 1G
-O qcow2 -o preallocation=metadata a.qcow2
-O qcow2 -o backing_file=x a.qcow2
-O qcow2 -o extended_l2=on a.qcow2
-O qcow2 -o extended_l2=on,cluster_size=2M --size 100G
-O qcow2 -o refcount_bits=64 --size 1G
-O qcow2 -o refcount_bits=1 --size 1G
-O qcow2 -o refcount_bits=1,cluster_size=512 --size 10G
-O qcow2 -o cluster_size=64k -o cluster_size=4k --size 1G
-O qcow2 -o size=5M a.qcow2
-O qcow2 -o size=2M --size 1M
-O qcow2 -o compression_type=zstd,data_file_raw=on,backing_fmt=raw --size 1M
-O qcow2 --size 1P
-O qcow2 b.qcow2
-O qcow2 -o cluster_size=4k b.qcow2
-O qcow2 -o compat=0.10 b.qcow2
-O qcow2 h.raw
-O qcow2 -f raw h.raw
-O qcow2 ov.qcow2
-O qcow2 v2.qcow2
-O raw v2.qcow2
-U -O qcow2 a.qcow2
-O qcow2 'json:{"driver":"qcow2","file":{"driver":"file","filename":"a.qcow2"}}'
-O qcow2 --image-opts driver=qcow2,file.filename=a.qcow2
--output=json -O qcow2 a.qcow2
--output=json -O qcow2 --size 1G
--output=json h.raw
-O qcow2 -o cluster_size=3000 a.qcow2
-O qcow2 -o cluster_size=4M --size 1G
-O qcow2 -o cluster_size=256 --size 1G
-O qcow2 -o cluster_size=0 --size 1G
-O qcow2 -o cluster_size=abc a.qcow2
-O qcow2 -o cluster_size=512 --size 1T
-O qcow2 -o compat=v3 a.qcow2
-O qcow2 -o compat=0.9 a.qcow2
-O qcow2 -o refcount_bits=3 a.qcow2
-O qcow2 -o refcount_bits=0 --size 1G
-O qcow2 -o refcount_bits=abc a.qcow2
-O qcow2 -o refcount_bits=8,compat=0.10 a.qcow2
-O qcow2 -o preallocation=foo a.qcow2
-O qcow2 -o extended_l2=on,cluster_size=4k a.qcow2
-O qcow2 -o lazy_refcounts=maybe a.qcow2
-O qcow2 -o foo=1 a.qcow2
-O raw -o cluster_size=4k --size 1M
-O raw -o preallocation=foo --size 1M
-O vdi a.qcow2
-O nope a.qcow2
-O qcow2 -o help
a.qcow2 b
--size 1G a.qcow2
-f raw

-O qcow2 --size -5
-O qcow2 --size 1x
-O qcow2 --size 16E
--output=xml a.qcow2
missing.img
CASES
# The empty line above is skipped: run the no-argument case by itself.
both
n=$((n + 1))
[ $n -ge 70 ] || fail "only $n cases ran"

# The figure is enough: a convert into a file capped at "required" bytes
# succeeds (a full file system would fail it with ENOSPC).
req=$(uimg measure -O qcow2 ov.qcow2 | sed -n 's/^required size: //p')
[ -n "$req" ] || fail "no required size for ov.qcow2"
uimg convert -O qcow2 ov.qcow2 flat.qcow2 || fail "convert ov.qcow2"
size=$(stat -c %s flat.qcow2)
[ "$size" -le "$req" ] || fail "convert made $size bytes, measure said $req"
uimg compare ov.qcow2 flat.qcow2 >/dev/null || fail "flat.qcow2 differs from ov.qcow2"
echo "measure: $n cases identical to qemu-img; convert of ov.qcow2 $size <= $req bytes"
