#!/bin/bash
# Internal snapshots against qemu-img 7.2: writes, discards and zero writes
# through ublkd into an image with a snapshot leave the snapshot intact
# (a shared L2 table is copied before it changes, shared data clusters lose
# a reference instead of being freed); `img snapshot -c/-l/-a/-d` in both
# directions (each tool's snapshots used by the other) in v2 and v3 images,
# the list and `info` byte for byte, v3 extra data (a snapshot of another
# virtual size applied), unknown extra data kept, convert -l, freed
# clusters reused, bad arguments and crafted tables, and kill -9 during
# create and delete; both checkers clean after each step.
. "$(dirname "$0")/lib.sh"
require_format qcow2

n_ok=0
vsize() { "$QEMU_IMG" info --output=json "$1" | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p'; }
both_check() {
    "$QEMU_IMG" check -q "$1" || fail "$2: qemu-img check"
    uimg check -q "$1" || fail "$2: ublkd check"
}
# reads_as IMG LABEL 'PATTERN OFFSET LEN'...: qemu-io reads IMG as given
reads_as() {
    local img=$1 label=$2 args=()
    shift 2
    for r in "$@"; do args+=(-c "read -P $r"); done
    "$QEMU_IO" "${args[@]}" "$img" >r.out 2>&1 || { cat r.out >&2; fail "$label: qemu-io read"; }
    grep -q "Pattern verification failed" r.out && { cat r.out >&2; fail "$label: content"; }
    return 0
}
# snap_reads_as IMG SNAP LABEL 'PATTERN OFFSET LEN'...: qemu-img's copy of the snapshot
snap_reads_as() {
    local img=$1 snap=$2 label=$3 args=()
    shift 3
    rm -f snap.raw
    "$QEMU_IMG" convert -l "snapshot.name=$snap" -O raw "$img" snap.raw ||
        fail "$label: qemu-img convert -l snapshot.name=$snap"
    for r in "$@"; do args+=(-c "read -P $r"); done
    "$QEMU_IO" -f raw "${args[@]}" snap.raw >r.out 2>&1 || { cat r.out >&2; fail "$label: read"; }
    grep -q "Pattern verification failed" r.out && { cat r.out >&2; fail "$label: snapshot content"; }
    return 0
}

# ---- regression: ublkd writing into an image with qemu-img's snapshot
# changed the shared L2 table in place (the snapshot saw the new data, and
# discard freed clusters the snapshot still used).
for opts in compat=0.10 compat=1.1 compat=1.1,extended_l2=on,cluster_size=128k \
            compat=1.1,lazy_refcounts=on; do
    rm -f a.qcow2
    "$QEMU_IMG" create -q -f qcow2 -o "$opts" a.qcow2 4M
    "$QEMU_IO" -c 'write -P 0x11 0 1M' a.qcow2 >/dev/null
    "$QEMU_IMG" snapshot -c s1 a.qcow2 || fail "$opts: qemu-img snapshot -c"
    cmds=(-c 'write -P 0x22 0 64k' -c 'write -P 0x33 1M 64k' -c 'write -P 0x44 200k 1k')
    case $opts in
    compat=0.10) ;;
    *) cmds+=(-c 'discard 512k 128k' -c 'write -z 768k 128k') ;;
    esac
    uimg io "${cmds[@]}" a.qcow2 >/dev/null || fail "$opts: ublkd img io"
    both_check a.qcow2 "$opts: after writes over a snapshot"
    snap_reads_as a.qcow2 s1 "$opts" '0x11 0 1M' '0 1M 3M'
    case $opts in
    compat=0.10) reads_as a.qcow2 "$opts" '0x22 0 64k' '0x11 64k 136k' '0x44 200k 1k' \
                          '0x11 201k 823k' '0x33 1M 64k' ;;
    *) reads_as a.qcow2 "$opts" '0x22 0 64k' '0x11 64k 136k' '0x44 200k 1k' '0x11 201k 311k' \
                '0 512k 128k' '0x11 640k 128k' '0 768k 128k' '0x11 896k 128k' '0x33 1M 64k' ;;
    esac
    # the snapshot's clusters go when it does, and nothing else
    "$QEMU_IMG" snapshot -d s1 a.qcow2 || fail "$opts: qemu-img snapshot -d"
    both_check a.qcow2 "$opts: after qemu-img deleted the snapshot"
    n_ok=$((n_ok + 1))
