#!/bin/bash
# qcow2 images made by qemu-img 7.2 with every option read identically
# through ublkd and qemu-img (sha256 of a raw convert), and `img map
# --output=json` prints what qemu-img map prints.
. "$(dirname "$0")/lib.sh"
require_format qcow2 raw

n_ok=0
# zstd images only when the build has zstd (make CONFIG_ZSTD=n refuses them)
cts="zlib"
grep -q "^#define CONFIG_ZSTD 1" "$(dirname "$UBLKD")/config.h" 2>/dev/null && cts="zlib zstd"
sha() { sha256sum "$1" | cut -d' ' -f1; }

# same IMG TAG: raw converts and JSON maps of both tools are identical.
same() {
    local img=$1 tag=$2
    qemu-img convert -O raw "$img" "$tag.q.raw" || fail "$tag: qemu-img convert"
    "$UBLKD" img convert -O raw "$img" "$tag.u.raw" || fail "$tag: ublkd img convert"
    [ "$(sha "$tag.q.raw")" = "$(sha "$tag.u.raw")" ] || fail "$tag: raw images differ"
    qemu-img map --output=json "$img" > "$tag.q.map" || fail "$tag: qemu-img map"
    "$UBLKD" img map --output=json "$img" > "$tag.u.map" || fail "$tag: ublkd img map"
    diff -u "$tag.q.map" "$tag.u.map" >&2 || fail "$tag: map output differs"
    rm -f "$tag.q.raw" "$tag.u.raw"
    n_ok=$((n_ok + 1))
}

# A pattern of writes, zero writes and discards over an image of size $2.
fill() {
    local img=$1 size=$2
    qemu-io -c "write -P 0x11 0 4k" -c "write -P 0x22 $((size / 3)) 100k" \
        -c "write -z $((size / 2)) 64k" -c "write -P 0x33 $((size - 1536)) 1536" \
        -c "write -P 0x44 70k 3k" -c "discard 80k 8k" "$img" >/dev/null || fail "qemu-io on $img"
}

# Cluster sizes, both compat levels, refcount widths.
for cs in 512 4096 65536 2M; do
    for compat in 0.10 1.1; do
        qemu-img create -q -f qcow2 -o cluster_size=$cs,compat=$compat c.qcow2 9M
        fill c.qcow2 $((9 * 1024 * 1024))
        same c.qcow2 "cs$cs-$compat"
    done
done
for rb in 1 2 4 8 16 32 64; do
    qemu-img create -q -f qcow2 -o refcount_bits=$rb,cluster_size=4096 r.qcow2 5M
    fill r.qcow2 $((5 * 1024 * 1024))
    same r.qcow2 "refcount$rb"
done
qemu-img create -q -f qcow2 -o lazy_refcounts=on l.qcow2 5M
fill l.qcow2 $((5 * 1024 * 1024))
same l.qcow2 lazy

# Preallocation: metadata (map asks the file about holes), falloc, full.
for p in metadata falloc full; do
    qemu-img create -q -f qcow2 -o preallocation=$p p.qcow2 3M
    qemu-io -c "write -P 0x55 1M 64k" p.qcow2 >/dev/null
    same p.qcow2 "prealloc-$p"
done

# Odd sizes (not cluster multiples; qemu rounds odd bytes up to a sector).
for sz in 1 511 513 65537 $((1024 * 1024 + 7)); do
    qemu-img create -q -f qcow2 o.qcow2 $sz
    qemu-io -c "write -P 0x66 0 512" o.qcow2 >/dev/null
    same o.qcow2 "size$sz"
done
qemu-img create -q -f qcow2 e.qcow2 0
same e.qcow2 empty

# Extended L2: subcluster writes, zeroes, with and without backing.
for cs in 16k 64k 2M; do
    qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=$cs x.qcow2 6M
    qemu-io -c "write -P 0x77 0 4k" -c "write -P 0x78 9k 1k" -c "write -z 20k 30k" \
        -c "write -P 0x79 1M 200k" -c "discard 1M 64k" x.qcow2 >/dev/null
    same x.qcow2 "extl2-$cs"
done

