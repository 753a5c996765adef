#!/bin/bash
# Compressed qcow2 output and converts onto a backing file, against
# qemu-img/qemu-io 7.2:
# - `img convert -c -O qcow2` (zlib, zstd, -o options): qemu-img check is
#   clean (no leaks), the raw convert has the source's sha256, and the file
#   is byte for byte the one qemu-img convert -c writes;
# - qemu-img's compressed images rewritten in part by ublkd (writes, zero
#   writes, discards, `write -c`) read as the same operations through
#   qemu-io leave them, and check clean;
# - `convert -B`: qemu-img compare with the source, the same file as
#   qemu-img's, and the same map;
# - `img map --output=json` and `img compare` print what qemu-img prints on
#   the images made here (compressed, zero clusters, backing, data file);
# - the refusals: -c to formats without compression, with preallocation.
. "$(dirname "$0")/lib.sh"
require_format qcow2 raw

n_ok=0
cts="zlib"
grep -q "^#define CONFIG_ZSTD 1" "$(dirname "$UBLKD")/config.h" 2>/dev/null && cts="zlib zstd"
sha() { sha256sum "$1" | cut -d' ' -f1; }

# clean IMG: qemu-img check finds nothing (exit 0, no leaks).
clean() {
    qemu-img check "$1" > check.out 2>&1 || { cat check.out >&2; fail "qemu-img check $1"; }
    grep -q "leaked" check.out && { cat check.out >&2; fail "$1 leaks clusters"; }
    return 0
}

# maps_same IMG TAG: both JSON and human maps are qemu-img's, exit codes
# too (the human map refuses compressed clusters).
maps_same() {
    local o rq ru
    for o in json human; do
        qemu-img map --output=$o "$1" 2>&1 | norm > "$2.q.map"; rq=${PIPESTATUS[0]}
        "$UBLKD" img map --output=$o "$1" 2>&1 | norm > "$2.u.map"; ru=${PIPESTATUS[0]}
        diff -u "$2.q.map" "$2.u.map" >&2 || fail "$2: map --output=$o differs"
        [ "$rq" = "$ru" ] || fail "$2: map --output=$o exits $ru, qemu-img $rq"
    done
    [ "$o" = human ] && [ "$rq" = 0 ] && ! grep -q . "$2.q.map" && fail "$2: empty map"
    return 0
}

# compare_same A B [OPTS]: img compare prints qemu-img compare's words and exit code.
compare_same() {
    local a=$1 b=$2 rq ru
    shift 2
    qemu-img compare "$@" "$a" "$b" 2>&1 | norm > cmp.q; rq=${PIPESTATUS[0]}
    "$UBLKD" img compare "$@" "$a" "$b" 2>&1 | norm > cmp.u; ru=${PIPESTATUS[0]}
    diff -u cmp.q cmp.u >&2 || fail "compare $* $a $b: output differs"
    [ "$rq" = "$ru" ] || fail "compare $* $a $b: exit $ru, qemu-img $rq"
}

# A source with text (compresses well), random bytes (does not), zeros, and
# a partial last cluster.
qemu-img create -q -f raw src.raw $((5 * 1024 * 1024 + 1536))
qemu-io -f raw -c "write -P 0xc1 0 1M" -c "write -P 0xc2 1200k 333k" -c "write -P 0x5e 5M 1536" \
    src.raw >/dev/null
head -c 300000 /dev/urandom | dd of=src.raw bs=1 seek=2000000 conv=notrunc status=none
seq 1 200000 | dd of=src.raw bs=1 seek=3500000 conv=notrunc status=none
src_sha=$(sha src.raw)

# 1. convert -c: clean, the same bytes read back, qemu-img's very file.
for ct in $cts; do
    for o in "" cluster_size=4k cluster_size=512 cluster_size=2M extended_l2=on,cluster_size=32k \
             refcount_bits=1 refcount_bits=64,cluster_size=1k compat=0.10; do
        # zstd needs compat=1.1; its other variants repeat zlib's allocation
        [ $ct = zstd ] && case $o in ""|cluster_size=4k|cluster_size=2M) ;; *) continue ;; esac
        opts="compression_type=$ct${o:+,$o}"
        rm -f cu.qcow2 cq.qcow2
        "$UBLKD" img convert -c -O qcow2 -o "$opts" src.raw cu.qcow2 || fail "convert -c -o $opts"
        clean cu.qcow2
        qemu-img convert -O raw cu.qcow2 back.raw
        [ "$(sha back.raw)" = "$src_sha" ] || fail "convert -c -o $opts: reads back differently"
        qemu-img info cu.qcow2 | grep -q "compression type: $ct" || fail "$opts: not $ct"
        qemu-img convert -c -O qcow2 -o "$opts" src.raw cq.qcow2
        cmp cq.qcow2 cu.qcow2 || fail "convert -c -o $opts: file differs from qemu-img's"
        n_ok=$((n_ok + 1))
    done