done

# ---- both directions, several layouts
for opts in compat=0.10 compat=1.1 compat=1.1,extended_l2=on,cluster_size=128k \
            compat=1.1,refcount_bits=4 compat=1.1,refcount_bits=64,cluster_size=4k \
            compat=1.1,cluster_size=512; do
    for maker in u q; do
        rm -f a.qcow2
        "$QEMU_IMG" create -q -f qcow2 -o "$opts" a.qcow2 4M
        "$QEMU_IO" -c 'write -P 0x11 0 1M' -c 'write -c -P 0x12 2M 128k' a.qcow2 >/dev/null
        if [ $maker = u ]; then snap() { uimg snapshot "$@"; }; other=q
        else snap() { "$QEMU_IMG" snapshot "$@"; }; other=u; fi
        snap -c first a.qcow2 || fail "$opts/$maker: snapshot -c first"
        both_check a.qcow2 "$opts/$maker: after create"
        uimg io -c 'write -P 0x21 0 64k' -c 'write -P 0x22 3M 64k' a.qcow2 >/dev/null
        "$QEMU_IO" -c 'write -P 0x23 128k 64k' a.qcow2 >/dev/null
        snap -c second a.qcow2 || fail "$opts/$maker: snapshot -c second"
        both_check a.qcow2 "$opts/$maker: after the second create"
        # the list, byte for byte, from both tools
        "$QEMU_IMG" snapshot -l a.qcow2 >q.l; uimg snapshot -l a.qcow2 >u.l
        same_output "$opts/$maker: snapshot -l" u.l q.l
        grep -q "^1         first " u.l && grep -q "^2         second " u.l ||
            { cat u.l >&2; fail "$opts/$maker: list content"; }
        for fmt in human json; do
            "$QEMU_IMG" info --output=$fmt a.qcow2 >q.i; uimg info --output=$fmt a.qcow2 >u.i
            same_output "$opts/$maker: info --output=$fmt" u.i q.i
        done
        # each tool reads each snapshot the same
        for l in snapshot.name=first snapshot.id=2 first 2 snapshot.id=1,snapshot.name=first; do
            rm -f q.raw u.raw
            "$QEMU_IMG" convert -l "$l" -O raw a.qcow2 q.raw || fail "$opts: qemu-img convert -l $l"
            uimg convert -l "$l" -O raw a.qcow2 u.raw || fail "$opts: ublkd convert -l $l"
            cmp -s q.raw u.raw || fail "$opts/$maker: convert -l $l differs"
        done
        snap_reads_as a.qcow2 first "$opts/$maker" '0x11 0 1M' '0 1M 1M' '0x12 2M 128k'
        snap_reads_as a.qcow2 second "$opts/$maker" '0x21 0 64k' '0x11 64k 64k' '0x23 128k 64k'
        # apply the first with the other tool, then delete both
        if [ $other = u ]; then uimg snapshot -a first a.qcow2; else "$QEMU_IMG" snapshot -a first a.qcow2; fi ||
            fail "$opts/$maker: snapshot -a first by $other"
        both_check a.qcow2 "$opts/$maker: after apply"
        reads_as a.qcow2 "$opts/$maker: applied" '0x11 0 1M' '0 1M 1M' '0x12 2M 128k' '0 3M 1M'
        uimg io -c 'write -P 0x31 0 64k' a.qcow2 >/dev/null
        snap_reads_as a.qcow2 first "$opts/$maker: first after writing over it" '0x11 0 1M'
        if [ $other = u ]; then uimg snapshot -d second a.qcow2; else "$QEMU_IMG" snapshot -d second a.qcow2; fi ||
            fail "$opts/$maker: snapshot -d second by $other"
        both_check a.qcow2 "$opts/$maker: after delete"
        snap -d first a.qcow2 || fail "$opts/$maker: snapshot -d first"
        both_check a.qcow2 "$opts/$maker: after deleting all"
        reads_as a.qcow2 "$opts/$maker: end" '0x31 0 64k' '0x11 64k 960k' '0x12 2M 128k'
        [ -z "$("$QEMU_IMG" snapshot -l a.qcow2)" ] || fail "$opts/$maker: snapshots left"
        n_ok=$((n_ok + 1))
    done
done

