#!/bin/bash
# Writes through ublkd to qcow2 images: the same operations done by qemu-io
# on a copy give images that read identically (qemu-img compare), ublkd's
# image passes qemu-img check with no errors and no leaks, and where QEMU's
# allocator would put the clusters in the same places the files are
# byte-identical.  Concurrent random writes (img bench, two threads) leave
# a clean image.
. "$(dirname "$0")/lib.sh"
require_format qcow2 raw

n_ok=0

# clean IMG: qemu-img check finds nothing (exit 0, no leaks).
clean() {
    qemu-img check "$1" > check.out 2>&1 || { cat check.out >&2; fail "qemu-img check $1"; }
    grep -q "leaked" check.out && { cat check.out >&2; fail "$1 leaks clusters"; }
    return 0
}

# same_ops TAG OPTS [BACKING]: a fresh image, both tools run the operations.
same_ops() {
    local tag=$1 o=$2 backing=${3:-}
    rm -f u.qcow2 q.qcow2
    if [ -n "$backing" ]; then
        qemu-img create -q -f qcow2 ${o:+-o "$o"} -b "$backing" -F qcow2 u.qcow2 8M
    else
        qemu-img create -q -f qcow2 ${o:+-o "$o"} u.qcow2 8M
    fi
    cp u.qcow2 q.qcow2
    "$UBLKD" img io -d unmap "${ops[@]}" u.qcow2 > /dev/null || fail "$tag: ublkd img io"
    qemu-io -d unmap "${ops[@]}" q.qcow2 > /dev/null || fail "$tag: qemu-io"
    qemu-img compare u.qcow2 q.qcow2 > /dev/null || fail "$tag: images read differently"
    clean u.qcow2
    n_ok=$((n_ok + 1))
}

ops=(-c "write -P 0x99 1M 700" -c "write -P 0x11 0 4k" -c "write -P 0x22 100k 200k" -c "write -P 0x33 65000 1000"
     -c "write -P 0x44 5M 3M" -c "write -P 0x55 8380416 8192" -c "write -P 0x66 4k 4k"
     -c "write -z 64k 128k" -c "write -z -u 256k 200k" -c "discard 512k 300k"
     -c "write -P 0x77 2M 100k" -c "discard 2M 64k" -c "write -z 3M 5000"
     -c "write -P 0x88 1M 1")
qemu-img create -q -f qcow2 base.qcow2 8M
qemu-io -c "write -P 0xb0 0 8M" base.qcow2 > /dev/null
for o in "" compat=0.10 cluster_size=512 cluster_size=4k cluster_size=2M refcount_bits=1 \
         refcount_bits=64,cluster_size=512 lazy_refcounts=on extended_l2=on,cluster_size=16k \
         extended_l2=on extended_l2=on,cluster_size=2M; do
    same_ops "plain $o" "$o"
    same_ops "backing $o" "$o" base.qcow2
done

# Byte for byte: sequential allocation lands where QEMU puts it, refcount
# blocks and a grown refcount table included.
for o in "" cluster_size=512,refcount_bits=64 cluster_size=4k; do
    rm -f u.qcow2 q.qcow2
    qemu-img create -q -f qcow2 ${o:+-o "$o"} u.qcow2 8M
    cp u.qcow2 q.qcow2
    "$UBLKD" img io -c "write -P 0x11 0 8M" u.qcow2 > /dev/null || fail "fill $o"
    qemu-io -c "write -P 0x11 0 8M" q.qcow2 > /dev/null
    cmp u.qcow2 q.qcow2 || fail "fill $o: files differ from qemu-io's"
    n_ok=$((n_ok + 1))
done

# Overwriting compressed clusters frees their sectors.
for o in "" extended_l2=on; do
    qemu-img convert -c -O qcow2 ${o:+-o "$o"} base.qcow2 z.qcow2
    cp z.qcow2 zq.qcow2
    zops=(-c "write -P 0x12 1000 3000" -c "write -P 0x23 70000 200000" -c "discard 1M 64k")
    "$UBLKD" img io -d unmap "${zops[@]}" z.qcow2 > /dev/null || fail "compressed overwrite $o"
    qemu-io -d unmap "${zops[@]}" zq.qcow2 > /dev/null
    qemu-img compare z.qcow2 zq.qcow2 > /dev/null || fail "compressed overwrite $o reads differently"
    clean z.qcow2
    n_ok=$((n_ok + 1))
done

# External data files, plain and raw.
for raw in off on; do
    rm -f d.qcow2 d.raw dq.qcow2 dq.raw
    qemu-img create -q -f qcow2 -o data_file=d.raw,data_file_raw=$raw d.qcow2 8M
    qemu-img create -q -f qcow2 -o data_file=dq.raw,data_file_raw=$raw dq.qcow2 8M
    "$UBLKD" img io -d unmap "${ops[@]}" d.qcow2 > /dev/null || fail "data file raw=$raw"
    qemu-io -d unmap "${ops[@]}" dq.qcow2 > /dev/null
    qemu-img compare d.qcow2 dq.qcow2 > /dev/null || fail "data file raw=$raw reads differently"
    clean d.qcow2
    if [ $raw = on ]; then
        cmp d.raw dq.raw || fail "raw data file differs"
    fi
    n_ok=$((n_ok + 1))
done

# Concurrent random writes from two threads: a clean image that reads the
# same through both tools.
for o in cluster_size=4k lazy_refcounts=on,cluster_size=64k extended_l2=on,cluster_size=32k; do
    rm -f r.qcow2
    qemu-img create -q -f qcow2 -o "$o" r.qcow2 64M
    "$UBLKD" img bench -w -f qcow2 -c 20000 -d 32 -s 4096 --random --threads=2 \
        --pattern=0x5a r.qcow2 > /dev/null || fail "bench $o"
    clean r.qcow2
    qemu-img convert -O raw r.qcow2 rq.raw
    "$UBLKD" img convert -O raw r.qcow2 ru.raw || fail "convert after bench"
    cmp rq.raw ru.raw || fail "bench $o: reads differ"
    n_ok=$((n_ok + 1))
done
qemu-img create -q -f qcow2 -o lazy_refcounts=on r.qcow2 8M
"$UBLKD" img io -c "write -P 1 0 1M" r.qcow2 > /dev/null
info=$(qemu-img info r.qcow2)
case $info in *"cleanly shut down: no"*) fail "lazy refcounts: dirty bit left set" ;; esac

# img convert -O qcow2 writes the very file qemu-img convert writes.
qemu-img create -q -f raw src.raw 6M
qemu-io -f raw -c "write -P 0x21 0 1M" -c "write -P 0x22 3M 100k" -c "write -P 0 4M 64k" src.raw > /dev/null
for o in "" cluster_size=4k extended_l2=on compat=0.10,cluster_size=512; do
    rm -f cq.qcow2 cu.qcow2
    qemu-img convert -O qcow2 ${o:+-o "$o"} src.raw cq.qcow2
    "$UBLKD" img convert -O qcow2 ${o:+-o "$o"} src.raw cu.qcow2 || fail "convert -O qcow2 $o"
    cmp cq.qcow2 cu.qcow2 || fail "convert -O qcow2 $o: files differ"
    n_ok=$((n_ok + 1))
done

echo "ok: $n_ok qcow2 write scenarios match qemu-io and check clean"
