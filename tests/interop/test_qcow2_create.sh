#!/bin/bash
# `ublkd img create -f qcow2 -o ...` makes the very bytes qemu-img 7.2 makes
# (cmp of the images, and of external data files), prints the same
# "Formatting" line, and refuses what qemu-img refuses, leaving no file.
. "$(dirname "$0")/lib.sh"
require_format qcow2 raw

n_ok=0
have_zstd=false
grep -q "^#define CONFIG_ZSTD 1" "$(dirname "$UBLKD")/config.h" 2>/dev/null && have_zstd=true
qemu-img create -q -f qcow2 base.qcow2 4M
qemu-img create -q -f raw base.raw 3M

# same SIZE OPTS: both tools create with -o OPTS (DATA stands for a data
# file name of each tool's own); the images and data files are identical.
same() {
    local size=$1 o=$2 qo uo
    rm -f q.qcow2 u.qcow2 qd.raw ud.raw
    qo=${o//DATA/qd.raw}
    uo=${o//DATA/ud.raw}
    qemu-img create -f qcow2 ${qo:+-o "$qo"} q.qcow2 "$size" > q.out || fail "qemu-img create $o"
    "$UBLKD" img create -f qcow2 ${uo:+-o "$uo"} u.qcow2 "$size" > u.out ||
        fail "ublkd img create -o $o $size"
    sed -i -e 's/q\.qcow2/IMG/' -e 's/qd\.raw/DATA/' q.out
    sed -i -e 's/u\.qcow2/IMG/' -e 's/ud\.raw/DATA/' u.out
    diff -u q.out u.out >&2 || fail "Formatting line differs for -o $o"
    if [[ $o == *DATA* ]]; then
        # the header records the data file's name: make the names alike
        sed -i 's/qd\.raw/XX.raw/' q.qcow2
        sed -i 's/ud\.raw/XX.raw/' u.qcow2
        cmp qd.raw ud.raw || fail "data files differ for -o $o $size"
    fi
    cmp q.qcow2 u.qcow2 || fail "images differ for -o $o $size"
    n_ok=$((n_ok + 1))
}

same 1M ""
same 0 ""
same 1000 ""
same 5G ""
same 2T ""
same 100T cluster_size=2M
same 1M compat=0.10
same 3M compat=1.1,lazy_refcounts=on
for cs in 512 1k 4k 16k 64k 2M; do
    same 7M cluster_size=$cs
done
for rb in 1 2 4 8 32 64; do
    same 5M refcount_bits=$rb
done
$have_zstd && same 1M compression_type=zstd
same 1M extended_l2=on,cluster_size=16k
# Large images whose L1 table needs more refcount blocks, and one whose
# refcount table must grow (512-byte clusters, 64-bit refcounts).
same 64M cluster_size=512,refcount_bits=64
same 1G cluster_size=512,refcount_bits=64
for p in metadata falloc full; do
    same 5M preallocation=$p
    same 1000000 preallocation=$p
    same 60M preallocation=$p,cluster_size=4k
    same 10M preallocation=$p,cluster_size=2M,refcount_bits=1
    same 3M preallocation=$p,extended_l2=on
    same 100M preallocation=$p,cluster_size=512,refcount_bits=64
done
same 0 preallocation=metadata
same 0 preallocation=falloc
same 4M backing_file=base.qcow2,backing_fmt=qcow2
same 4M backing_file=base.raw,backing_fmt=raw,compat=0.10
same 4M backing_file=base.qcow2,backing_fmt=qcow2,extended_l2=on,preallocation=metadata
same 4M backing_file=base.qcow2,backing_fmt=qcow2,extended_l2=on,preallocation=falloc
same 3M data_file=DATA
same 1000000 data_file=DATA
same 1M data_file=DATA,data_file_raw=on
same 5M data_file=DATA,preallocation=full
same 1000000 data_file=DATA,preallocation=metadata

# -b/-F give the same image as -o backing_file/backing_fmt; the size comes
# from the backing file.
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 q.qcow2
"$UBLKD" img create -q -f qcow2 -b base.qcow2 -F qcow2 u.qcow2 || fail "create -b -F"
cmp q.qcow2 u.qcow2 || fail "create -b -F: images differ"
n_ok=$((n_ok + 1))

# Images we make open in qemu-img and check clean.
"$UBLKD" img create -q -f qcow2 -o preallocation=metadata,cluster_size=4k c.qcow2 50M
qemu-img check c.qcow2 > /dev/null || fail "qemu-img check of a preallocated image"

# Refusals: qemu-img's message, exit 1, no file left behind.
refuse() {
    local o=$1 msg=$2
    rm -f e.qcow2
    expect_rc 1 "$UBLKD" img create -q -f qcow2 -o "$o" e.qcow2 1M
    expect_out "$msg"
    [ ! -e e.qcow2 ] || fail "-o $o left e.qcow2 behind"
    n_ok=$((n_ok + 1))
}
refuse cluster_size=1000 "Cluster size must be a power of two between 512 and 2048k"
refuse cluster_size=4M "Cluster size must be a power of two between 512 and 2048k"
refuse refcount_bits=3 "Refcount width must be a power of two and may not exceed 64 bits"
refuse refcount_bits=128 "Refcount width must be a power of two and may not exceed 64 bits"
refuse compat=0.10,lazy_refcounts=on "Lazy refcounts only supported with compatibility level 1.1"
refuse compat=0.10,refcount_bits=8 "Different refcount widths than 16 bits require compatibility level 1.1"
refuse compat=1.2 "Parameter 'version' does not accept value '1.2'"
refuse extended_l2=on,cluster_size=8k "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes"
refuse compat=0.10,extended_l2=on "Extended L2 entries are only supported with compatibility level 1.1"
refuse data_file_raw=on "data-file-raw requires data-file"
refuse compression_type=lz4 "Parameter 'compression-type' does not accept value 'lz4'"
$have_zstd && refuse compat=0.10,compression_type=zstd "Non-zlib compression type is only supported with compatibility level 1.1"
refuse preallocation=foo "Parameter 'preallocation' does not accept value 'foo'"
refuse compat=0.10,data_file=x.raw "External data files are only supported with compatibility level 1.1"
refuse backing_fmt=raw "Backing format cannot be used without backing file"
refuse backing_file=base.qcow2,backing_fmt=qcow2,preallocation=metadata "Backing file and preallocation can only be used at the same time if extended_l2 is on"
refuse backing_file=base.raw,backing_fmt=raw,data_file=x.raw,data_file_raw=on "Backing file and data-file-raw cannot be used at the same time"
rm -f e.qcow2
expect_rc 1 "$UBLKD" img create -q -f qcow2 -o cluster_size=512 e.qcow2 2T
expect_out "The image size is too large for file format 'qcow2' (try using a larger cluster size)"
[ ! -e e.qcow2 ] || fail "too large: e.qcow2 left behind"
expect_rc 1 "$UBLKD" img create -q -f qcow2 -b base.qcow2 e.qcow2
expect_out "Backing file specified without backing format"
expect_out "Detected format of qcow2."

# A relative backing name is relative to the new image's directory, for the size it
# takes as well (qemu-img: 2M from sub/rel.qcow2, not 1M from ./rel.qcow2).
mkdir -p sub
"$QEMU_IMG" create -q -f qcow2 rel.qcow2 1M
"$QEMU_IMG" create -q -f qcow2 sub/rel.qcow2 2M
"$QEMU_IMG" create -q -f qcow2 -b rel.qcow2 -F qcow2 sub/q-top.qcow2
"$UBLKD" img create -q -f qcow2 -b rel.qcow2 -F qcow2 sub/u-top.qcow2 || fail "create -b rel.qcow2 sub/u-top.qcow2"
qs=$("$QEMU_IMG" info --output=json sub/q-top.qcow2 | jq '."virtual-size"')
us=$("$QEMU_IMG" info --output=json sub/u-top.qcow2 | jq '."virtual-size"')
[ "$qs" = 2097152 ] && [ "$us" = "$qs" ] || fail "backing relative to the image: size $us, qemu-img $qs"
cmp sub/q-top.qcow2 sub/u-top.qcow2 || fail "create -b rel.qcow2 in a subdirectory differs from qemu-img's"

echo "ok: $n_ok qcow2 creations match qemu-img"
