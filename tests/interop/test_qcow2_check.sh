#!/bin/bash
# ublkd img check on qcow2 images that qemu-img 7.2 made and that were then
# damaged at known places (tests/interop/qcow2-poke.py): both checkers give
# the same JSON (corruptions, leaks, fixed counts, allocation figures, image
# end) and exit code; `-r leaks` / `-r all` by ublkd gives qemu-img's repair
# figures, and afterwards qemu-img check says what it says after its own
# repair of a copy (clean, where QEMU's repair makes it clean) and the image
# reads as qemu's repaired copy does.
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/lib.sh"
require_format qcow2
require_cmd python3 jq
POKE="python3 $HERE/qcow2-poke.py"
n_ok=0

# The JSON without the file name (the two runs name different copies).
json() { jq -S "del(.filename${2:-})" "$1" 2>&1 || echo "not JSON: $(cat "$1")"; }

# same_check TAG IMG [-r MODE]: both tools on copies of IMG, same JSON and
# exit code; with -r, qemu-img check of both repaired copies agrees too and
# both read the same.
same_check() {
    local tag=$1 img=$2; shift 2
    local q u
    cp "$img" q.qcow2; cp "$img" u.qcow2
    qemu-img check --output=json "$@" q.qcow2 > q.json 2> q.err; q=$?
    "$UBLKD" img check --output=json "$@" u.qcow2 > u.json 2> u.err; u=$?
    if [ "$q" != "$u" ] || [ "$(json q.json)" != "$(json u.json)" ]; then
        echo "qemu-img (exit $q):" >&2; cat q.json q.err >&2
        echo "ublkd (exit $u):" >&2; cat u.json u.err >&2
        fail "$tag: check $* differs"
    fi
    # The findings on stderr are QEMU's lines, in QEMU's order (messages
    # from the tools themselves and from the driver's logging aside).
    local strip='/^qemu-img: \|^ublkd img: \|^qcow2: /d'
    if [ "$(sed "$strip" q.err)" != "$(sed "$strip" u.err)" ]; then
        diff <(sed "$strip" q.err) <(sed "$strip" u.err) >&2
        fail "$tag: check $* prints other findings"
    fi
    if [ $# -gt 0 ]; then
        qemu-img check --output=json q.qcow2 > q2.json 2> q2.err; q=$?
        qemu-img check --output=json u.qcow2 > u2.json 2> u2.err; u=$?
        # The layout of a rebuilt refcount structure may differ: compare the
        # findings, not the image end.
        if [ "$q" != "$u" ] ||
           [ "$(json q2.json ', ."image-end-offset"')" != "$(json u2.json ', ."image-end-offset"')" ]; then
            cat q2.json u2.json u.err >&2
            fail "$tag: after $*: qemu-img check says $u on ublkd's repair, $q on its own"
        fi
        if [ "$q" = 0 ] || [ "$q" = 3 ]; then
            qemu-img compare -q q.qcow2 u.qcow2 || fail "$tag: repaired images read differently"
        fi
    fi
    [ -n "${VERBOSE:-}" ] && echo "$tag $*: exit $u" >&2
    n_ok=$((n_ok + 1))
}

# every TAG IMG: plain check and -r all; all3 adds -r leaks (for the
# damage where the two repair levels differ).
every() {
    same_check "$1" "$2"
    same_check "$1" "$2" -r all
}
all3() {
    every "$@"
    same_check "$1" "$2" -r leaks
}

# repairs_clean TAG IMG: after ublkd's -r all qemu-img finds nothing.
repairs_clean() {
    cp "$2" r.qcow2
    "$UBLKD" img check -r all r.qcow2 > r.out 2>&1
    qemu-img check r.qcow2 > r2.out 2>&1 || { cat r.out r2.out >&2; fail "$1: not clean after -r all"; }
    grep -q leaked r2.out && { cat r.out r2.out >&2; fail "$1: leaks after -r all"; }
    n_ok=$((n_ok + 1))
}

base() {   # base NAME [create options]: 4M image with data, compressed and zero clusters
    local name=$1; shift
    qemu-img create -q -f qcow2 "$@" "$name" 4M
    qemu-io -c "write -P 1 0 192k" -c "write -P 2 1M 64k" -c "write -c -P 3 2M 64k" \
            -c "write -z 3M 64k" -c "write -P 4 3584k 8k" "$name" > /dev/null || fail "qemu-io $name"
}

base b.qcow2
every "clean" b.qcow2
base b512.qcow2 -o cluster_size=512,refcount_bits=1
every "clean 512/1" b512.qcow2
qemu-img create -q -f qcow2 -o cluster_size=2M,refcount_bits=64 b2m.qcow2 8M
qemu-io -c "write -P 1 0 64k" -c "write -c -P 2 2M 2M" -c "write -z 4M 2M" b2m.qcow2 > /dev/null ||
    fail "qemu-io b2m.qcow2"
every "clean 2M/64" b2m.qcow2
base bv2.qcow2 -o compat=0.10
every "clean v2" bv2.qcow2
base bx.qcow2 -o extended_l2=on
every "clean extended_l2" bx.qcow2
cp b.qcow2 snap.qcow2; qemu-img snapshot -c s1 snap.qcow2
qemu-io -c "write -P 5 0 64k" snap.qcow2 > /dev/null
all3 "snapshot" snap.qcow2
cp b.qcow2 bm.qcow2; qemu-img bitmap --add bm.qcow2 b0
qemu-io -c "write -P 6 128k 64k" bm.qcow2 > /dev/null
all3 "bitmap" bm.qcow2
qemu-img create -q -f qcow2 -o data_file=bd.raw bd.qcow2 4M
qemu-io -c "write -P 1 0 192k" -c "write -z 1M 64k" bd.qcow2 > /dev/null
same_check "data file" bd.qcow2
cp b.qcow2 d.qcow2; truncate -s 100k d.qcow2
every "truncated" d.qcow2

data_cluster() { echo $(( ($($POKE "$1" l2 0 "$2") & 0x00fffffffffffe00) >> 16 )); }
l2_cluster() { echo $(( ($($POKE "$1" l1 0) & 0x00fffffffffffe00) >> 16 )); }

# A leak: a cluster at the end of the file counted (qemu-img looks no
# further than the file), and a data cluster counted twice.
cp b.qcow2 d.qcow2
end=$(( $(stat -c %s d.qcow2) / 65536 ))
truncate -s +256k d.qcow2
$POKE d.qcow2 rc $((end + 2)) 1
all3 "leak past end" d.qcow2
repairs_clean "leak past end" d.qcow2
cp b.qcow2 d.qcow2; $POKE d.qcow2 rc "$(data_cluster d.qcow2 1)" 2
all3 "leak + COPIED" d.qcow2
repairs_clean "leak + COPIED" d.qcow2

# Refcount too low: 0 (rebuild) and 1 for a cluster two entries use.
cp b.qcow2 d.qcow2; $POKE d.qcow2 rc "$(data_cluster d.qcow2 2)" 0
all3 "refcount 0" d.qcow2
repairs_clean "refcount 0" d.qcow2
cp b.qcow2 d.qcow2; $POKE d.qcow2 l2 0 5 "$($POKE d.qcow2 l2 0 1)"
all3 "shared cluster" d.qcow2
repairs_clean "shared cluster" d.qcow2
cp b.qcow2 d.qcow2; $POKE d.qcow2 rc "$(l2_cluster d.qcow2)" 0
every "L2 refcount 0" d.qcow2
repairs_clean "L2 refcount 0" d.qcow2

# COPIED wrong in L1 and L2, and set on a compressed cluster.
cp b.qcow2 d.qcow2; $POKE d.qcow2 l1 0 $(( $($POKE d.qcow2 l1 0) & ~(1 << 63) ))
all3 "L1 COPIED clear" d.qcow2
repairs_clean "L1 COPIED clear" d.qcow2
cp b.qcow2 d.qcow2; $POKE d.qcow2 l2 0 0 $(( $($POKE d.qcow2 l2 0 0) & ~(1 << 63) ))
all3 "L2 COPIED clear" d.qcow2
repairs_clean "L2 COPIED clear" d.qcow2
cp b.qcow2 d.qcow2; $POKE d.qcow2 l2 0 32 $(( $($POKE d.qcow2 l2 0 32) | (1 << 63) ))
every "compressed COPIED" d.qcow2

# Out of range and unaligned entries.
cp b.qcow2 d.qcow2; $POKE d.qcow2 l1 0 $(( (1 << 63) | (1 << 40) ))
every "L2 past EOF" d.qcow2
cp b.qcow2 d.qcow2; $POKE d.qcow2 l1 0 $(( $($POKE d.qcow2 l1 0) + 4096 ))
every "L2 unaligned" d.qcow2
cp b.qcow2 d.qcow2; $POKE d.qcow2 l2 0 1 $(( $($POKE d.qcow2 l2 0 1) + 512 ))
every "data unaligned" d.qcow2
cp b.qcow2 d.qcow2; $POKE d.qcow2 l2 0 48 $(( $($POKE d.qcow2 l2 0 48) + 512 ))
all3 "zero cluster unaligned" d.qcow2
cp b.qcow2 d.qcow2; $POKE d.qcow2 l2 0 3 $(( (1 << 63) | (1 << 40) ))
every "data past EOF" d.qcow2
cp b.qcow2 d.qcow2; $POKE d.qcow2 l2 0 4 $(( $($POKE d.qcow2 l2 0 1) | 2 ))
every "L2 reserved bits" d.qcow2
cp b.qcow2 d.qcow2; $POKE d.qcow2 l1 0 $(( $($POKE d.qcow2 l1 0) | (1 << 56) ))
every "L1 reserved bits" d.qcow2

# Overlapping metadata: an L1 entry naming the refcount table, an L2 entry
# naming the L1 table.
cp b.qcow2 d.qcow2; $POKE d.qcow2 l1 0 $(( (1 << 63) | $($POKE d.qcow2 hdr64 48) ))
every "L1 -> refcount table" d.qcow2
cp b.qcow2 d.qcow2; $POKE d.qcow2 l2 0 7 $(( (1 << 63) | $($POKE d.qcow2 hdr64 40) ))
every "L2 -> L1 table" d.qcow2

# Refcount table entries: reserved bits, unaligned, past the end of the file.
cp b.qcow2 d.qcow2; $POKE d.qcow2 rt 0 $(( $($POKE d.qcow2 rt 0) | 1 ))
every "reftable reserved" d.qcow2
cp b.qcow2 d.qcow2; $POKE d.qcow2 rt 1 $(( 1 << 30 ))
all3 "refblock past EOF" d.qcow2
cp b.qcow2 d.qcow2; $POKE d.qcow2 rt 1 $(( $($POKE d.qcow2 rt 0) ))
every "refblock shared" d.qcow2

# Extended L2: allocation bits on an unallocated cluster, a cluster both
# allocated and zero.
cp bx.qcow2 d.qcow2; $POKE d.qcow2 l2bitmap 0 20 1
every "xl2 unallocated bitmap" d.qcow2
cp bx.qcow2 d.qcow2; $POKE d.qcow2 l2bitmap 0 0 $(( 0x1ffffffff ))
every "xl2 alloc+zero" d.qcow2

# Refcount widths other than 16 bits, and 512-byte clusters: a refcount
# lost (rebuild) and one too small.
cp b512.qcow2 d.qcow2; $POKE d.qcow2 rc 3 0
every "512/1 refcount 0" d.qcow2
repairs_clean "512/1 refcount 0" d.qcow2
for o in refcount_bits=2 refcount_bits=8 cluster_size=4k,refcount_bits=64 compat=0.10; do
    base w.qcow2 -o "$o"
    cb=$(( $($POKE w.qcow2 hdr32 20) ))
    cp w.qcow2 d.qcow2
    $POKE d.qcow2 rc $(( ($($POKE d.qcow2 l2 0 2) & 0x00fffffffffffe00) >> cb )) 0
    every "$o refcount 0" d.qcow2
    repairs_clean "$o refcount 0" d.qcow2
    cp w.qcow2 d.qcow2; $POKE d.qcow2 l2 0 9 "$($POKE d.qcow2 l2 0 1)"
    same_check "$o shared cluster" d.qcow2 -r all
done
# A 2 MiB-cluster image with 64-bit refcounts rebuilt.
cp b2m.qcow2 d.qcow2; $POKE d.qcow2 rc 1 0
every "2M/64 refcount 0" d.qcow2
repairs_clean "2M/64 refcount 0" d.qcow2

# Snapshot table: an unaligned snapshot L1 table.
cp snap.qcow2 d.qcow2; so=$($POKE d.qcow2 hdr64 64)
$POKE d.qcow2 hdr64 "$so" $(( $($POKE d.qcow2 hdr64 "$so") + 8 ))
every "snapshot L1 unaligned" d.qcow2

# The dirty bit: a lazy-refcounts image whose refcounts were not written
# (a refcount dropped and the bit set) is repaired by a read-write open.
qemu-img create -q -f qcow2 -o lazy_refcounts=on l.qcow2 4M
qemu-io -c "write -P 7 0 128k" l.qcow2 > /dev/null
$POKE l.qcow2 rc "$(data_cluster l.qcow2 1)" 0
$POKE l.qcow2 hdr64 72 1
qemu-img check l.qcow2 > /dev/null 2>&1; [ $? = 2 ] || fail "dirty image: qemu-img sees no damage"
"$UBLKD" img check l.qcow2 > /dev/null 2>&1; [ $? = 2 ] || fail "dirty image: img check repaired or missed it"
"$UBLKD" img io -c "write -P 8 64k 4k" l.qcow2 > io.out 2>&1 || { cat io.out >&2; fail "dirty image: rw open"; }
qemu-img check l.qcow2 > c.out 2>&1 || { cat io.out c.out >&2; fail "dirty image not repaired by the rw open"; }
[ "$($POKE l.qcow2 hdr64 72)" = 0x0 ] || fail "dirty bit still set"
qemu-io -c "read -P 7 0 64k" -c "read -P 8 64k 4k" -c "read -P 7 68k 60k" l.qcow2 > io.out ||
    { cat io.out >&2; fail "dirty image: data"; }
n_ok=$((n_ok + 1))

# A corrupt image opens read-write for -r all, which clears the bit.
cp b.qcow2 d.qcow2; $POKE d.qcow2 hdr64 72 2
"$UBLKD" img io -c "write 0 4k" d.qcow2 > /dev/null 2>&1 && fail "corrupt image opened read-write"
"$UBLKD" img check -r all d.qcow2 > r.out 2>&1 || { cat r.out >&2; fail "corrupt: -r all"; }
[ "$($POKE d.qcow2 hdr64 72)" = 0x0 ] || fail "corrupt bit still set after -r all"
n_ok=$((n_ok + 1))

echo "qcow2 check: $n_ok comparisons"