done
maps_same cu.qcow2 map-compressed
compare_same cu.qcow2 src.raw
compare_same -s cu.qcow2 src.raw
# A compressed qcow2 as the source of another compressed convert.
"$UBLKD" img convert -c -O qcow2 cq.qcow2 cc.qcow2 || fail "convert -c of a compressed image"
clean cc.qcow2
compare_same cc.qcow2 src.raw
n_ok=$((n_ok + 1))

# 2. qemu-img's compressed images rewritten in part through ublkd.
for ct in $cts; do
    for o in "" cluster_size=4k extended_l2=on; do
        rm -f zu.qcow2 zq.qcow2
        qemu-img convert -c -O qcow2 -o "compression_type=$ct${o:+,$o}" src.raw zu.qcow2
        cp zu.qcow2 zq.qcow2
        ops=(-c "write -P 0x12 1000 3000" -c "write -P 0x23 70000 200000" -c "write -z 1M 64k"
             -c "write -z -u 2M 128k" -c "discard 3M 64k" -c "write -c -P 0x34 2560k 128k"
             -c "write -c -P 0x45 1088k 64k" -c "write -P 0x56 4000000 5000")
        "$UBLKD" img io -d unmap "${ops[@]}" zu.qcow2 > /dev/null || fail "rewrite $ct $o"
        qemu-io -d unmap "${ops[@]}" zq.qcow2 > /dev/null || fail "qemu-io rewrite $ct $o"
        clean zu.qcow2
        compare_same zu.qcow2 zq.qcow2
        qemu-img compare zu.qcow2 zq.qcow2 > /dev/null || fail "rewrite $ct $o reads differently"
        maps_same zu.qcow2 "map-rewritten-$ct$o"
        # Unlike qemu-io (-EIO), ublkd overwrites allocated clusters
        # compressed: what reads back is what a plain write leaves.
        "$UBLKD" img io -c "write -c -P 0x67 0 192k" -c "write -c -P 0x78 1M 64k" zu.qcow2 \
            > /dev/null || fail "compressed overwrite $ct $o"
        qemu-io -c "write -P 0x67 0 192k" -c "write -P 0x78 1M 64k" zq.qcow2 > /dev/null
        clean zu.qcow2
        qemu-img compare zu.qcow2 zq.qcow2 > /dev/null || fail "compressed overwrite $ct $o reads differently"
        n_ok=$((n_ok + 1))
    done
done
# write -c as qemu-io has it: the same file, the same refusals.
rm -f wu.qcow2 wq.qcow2
qemu-img create -q -f qcow2 wu.qcow2 1M
cp wu.qcow2 wq.qcow2
wops=(-c "write -c -P 5 0 64k" -c "write -c 64k 1k" -c "write -c -f 0 64k" -c "write -c -z 128k 64k"
      -c "write -c 192k 64k" -c "write -c -P 7 960k 64k")
"$UBLKD" img io "${wops[@]}" wu.qcow2 2>&1 | grep -v ' ops; ' | norm > w.u
qemu-io "${wops[@]}" wq.qcow2 2>&1 | grep -v ' ops; ' | norm > w.q
diff -u w.q w.u >&2 || fail "write -c: output differs from qemu-io's"
cmp wq.qcow2 wu.qcow2 || fail "write -c: file differs from qemu-io's"
# Several clusters in one request: QEMU compresses them in parallel, so the
# order they land in is its threads' race; the contents must agree.
"$UBLKD" img io -c "write -c -P 8 256k 192k" wu.qcow2 > /dev/null || fail "write -c of 3 clusters"
qemu-io -c "write -c -P 8 256k 192k" wq.qcow2 > /dev/null
clean wu.qcow2
qemu-img compare wq.qcow2 wu.qcow2 > /dev/null || fail "write -c of 3 clusters reads differently"
maps_same wu.qcow2 map-write-c
n_ok=$((n_ok + 1))