# ---- v3 extra data: a snapshot of another virtual size, applied by either tool
for applier in u q; do
    rm -f v.qcow2
    "$QEMU_IMG" create -q -f qcow2 v.qcow2 1M
    "$QEMU_IO" -c 'write -P 0x41 0 1M' v.qcow2 >/dev/null
    uimg snapshot -c small v.qcow2
    "$QEMU_IMG" resize -q v.qcow2 3G
    "$QEMU_IO" -c 'write -P 0x42 2G 64k' v.qcow2 >/dev/null
    "$QEMU_IMG" snapshot -c big v.qcow2
    if [ $applier = u ]; then uimg snapshot -a small v.qcow2; else "$QEMU_IMG" snapshot -a small v.qcow2; fi ||
        fail "extra data: apply small by $applier"
    [ "$(vsize v.qcow2)" = 1048576 ] || fail "extra data: size after applying small by $applier: $(vsize v.qcow2)"
    both_check v.qcow2 "extra data: after applying small by $applier"
    uimg snapshot -a big v.qcow2 || fail "extra data: apply big"
    [ "$(vsize v.qcow2)" = 3221225472 ] || fail "extra data: size after applying big: $(vsize v.qcow2)"
    both_check v.qcow2 "extra data: after applying big"
    reads_as v.qcow2 "extra data: big" '0x41 0 1M' '0x42 2G 64k'
    n_ok=$((n_ok + 1))
done
# v2 keeps one size while it has snapshots: the same refusal as qemu-img's
"$QEMU_IMG" create -q -f qcow2 -o compat=0.10 w.qcow2 1M
uimg snapshot -c s w.qcow2
expect_rc 1 uimg resize w.qcow2 2M
expect_out "Can't resize a v2 image which has snapshots"

# ---- unknown extra data in an entry is kept when the table is rewritten
rm -f x.qcow2
"$QEMU_IMG" create -q -f qcow2 x.qcow2 1M
"$QEMU_IMG" snapshot -c withextra x.qcow2
python3 - x.qcow2 <<'PY' || fail "crafting extra data"
import struct, sys
f = open(sys.argv[1], "r+b")
f.seek(60); nb, off = struct.unpack(">IQ", f.read(12))
f.seek(off); h = bytearray(f.read(40))
idl, nml = struct.unpack(">HH", h[12:16]); ex = struct.unpack(">I", h[36:40])[0]
f.seek(off + 40); extra = f.read(ex); ids = f.read(idl + nml)
h[36:40] = struct.pack(">I", ex + 16)
f.seek(off); f.write(bytes(h) + extra + b"UNKNOWN-EXTRA-16" + ids)
PY
uimg snapshot -c another x.qcow2 || fail "create next to unknown extra data"
both_check x.qcow2 "unknown extra data"
python3 - x.qcow2 <<'PY' || fail "unknown extra data lost"
import struct, sys
f = open(sys.argv[1], "rb")
f.seek(60); nb, off = struct.unpack(">IQ", f.read(12))
assert nb == 2, nb
f.seek(off); h = f.read(40); ex = struct.unpack(">I", h[36:40])[0]
assert ex == 40, ex
f.seek(off + 40 + 24); assert f.read(16) == b"UNKNOWN-EXTRA-16"
PY
"$QEMU_IMG" snapshot -l x.qcow2 >q.l; uimg snapshot -l x.qcow2 >u.l
same_output "list with unknown extra data" u.l q.l
n_ok=$((n_ok + 1))

# ---- freed clusters are reused after a delete
rm -f r.qcow2
"$QEMU_IMG" create -q -f qcow2 r.qcow2 64M
"$QEMU_IO" -c 'write -P 0x51 0 8M' r.qcow2 >/dev/null
uimg snapshot -c old r.qcow2
uimg io -c 'write -P 0x52 0 8M' r.qcow2 >/dev/null
size_before=$(stat -c %s r.qcow2)
uimg snapshot -d old r.qcow2 || fail "reuse: delete"
both_check r.qcow2 "reuse: after delete"
uimg io -c 'write -P 0x53 16M 8M' r.qcow2 >/dev/null
size_after=$(stat -c %s r.qcow2)
[ "$size_after" -le "$size_before" ] ||
    fail "reuse: the file grew from $size_before to $size_after: freed clusters not reused"
both_check r.qcow2 "reuse: after writing into freed clusters"
reads_as r.qcow2 reuse '0x52 0 8M' '0x53 16M 8M'
n_ok=$((n_ok + 1))

