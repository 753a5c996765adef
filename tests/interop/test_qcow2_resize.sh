#!/bin/bash
# `ublkd img resize` against qemu-img 7.2 resize: the same exit codes and
# output on the same inputs (qcow2, raw, vdi), the very bytes where the
# layout is QEMU's (growth with preallocation off or metadata, L1 growth),
# both checkers clean after every resize in either direction, the one
# deliberate difference (a shrink over data is refused, naming the offset),
# and kill -9 during a long L1 growth leaving the old or the new image with
# at worst leaked clusters.
. "$(dirname "$0")/lib.sh"
require_format qcow2 raw vdi

n_ok=0
# resize_both IMG ARGS... SIZE: each tool resizes its own copy of IMG with the
# same arguments; exit codes and output (names normalised) must match, and
# after a success both images must read the same and check clean with both
# checkers.  With bytes=1 set, sets $same_bytes when the files are identical
# (cmp reads every hole of a 3G file: only where a caller looks).
resize_both() {
    local img=$1 ext=${1##*.}
    shift
    local size=${*: -1} opts=("${@:1:$#-1}")
    cp "$img" "q.$ext"; cp "$img" "u.$ext"
    "$QEMU_IMG" resize "${opts[@]}" "q.$ext" "$size" >q.out 2>&1; local qrc=$?
    uimg resize "${opts[@]}" "u.$ext" "$size" >u.out 2>&1; local urc=$?
    sed -i "s/u\.$ext/q.$ext/g" u.out
    [ $urc = $qrc ] || { sed 's/^/    u| /' u.out >&2; sed 's/^/    q| /' q.out >&2
                         fail "resize ${opts[*]} $img $size: ublkd exit $urc, qemu-img $qrc"; }
    same_output "resize ${opts[*]} $img $size" u.out q.out
    same_bytes=false
    if [ $qrc = 0 ]; then
        "$QEMU_IMG" compare -q "q.$ext" "u.$ext" ||
            fail "resize ${opts[*]} $img $size: the images read differently"
        if [ "$ext" = qcow2 ]; then
            "$QEMU_IMG" check -q "u.$ext" || fail "resize ${opts[*]} $size: qemu-img check of ours"
            uimg check -q "q.$ext" || fail "resize ${opts[*]} $size: ublkd check of qemu-img's"
            uimg check -q "u.$ext" || fail "resize ${opts[*]} $size: ublkd check of ours"
        fi
        [ "${bytes:-}" ] && cmp -s "q.$ext" "u.$ext" && same_bytes=true
    fi
    n_ok=$((n_ok + 1))
}
vsize() { "$QEMU_IMG" info --output=json "$1" | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p'; }

# ---- messages and exit codes
"$QEMU_IMG" create -q -f qcow2 a.qcow2 1M
"$QEMU_IO" -c 'write -P 0x11 0 64k' -c 'write -P 0x22 960k 64k' a.qcow2 >/dev/null
"$QEMU_IMG" create -q -f raw r.img 1M
"$QEMU_IO" -f raw -c 'write -P 0x33 0 4k' r.img >/dev/null
"$QEMU_IMG" create -q -f vdi v.vdi 1M
for img in a.qcow2 r.img; do
    for args in "2M" "1M" "+1M" "-q +1M" "--shrink 2M" "3G" "1000" "+1000" "0" "-- -2M" "9E" "16E" \
                "1Q" "foo" "--preallocation=bogus 2M" "--preallocation=metadata --shrink 2M" \
                "--preallocation=full 1M" "--preallocation=falloc 2M" "--preallocation=full 3M" \
                "--preallocation=metadata 3M" "-f raw 2M" "-x 2M" \
                "--shrink --shrink 4M" "--preallocation 2M"; do
        # shellcheck disable=SC2086
        resize_both $img $args
    done
done
resize_both v.vdi 2M
resize_both v.vdi -f raw 4M
# usage errors: too few arguments, too many, a missing file
for args in "" "x" "a.qcow2 1M extra" "-f"; do
    # shellcheck disable=SC2086
    "$QEMU_IMG" resize $args >q.out 2>&1; qrc=$?
    # shellcheck disable=SC2086
    uimg resize $args >u.out 2>&1; urc=$?
    [ $urc = $qrc ] || fail "resize $args: ublkd exit $urc, qemu-img $qrc"
    same_output "resize $args" u.out q.out
done
cp a.qcow2 io.qcow2
expect_rc 0 uimg resize --image-opts driver=qcow2,file.filename=io.qcow2 3M
[ "$(vsize io.qcow2)" = 3145728 ] || fail "resize --image-opts"

# ---- layouts: where QEMU's allocator decides, the very bytes
for o in "" compat=0.10 cluster_size=512 cluster_size=2M refcount_bits=1 refcount_bits=64 \
         lazy_refcounts=on extended_l2=on,cluster_size=16k; do
    rm -f l.qcow2
    "$QEMU_IMG" create -q -f qcow2 ${o:+-o "$o"} l.qcow2 1M
    "$QEMU_IO" -c 'write -P 0x44 0 100k' -c 'write -z 512k 64k' l.qcow2 >/dev/null
    sizes="5M 700M 3G"
    [ "$o" = cluster_size=512 ] && sizes="5M 40M"     # millions of clusters otherwise
    for size in $sizes; do
        bytes=1 resize_both l.qcow2 "$size"
        $same_bytes || fail "grow -o $o to $size: the files differ from qemu-img's"
        bytes=$([ "$size" = 5M ] && echo 1) resize_both l.qcow2 --preallocation=metadata "$size"
        # a refcount block needed in the middle lands elsewhere than QEMU's
        # (docs/ARCHITECTURE.md): identical bytes only while none is (5M)
        [ "$size" != 5M ] || $same_bytes ||
            fail "grow -o $o to $size (metadata): the files differ from qemu-img's"
        [ "$size" = 5M ] || continue     # full writes every byte: keep it small
        for p in falloc full; do
            resize_both l.qcow2 --preallocation=$p 70M
            # our data area lies beside its L2 tables, QEMU's after them: the
            # layout differs; what counts is that it is allocated
            [ "$(alloc_bytes u.qcow2)" -ge $(( (70 - 5) * 1048576 )) ] ||
                fail "grow -o $o to 70M ($p): only $(alloc_bytes u.qcow2) bytes allocated"
        done
    done
done

# ---- an external data file, raw and not
for raw in off on; do
    rm -f d.qcow2 d.raw
    "$QEMU_IMG" create -q -f qcow2 -o data_file=d.raw,data_file_raw=$raw d.qcow2 1M
    "$QEMU_IO" -c 'write -P 0x55 0 64k' d.qcow2 >/dev/null
    cp d.raw d.raw.orig
    uimg resize d.qcow2 3M >/dev/null || fail "grow with data_file_raw=$raw"
    [ "$(stat -c %s d.raw)" = 3145728 ] || fail "data_file_raw=$raw: data file not grown"
    "$QEMU_IMG" check -q d.qcow2 || fail "data_file_raw=$raw: qemu-img check after grow"
    "$QEMU_IO" -c 'read -P 0x55 0 64k' -c 'read -P 0 64k 2M' d.qcow2 >/dev/null ||
        fail "data_file_raw=$raw: contents after grow"
    "$QEMU_IO" -c 'discard 64k 2M' d.qcow2 >/dev/null
    uimg resize --shrink d.qcow2 1M >/dev/null || fail "shrink with data_file_raw=$raw"
    [ "$(stat -c %s d.raw)" = 1048576 ] || fail "data_file_raw=$raw: data file not shrunk"
    "$QEMU_IMG" check -q d.qcow2 || fail "data_file_raw=$raw: qemu-img check after shrink"
    n_ok=$((n_ok + 1))
done

# ---- a backing file longer than the image: the new area reads as zeros
"$QEMU_IMG" create -q -f qcow2 base.qcow2 4M
"$QEMU_IO" -c 'write -P 0x77 0 4M' base.qcow2 >/dev/null
"$QEMU_IMG" create -q -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2 1000k
"$QEMU_IMG" create -q -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 ov2.qcow2 1M
resize_both ov.qcow2 3M
"$QEMU_IO" -c 'read -P 0x77 0 1000k' -c 'read -P 0 1000k 2072k' u.qcow2 >/dev/null ||
    fail "grow over a longer backing file: the new area does not read as zeros"
resize_both ov2.qcow2 3M          # v2 cannot: "Failed to zero out new clusters"

# ---- snapshots: QEMU refuses v2 images that have them; v3 grows
"$QEMU_IMG" create -q -f qcow2 -o compat=0.10 s2.qcow2 4M
"$QEMU_IMG" snapshot -c sn1 s2.qcow2
resize_both s2.qcow2 8M
"$QEMU_IMG" create -q -f qcow2 s3.qcow2 4M
"$QEMU_IO" -c 'write -P 0x66 0 64k' s3.qcow2 >/dev/null
"$QEMU_IMG" snapshot -c sn1 s3.qcow2
resize_both s3.qcow2 2G
"$QEMU_IMG" snapshot -a sn1 u.qcow2 || fail "apply the snapshot after a grow"
"$QEMU_IO" -c 'read -P 0x66 0 64k' u.qcow2 >/dev/null || fail "snapshot data after a grow"

# ---- shrink: free tails as qemu-img; data in the tail refused, naming it
"$QEMU_IMG" create -q -f qcow2 t.qcow2 8M
"$QEMU_IO" -c 'write -P 0x11 0 64k' -c 'write -z 4M 1M' t.qcow2 >/dev/null
resize_both t.qcow2 --shrink 1M
uimg resize u.qcow2 8M >/dev/null || fail "regrow after shrink"
"$QEMU_IMG" resize q.qcow2 8M >/dev/null
"$QEMU_IMG" compare q.qcow2 u.qcow2 >/dev/null || fail "regrown images differ"
"$QEMU_IMG" map --output=json q.qcow2 >q.map; "$QEMU_IMG" map --output=json u.qcow2 >u.map
diff -u q.map u.map >&2 || fail "regrown images map differently"
"$QEMU_IO" -c 'write -P 0x99 6M 4k' t.qcow2 >/dev/null
before=$(sha t.qcow2)
expect_rc 1 uimg resize --shrink t.qcow2 2M
expect_out "Cannot shrink to 2097152 bytes: guest offset 6291456 (0x600000) past the new end holds data"
[ "$(sha t.qcow2)" = "$before" ] || fail "a refused shrink changed the image"
expect_rc 1 uimg resize --shrink t.qcow2 -- -3M
expect_out "guest offset 6291456"
expect_rc 0 uimg resize --shrink t.qcow2 6295552     # right after the data: free
"$QEMU_IO" -c 'read -P 0x99 6M 4k' t.qcow2 >/dev/null || fail "data before the new end"
"$QEMU_IMG" check -q t.qcow2 || fail "qemu-img check after shrink"
# qemu-img shrinks, we read and check
"$QEMU_IMG" create -q -f qcow2 w.qcow2 3G
"$QEMU_IO" -c 'write -P 0x12 1G 64k' -c 'write -P 0x13 2G 64k' w.qcow2 >/dev/null
"$QEMU_IMG" resize --shrink w.qcow2 1200M >/dev/null
uimg check -q w.qcow2 || fail "ublkd check of qemu-img's shrunk image"
uimg io -c 'read -P 0x12 1G 64k' -c 'length' w.qcow2 >w.out || fail "ublkd reads qemu-img's shrunk image"
grep -q "^1.172 GiB" w.out || { cat w.out >&2; fail "length after qemu-img's shrink"; }
# metadata-preallocated clusters never written are not data
"$QEMU_IMG" create -q -f qcow2 -o preallocation=metadata p.qcow2 8M
"$QEMU_IO" -c 'write -P 0x21 0 64k' p.qcow2 >/dev/null
expect_rc 0 uimg resize --shrink p.qcow2 1M
"$QEMU_IMG" check -q p.qcow2 || fail "qemu-img check after shrinking a preallocated image"
n_ok=$((n_ok + 1))

# ---- kill -9 during L1 growth: 512-byte clusters make growing to 100G a
# 25 MiB L1 table and ~50000 new refcounts (seconds), so kills at spread
# times land before, inside and after the switch to the new table.
states=""
for delay in 0.05 0.3 0.6 1.0 1.5 2.0 3.0; do
    rm -f k.qcow2
    "$QEMU_IMG" create -q -f qcow2 -o cluster_size=512 k.qcow2 1M
    "$QEMU_IO" -c 'write -P 0x5a 0 1M' k.qcow2 >/dev/null
    "$UBLKD" img resize k.qcow2 100G >/dev/null 2>&1 &   # not uimg: its subshell would take the kill
    pid=$!
    sleep "$delay"
    kill -9 $pid 2>/dev/null
    killed_wait $pid k.qcow2
    "$QEMU_IMG" check k.qcow2 >k.out 2>&1; rc=$?
    [ $rc = 0 ] || [ $rc = 3 ] || { cat k.out >&2; fail "kill after ${delay}s: qemu-img check exit $rc"; }
    grep -q "ERROR" k.out && { cat k.out >&2; fail "kill after ${delay}s: errors, not only leaks"; }
    uimg check -r leaks k.qcow2 >/dev/null 2>&1
    "$QEMU_IMG" check -q k.qcow2 || fail "kill after ${delay}s: leaks not repaired"
    s=$(vsize k.qcow2)
    case $s in
    1048576) states+=" old" ;;
    107374182400) states+=" new" ;;
    *) fail "kill after ${delay}s: virtual size $s is neither the old nor the new" ;;
    esac
    "$QEMU_IO" -c 'read -P 0x5a 0 1M' k.qcow2 >/dev/null || fail "kill after ${delay}s: data lost"
    n_ok=$((n_ok + 1))
done
echo "kill -9 during L1 growth left:$states" >&2
echo "ok: $n_ok resize cases" >&2