# Backing chains three deep, of mixed formats, shorter backing files.
qemu-img create -q -f raw base.raw 2M
qemu-io -f raw -c "write -P 0xa1 0 2M" base.raw >/dev/null
qemu-img create -q -f qcow2 -b base.raw -F raw mid.qcow2 4M
qemu-io -c "write -P 0xa2 64k 64k" -c "write -z 512k 64k" mid.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o extended_l2=on -b mid.qcow2 -F qcow2 top.qcow2 6M
qemu-io -c "write -P 0xa3 4k 4k" -c "write -P 0xa4 3M 64k" -c "write -z 100k 4k" \
    top.qcow2 >/dev/null
same top.qcow2 chain3
qemu-img create -q -f qcow2 -b top.qcow2 -F qcow2 -o compat=0.10 top2.qcow2 6M
same top2.qcow2 chain4-v2
# backing with a relative name in another directory
mkdir -p sub
qemu-img create -q -f qcow2 -b ../mid.qcow2 -F qcow2 sub/rel.qcow2 4M
same sub/rel.qcow2 backing-relative

# External data file, plain and raw.
qemu-img create -q -f qcow2 -o data_file=d1.raw dfile.qcow2 4M
fill dfile.qcow2 $((4 * 1024 * 1024))
same dfile.qcow2 data-file
qemu-img create -q -f qcow2 -o data_file=d2.raw,data_file_raw=on dfraw.qcow2 4M
fill dfraw.qcow2 $((4 * 1024 * 1024))
same dfraw.qcow2 data-file-raw

# Compressed clusters, zlib and zstd, several cluster sizes.
qemu-img create -q -f raw src.raw 3M
qemu-io -f raw -c "write -P 0xc1 0 1M" -c "write -P 0xc2 1200k 333k" src.raw >/dev/null
head -c 300000 /dev/urandom | dd of=src.raw bs=1 seek=2000000 conv=notrunc status=none
for ct in $cts; do
    for cs in 512 4096 65536 2M; do
        qemu-img convert -c -O qcow2 -o compression_type=$ct,cluster_size=$cs src.raw z.qcow2
        same z.qcow2 "compressed-$ct-$cs"
    done
done
# A compressed image under a writable overlay.
qemu-img convert -c -O qcow2 src.raw zb.qcow2
qemu-img create -q -f qcow2 -b zb.qcow2 -F qcow2 zt.qcow2 3M
qemu-io -c "write -P 0xd1 70k 10k" zt.qcow2 >/dev/null
same zt.qcow2 compressed-backing

# info: the format-specific lines are qemu-img's.
info_same() {
    qemu-img info "$1" | sed -n '/^Format specific/,$p' > "$2.q.info"
    "$UBLKD" img info "$1" | sed -n '/^Format specific/,$p' > "$2.u.info"
    diff -u "$2.q.info" "$2.u.info" >&2 || fail "$2: info differs"
    n_ok=$((n_ok + 1))
}
info_same l.qcow2 info-lazy
info_same top.qcow2 info-extl2
info_same top2.qcow2 info-v2
info_same dfraw.qcow2 info-data-file-raw
qemu-img create -q -f qcow2 -o compression_type=${cts##* },refcount_bits=1 i.qcow2 1M
info_same i.qcow2 info-refcount1

# Backing loops (qemu-img 7.2 recurses until memory runs out: not asked).
qemu-img create -q -f qcow2 self.qcow2 1M
qemu-img rebase -u -b self.qcow2 -F qcow2 self.qcow2
expect_rc 1 timeout 60 "$UBLKD" img convert -O raw self.qcow2 self.raw
expect_out "makes a loop in the backing chain"
qemu-img create -q -f qcow2 la.qcow2 1M
qemu-img create -q -f qcow2 -b la.qcow2 -F qcow2 lb.qcow2 1M
qemu-img rebase -u -b lb.qcow2 -F qcow2 la.qcow2
expect_rc 1 timeout 60 "$UBLKD" img map la.qcow2
expect_out "Backing file 'la.qcow2' of 'lb.qcow2' makes a loop in the backing chain"


echo "ok: $n_ok qcow2 images and infos match qemu-img"