# ---- messages and exit codes as qemu-img's
rm -f m.qcow2
"$QEMU_IMG" create -q -f qcow2 m.qcow2 1M
"$QEMU_IMG" snapshot -c s1 m.qcow2
"$QEMU_IMG" create -q -f raw m.raw 1M
for args in "-d nope" "-d 1" "-a nope" "-l -c x" "-c" "" "-x" "-l -U" "-c x -U" "-a 1" "-d s1"; do
    for img in m.qcow2 m.raw; do
        cp $img q.$img; cp $img u.$img
        # shellcheck disable=SC2086
        "$QEMU_IMG" snapshot $args q.$img >q.out 2>&1; qrc=$?
        # shellcheck disable=SC2086
        uimg snapshot $args u.$img >u.out 2>&1; urc=$?
        sed -i "s/u\.$img/q.$img/g" u.out
        [ $urc = $qrc ] || { cat q.out u.out >&2; fail "snapshot $args $img: exit $urc, qemu-img $qrc"; }
        case $img in
        # qemu-img prints raw's probing warning twice for -a/-c/-d (it
        # reopens): the last line is compared
        m.raw) tail -1 u.out >u.last; tail -1 q.out >q.last
               same_output "snapshot $args $img" u.last q.last ;;
        *) same_output "snapshot $args $img" u.out q.out ;;
        esac
    done
done
for l in snapshot.name=nope snapshot.id=9 nope "snapshot.foo=1" "snapshot.name=s1,snapshot.id=2"; do
    "$QEMU_IMG" convert -l "$l" -O raw m.qcow2 o.raw >q.out 2>&1; qrc=$?
    uimg convert -l "$l" -O raw m.qcow2 o.raw >u.out 2>&1; urc=$?
    [ $urc = $qrc ] || fail "convert -l $l: exit $urc, qemu-img $qrc"
    same_output "convert -l $l" u.out q.out
done
# 1-bit refcounts cannot count a second owner: both refuse, leaking the L1 copy
"$QEMU_IMG" create -q -f qcow2 -o refcount_bits=1 o1.qcow2 1M
"$QEMU_IO" -c 'write -P 0x11 0 64k' o1.qcow2 >/dev/null
cp o1.qcow2 o2.qcow2
"$QEMU_IMG" snapshot -c s o1.qcow2 >q.out 2>&1; qrc=$?
uimg snapshot -c s o2.qcow2 >u.out 2>&1; urc=$?
sed -i 's/o2\.qcow2/o1.qcow2/g' u.out
[ $urc = $qrc ] || fail "refcount_bits=1: exit $urc, qemu-img $qrc"
same_output "refcount_bits=1 snapshot -c" u.out q.out
"$QEMU_IMG" check o2.qcow2 >k.out 2>&1; [ $? = 3 ] || { cat k.out >&2; fail "refcount_bits=1: not only leaks"; }
reads_as o2.qcow2 "refcount_bits=1" '0x11 0 64k'
n_ok=$((n_ok + 1))

# ---- crafted snapshot tables: a clear error, never a crash
craft() {   # craft IMG FIELD_OFFSET_IN_ENTRY BYTES_HEX
    python3 - "$@" <<'PY'
import struct, sys
f = open(sys.argv[1], "r+b")
f.seek(64); off = struct.unpack(">Q", f.read(8))[0]
f.seek(off + int(sys.argv[2])); f.write(bytes.fromhex(sys.argv[3]))
PY
}
for c in "36 00100000" "0 00000000deadbe00" "8 7fffffff" "12 ffff" "0 0000000000000201"; do
    cp m.qcow2 bad.qcow2
    # shellcheck disable=SC2086
    craft bad.qcow2 $c
    for cmd in "snapshot -l" "info" "snapshot -a s1" "snapshot -d s1" "convert -l s1 -O raw"; do
        # shellcheck disable=SC2086
        timeout 20 "$UBLKD" img $cmd bad.qcow2 $( [ "${cmd#convert}" != "$cmd" ] && echo o.raw ) >u.out 2>&1
        rc=$?
        [ $rc -le 1 ] || { cat u.out >&2; fail "crafted ($c): img $cmd exited $rc"; }
        rm -f o.raw
    done