# 3. convert -B: onto a backing file, only what the source allocates above
# its own backing file (and, past the target backing's end, no zeros).
qemu-img create -q -f raw base.raw 4M
qemu-io -f raw -c "write -P 0xb1 0 3M" base.raw > /dev/null
qemu-img create -q -f qcow2 -b base.raw -F raw top.qcow2 6M
qemu-io -c "write -P 0x33 128k 64k" -c "write -z 600k 64k" -c "write -P 0 5M 64k" \
    -c "write -z 4200k 100k" -c "write -P 0x44 4500k 3k" top.qcow2 > /dev/null
qemu-img create -q -f raw plain.raw 6M
qemu-io -f raw -c "write -P 0xb1 0 2M" -c "write -P 0x99 1M 4k" plain.raw > /dev/null
for case in "top.qcow2|" "top.qcow2|-c" "top.qcow2|-o cluster_size=4k" "plain.raw|" \
            "top.qcow2|-S 0" "top.qcow2|-o backing_file=base.raw,backing_fmt=raw"; do
    src=${case%%|*}
    args=${case#*|}
    rm -f bu.qcow2 bq.qcow2
    if [[ $args == *backing_file* ]]; then bopt=(); else bopt=(-B base.raw -F raw); fi
    # shellcheck disable=SC2086
    "$UBLKD" img convert "${bopt[@]}" $args -O qcow2 "$src" bu.qcow2 || fail "convert -B $case"
    # shellcheck disable=SC2086
    qemu-img convert "${bopt[@]}" $args -O qcow2 "$src" bq.qcow2
    clean bu.qcow2
    qemu-img compare "$src" bu.qcow2 > /dev/null || fail "convert -B $case: differs from the source"
    compare_same "$src" bu.qcow2
    cmp bq.qcow2 bu.qcow2 || fail "convert -B $case: file differs from qemu-img's"
    maps_same bu.qcow2 "map-B"
    n_ok=$((n_ok + 1))
done
# -n onto an existing image with a backing file.
qemu-img create -q -f qcow2 -b base.raw -F raw nu.qcow2 6M
cp nu.qcow2 nq.qcow2
"$UBLKD" img convert -n -B base.raw -O qcow2 top.qcow2 nu.qcow2 || fail "convert -n -B"
qemu-img convert -n -B base.raw -O qcow2 top.qcow2 nq.qcow2
cmp nq.qcow2 nu.qcow2 || fail "convert -n -B: file differs from qemu-img's"
n_ok=$((n_ok + 1))

# 4. More image kinds for map and compare: zero clusters, a data file.
qemu-img create -q -f qcow2 zero.qcow2 4M
"$UBLKD" img io -c "write -z 0 1M" -c "write -P 1 1M 64k" -c "write -z -u 2M 128k" \
    -c "write -c -P 2 3M 64k" zero.qcow2 > /dev/null
clean zero.qcow2
maps_same zero.qcow2 map-zero
qemu-img create -q -f qcow2 -o data_file=df.raw df.qcow2 4M
"$UBLKD" img io -c "write -P 3 0 100k" -c "write -z 1M 64k" df.qcow2 > /dev/null
clean df.qcow2
maps_same df.qcow2 map-data-file
compare_same zero.qcow2 df.qcow2
compare_same -s zero.qcow2 df.qcow2
compare_same top.qcow2 bu.qcow2
compare_same zero.qcow2 src.raw
n_ok=$((n_ok + 1))

# 5. Refusals, as qemu-img: nothing is created, exit 1.
for args in "-O raw" "-O vdi" "-o preallocation=metadata -O qcow2" \
            "-o preallocation=full -O qcow2" "-O raw -B base.raw -F raw" "-B base.raw -O qcow2"; do
    rm -f r.out
    # shellcheck disable=SC2086
    expect_rc 1 "$UBLKD" img convert -c $args src.raw r.out
    norm < "$WORK/.out" > r.u
    # shellcheck disable=SC2086
    qemu-img convert -c $args src.raw r.q 2>&1 | norm > r.q.msg
    diff -u r.q.msg r.u >&2 || fail "convert -c $args: message differs from qemu-img's"
    [ -e r.out ] && fail "convert -c $args: created the output"
    n_ok=$((n_ok + 1))
done
# A data file cannot hold compressed clusters: the write fails.
expect_rc 1 "$UBLKD" img convert -c -O qcow2 -o data_file=cdf.raw src.raw cdf.qcow2
expect_out "error while writing at byte 0: Operation not supported"

echo "ok: $n_ok compressed and backing-file converts match qemu-img"