done
# a snapshot L1 entry naming the refcount table as an L2 table: delete stops
# there (the image marked corrupt), no refcount of the table's cluster changes
cp m.qcow2 bad.qcow2
python3 - bad.qcow2 <<'PY'
import struct, sys
f = open(sys.argv[1], "r+b")
f.seek(48); rt = struct.unpack(">Q", f.read(8))[0]
f.seek(64); off = struct.unpack(">Q", f.read(8))[0]
f.seek(off); l1 = struct.unpack(">Q", f.read(8))[0]
f.seek(l1); f.write(struct.pack(">Q", rt))
PY
expect_rc 1 uimg snapshot -d s1 bad.qcow2
expect_out "overlaps with refcount table"
# an active L2 table over the snapshot table: the write is refused, the table kept
cp m.qcow2 bad.qcow2
python3 - bad.qcow2 <<'PY'
import struct, sys
f = open(sys.argv[1], "r+b")
f.seek(64); off = struct.unpack(">Q", f.read(8))[0]
f.seek(40); l1 = struct.unpack(">Q", f.read(8))[0]
f.seek(l1); f.write(struct.pack(">Q", (off & ~0xffff) | (1 << 63)))
PY
expect_rc 1 uimg io -c 'write -P 1 0 4k' bad.qcow2
expect_out "overlaps with snapshot table"
n_ok=$((n_ok + 1))

# ---- kill -9 during create and delete: 512-byte clusters and 24 MiB of data
# make the refcount walk last (tens of thousands of clusters); kills at
# spread times land before, inside and after the switch.
"$QEMU_IMG" create -q -f qcow2 -o cluster_size=512 k0.qcow2 32M
"$QEMU_IO" -c 'write -P 0x61 0 24M' k0.qcow2 >/dev/null
"$QEMU_IMG" snapshot -c base k0.qcow2
"$QEMU_IO" -c 'write -P 0x62 0 8M' k0.qcow2 >/dev/null
kill_states=""
# kill_check IMG LABEL: at worst leaks and COPIED flags that disagree with
# refcounts (the window QEMU has too, between refcount and L2 writes); after
# `check -r all` both checkers clean; the data is the active image's.
kill_check() {
    "$QEMU_IMG" check "$1" >k.out 2>&1; local rc=$?
    [ $rc = 0 ] || [ $rc = 2 ] || [ $rc = 3 ] || { cat k.out >&2; fail "$2: qemu-img check exit $rc"; }
    grep "ERROR" k.out | grep -v "OFLAG_COPIED" | grep -q . && { cat k.out >&2; fail "$2: errors, not only leaks"; }
    grep -q "OFLAG_COPIED" k.out && kill_states+="(copied-flags)"
    uimg check -r all "$1" >/dev/null 2>&1
    "$QEMU_IMG" check -q "$1" || fail "$2: not repaired"
    uimg check -q "$1" || fail "$2: ublkd check after repair"
    reads_as "$1" "$2" '0x62 0 8M' '0x61 8M 16M' '0 24M 8M'
    snap_reads_as "$1" base "$2" '0x61 0 24M' '0 24M 8M'
}
for op in create delete; do
    for delay in 0.02 0.2 0.6 1.5; do
        cp k0.qcow2 k.qcow2
        [ $op = delete ] && "$QEMU_IMG" snapshot -c extra k.qcow2
        if [ $op = create ]; then "$UBLKD" img snapshot -c new k.qcow2 >/dev/null 2>&1 &
        else "$UBLKD" img snapshot -d extra k.qcow2 >/dev/null 2>&1 & fi
        pid=$!
        sleep "$delay"
        kill -9 $pid 2>/dev/null
        killed_wait $pid k.qcow2
        n=$("$QEMU_IMG" snapshot -l k.qcow2 | grep -c -E '^[0-9]+ ')
        case $op/$n in
        create/1|delete/1) kill_states+=" $op:old" ;;
        create/2) kill_states+=" $op:new" ;;
        delete/2) kill_states+=" $op:old" ;;
        *) fail "$op killed after ${delay}s: $n snapshots" ;;
        esac
        [ $op/$n = delete/1 ] && kill_states=${kill_states% *}" $op:new"
        kill_check k.qcow2 "$op killed after ${delay}s"
        n_ok=$((n_ok + 1))
    done
done
echo "kill -9 left:$kill_states" >&2

echo "ok: $n_ok snapshot cases" >&2
