#!/bin/bash
# convert --bitmaps, read-only bitmap readers, remove and check of
# qcow2 persistent dirty bitmaps against qemu-img/qemu-io/qemu-nbd 7.2:
# `ublkd img convert --bitmaps` of an image whose bitmaps qemu-img made
# gives a target that lists the same bitmaps (names, granularity, flags,
# order) with the same bits as qemu-img convert's, and both checkers find
# it clean; its refusals (--skip-broken-bitmaps alone, a source or target
# without bitmaps, an inconsistent bitmap, a name the target has) say what
# qemu-img says with its exit code, and --skip-broken-bitmaps skips with
# qemu-img's warning; `img bitmap --remove` leaves the image as compact as
# qemu-img's; `img check` reports a crafted directory or table as
# qemu-img check does.
. "$(dirname "$0")/lib.sh"
require_format qcow2
require_cmd qemu-nbd nbdinfo

n_ok=0
# bitmaps_json FILE: the bitmaps qemu-img info lists.
bitmaps_json() { "$QEMU_IMG" info --output=json "$1" | jq -c '."format-specific".data.bitmaps'; }
# both_rc LABEL ARGS...: `convert ARGS` by both tools (OUT in ARGS names
# each tool's own target); same exit code and messages.
both_rc() {
    local label=$1
    shift
    rm -f q.out.qcow2 u.out.qcow2
    [ -f tgt.qcow2 ] && { cp tgt.qcow2 q.out.qcow2; cp tgt.qcow2 u.out.qcow2; }
    "$QEMU_IMG" convert "${@//OUT/q.out.qcow2}" >q.out 2>&1; local qrc=$?
    uimg convert "${@//OUT/u.out.qcow2}" >u.out 2>&1; local urc=$?
    sed -i 's/q\.out\.qcow2/X/g' q.out; sed -i 's/u\.out\.qcow2/X/g' u.out
    [ $urc = $qrc ] || { cat q.out u.out >&2; fail "$label: ublkd exit $urc, qemu-img $qrc"; }
    same_output "$label" u.out q.out
    n_ok=$((n_ok + 1))
}

# ---- the bitmaps qemu-img made, copied: same list, same bits, clean
"$QEMU_IMG" create -q -f qcow2 s.qcow2 10M
"$QEMU_IMG" bitmap --add s.qcow2 b1
"$QEMU_IMG" bitmap --add -g 4k s.qcow2 small
"$QEMU_IMG" bitmap --add -g 1M s.qcow2 big
"$QEMU_IMG" bitmap --add s.qcow2 off --disable
"$QEMU_IO" -c 'write -P 1 0 64k' -c 'write -P 2 1000k 12k' -c 'write -z 3M 1M' \
    -c 'discard 6M 64k' -c 'write -P 3 9M 4k' s.qcow2 >/dev/null
"$QEMU_IMG" bitmap --enable s.qcow2 off
"$QEMU_IO" -c 'write -P 4 5M 512' s.qcow2 >/dev/null
"$QEMU_IMG" bitmap --disable s.qcow2 off
"$QEMU_IMG" convert --bitmaps -O qcow2 s.qcow2 q.qcow2
uimg convert --bitmaps -O qcow2 s.qcow2 u.qcow2 || fail "convert --bitmaps failed"
[ "$(bitmaps_json u.qcow2)" = "$(bitmaps_json q.qcow2)" ] ||
    fail "convert --bitmaps: ublkd's target lists $(bitmaps_json u.qcow2), qemu's $(bitmaps_json q.qcow2)"
bitmaps_json u.qcow2 | grep -q '"name":"off","granularity":65536' ||
    fail "convert --bitmaps: the disabled bitmap is missing or enabled"
for n in b1 small big off; do
    bitmap_map q.qcow2 $n >mq.out; bitmap_map u.qcow2 $n >mu.out
    grep -q dirty mq.out || fail "bitmap $n: qemu's copy has no dirty range (test setup)"
    diff -u mq.out mu.out >&2 || fail "convert --bitmaps: bitmap $n differs (qemu's is -)"
done
"$QEMU_IMG" check -q u.qcow2 || fail "qemu-img check of ublkd's convert --bitmaps target"
uimg check -q u.qcow2 || fail "ublkd img check of its convert --bitmaps target"
"$QEMU_IMG" compare s.qcow2 u.qcow2 >/dev/null || fail "convert --bitmaps: data differs"
n_ok=$((n_ok + 1))
# a ublkd target converted again by each tool: still the same
"$QEMU_IMG" convert --bitmaps -O qcow2 u.qcow2 q2.qcow2
uimg convert --bitmaps -O qcow2 u.qcow2 u2.qcow2 || fail "second convert --bitmaps failed"
[ "$(bitmaps_json u2.qcow2)" = "$(bitmaps_json q2.qcow2)" ] || fail "second convert: lists differ"
bitmap_map q2.qcow2 small >mq.out; bitmap_map u2.qcow2 small >mu.out
diff -u mq.out mu.out >&2 || fail "second convert: bitmap small differs"
n_ok=$((n_ok + 1))

# ---- a read-only source: the bitmaps of a file no one may write
# (the open is read-only: nothing marks them in use, the image is untouched)
cp s.qcow2 ro.qcow2
sum=$(md5sum <ro.qcow2)
uimg convert --bitmaps -O qcow2 ro.qcow2 uro.qcow2 || fail "convert --bitmaps of ro.qcow2"
[ "$(md5sum <ro.qcow2)" = "$sum" ] || fail "convert --bitmaps changed its source"
uimg info ro.qcow2 | grep -q 'name: small' || fail "img info of a read-only open lists no bitmaps"
"$QEMU_IMG" create -q -f qcow2 m.qcow2 10M
"$QEMU_IMG" bitmap --add m.qcow2 dst
cp m.qcow2 mq.qcow2
"$QEMU_IMG" bitmap --merge small -b ro.qcow2 mq.qcow2 dst
uimg bitmap --merge small -b ro.qcow2 m.qcow2 dst || fail "merge from a read-only source"
[ "$(md5sum <ro.qcow2)" = "$sum" ] || fail "bitmap --merge -b changed its source"
bitmap_map mq.qcow2 dst >mq.out; bitmap_map m.qcow2 dst >mu.out
diff -u mq.out mu.out >&2 || fail "merge from a read-only source: bits differ"
n_ok=$((n_ok + 1))

# ---- refusals and warnings, with qemu-img's words and exit codes
both_rc "--skip-broken-bitmaps alone" --skip-broken-bitmaps -O qcow2 s.qcow2 OUT
both_rc "raw target" --bitmaps -O raw s.qcow2 OUT
"$QEMU_IMG" create -q -f raw r.raw 1M
both_rc "raw source" --bitmaps -O qcow2 r.raw OUT
"$QEMU_IMG" create -q -f qcow2 -o compat=0.10 v2.qcow2 1M
both_rc "v2 source" --bitmaps -O qcow2 v2.qcow2 OUT
both_rc "v2 target" --bitmaps -O qcow2 -o compat=0.10 s.qcow2 OUT
"$QEMU_IMG" create -q -f qcow2 tgt.qcow2 10M
"$QEMU_IMG" bitmap --add tgt.qcow2 big
both_rc "-n into a target that has one of the names" --bitmaps -n s.qcow2 OUT
[ "$(bitmaps_json u.out.qcow2)" = "$(bitmaps_json q.out.qcow2)" ] ||
    fail "-n with a name taken: the targets list $(bitmaps_json u.out.qcow2) and $(bitmaps_json q.out.qcow2)"
rm -f tgt.qcow2
"$QEMU_IMG" create -q -f qcow2 tgt.qcow2 10M
"$QEMU_IMG" bitmap --add -g 512 tgt.qcow2 mine
both_rc "-n into a target with bitmaps" --bitmaps -n s.qcow2 OUT
[ "$(bitmaps_json u.out.qcow2)" = "$(bitmaps_json q.out.qcow2)" ] ||
    fail "-n: the targets list $(bitmaps_json u.out.qcow2) and $(bitmaps_json q.out.qcow2)"
"$QEMU_IMG" check -q u.out.qcow2 || fail "-n with bitmaps: qemu-img check"
rm -f tgt.qcow2
# an inconsistent bitmap (left in use, as by a crash): the in_use flag
# of the second directory entry set by hand
cp s.qcow2 inc.qcow2
python3 - inc.qcow2 <<'EOF'
import struct, sys
f = open(sys.argv[1], 'r+b'); d = f.read()
p = struct.unpack('>I', d[100:104])[0]
while True:
    t, l = struct.unpack('>II', d[p:p + 8])
    assert t != 0, "no bitmaps extension"
    if t == 0x23852875:
        off = struct.unpack('>Q', d[p + 24:p + 32])[0]
        break
    p += 8 + (l + 7) // 8 * 8
nl = struct.unpack('>H', d[off + 18:off + 20])[0]
e2 = off + (24 + nl + 7) // 8 * 8
f.seek(e2 + 15); f.write(bytes([d[e2 + 15] | 1]))
EOF
"$QEMU_IMG" info inc.qcow2 | grep -q in-use || fail "could not craft a bitmap in use"
both_rc "an inconsistent bitmap" --bitmaps -O qcow2 inc.qcow2 OUT
both_rc "--skip-broken-bitmaps" --bitmaps --skip-broken-bitmaps -O qcow2 inc.qcow2 OUT
[ "$(bitmaps_json u.out.qcow2)" = "$(bitmaps_json q.out.qcow2)" ] ||
    fail "--skip-broken-bitmaps: the targets list $(bitmaps_json u.out.qcow2) and $(bitmaps_json q.out.qcow2)"
bitmap_map q.out.qcow2 big >mq.out; bitmap_map u.out.qcow2 big >mu.out
diff -u mq.out mu.out >&2 || fail "--skip-broken-bitmaps: bitmap big differs"

# ---- remove frees the clusters at once: `--remove --add` of one name in
# one run reuses them as qemu-img does (the same image end, no leaks)
for t in q u; do cp s.qcow2 rm$t.qcow2; done
"$QEMU_IMG" bitmap --remove --add -g 4k rmq.qcow2 small || fail "qemu-img remove+add"
uimg bitmap --remove --add -g 4k rmu.qcow2 small || fail "ublkd remove+add"
"$QEMU_IMG" check rmq.qcow2 >cq.out 2>&1 || fail "qemu-img check after qemu's remove"
"$QEMU_IMG" check rmu.qcow2 >cu.out 2>&1 || { cat cu.out >&2; fail "qemu-img check after ublkd's remove"; }
same_output "qemu-img check after remove and add" cu.out cq.out
[ "$(bitmaps_json rmu.qcow2)" = "$(bitmaps_json rmq.qcow2)" ] || fail "remove: lists differ"
n_ok=$((n_ok + 1))

# ---- crafted directories and tables: both checkers (and img info)
# report the same, exit codes included
cat >craft.py <<'EOF'
import struct, sys
# craft.py IMG CASE
img, case = sys.argv[1], sys.argv[2]
f = open(img, 'r+b'); d = f.read()
cs = 1 << struct.unpack('>I', d[20:24])[0]
p = struct.unpack('>I', d[100:104])[0]
while True:
    t, l = struct.unpack('>II', d[p:p + 8])
    assert t != 0
    if t == 0x23852875:
        nb = struct.unpack('>I', d[p + 8:p + 12])[0]
        dsz, off = struct.unpack('>QQ', d[p + 16:p + 32])
        break
    p += 8 + (l + 7) // 8 * 8
ents = []
q = off
for i in range(nb):
    toff, tsz, fl = struct.unpack('>QII', d[q:q + 16])
    nl = struct.unpack('>H', d[q + 18:q + 20])[0]
    ents.append((q, toff, tsz, fl))
    q += (24 + nl + 7) // 8 * 8
def w(pos, b):
    f.seek(pos); f.write(b)
e0, e1 = ents[0], ents[1]
l1off = struct.unpack('>Q', d[40:48])[0]
if case == 'te-reserved':      # a table entry with reserved bits
    w(e0[1], struct.pack('>Q', (1 << 60) | 1 * 0))
elif case == 'te-unaligned':   # a data cluster offset not cluster aligned
    w(e0[1], struct.pack('>Q', 0x50200))
elif case == 'te-beyond':      # a data cluster past the end of the file
    w(e0[1], struct.pack('>Q', 0x7f000000))
elif case == 'te-on-l1':       # a data cluster that is the L1 table
    w(e0[1], struct.pack('>Q', l1off))
elif case == 'dir-unaligned':  # a table offset not cluster aligned
    w(e0[0], struct.pack('>Q', e0[1] + 512))
elif case == 'dir-beyond':     # a table past the end of the file
    w(e0[0], struct.pack('>Q', 0x7f000000))
elif case == 'overlap':        # two bitmaps share one table
    w(e1[0], struct.pack('>Q', e0[1]))
elif case == 'in-use':         # in use on a closed image
    w(e0[0] + 12, struct.pack('>I', e0[3] | 1))
elif case == 'tsize-big':      # table size larger than the bitmap needs
    w(e0[0] + 8, struct.pack('>I', e0[2] + 1))
elif case == 'dir-size-zero':
    w(p + 16, struct.pack('>Q', 0))
elif case == 'nb-more':
    w(p + 8, struct.pack('>I', nb + 1))
else:
    raise SystemExit('unknown case')
EOF
"$QEMU_IMG" create -q -f qcow2 cb.qcow2 10M
"$QEMU_IMG" bitmap --add cb.qcow2 a; "$QEMU_IMG" bitmap --add cb.qcow2 b
"$QEMU_IO" -c 'write 0 1M' cb.qcow2 >/dev/null
for c in te-reserved te-unaligned te-beyond te-on-l1 dir-unaligned dir-beyond overlap in-use \
         tsize-big dir-size-zero nb-more; do
    cp cb.qcow2 $c.qcow2
    python3 craft.py $c.qcow2 $c || fail "crafting $c"
    for verb in check info; do
        "$QEMU_IMG" $verb $c.qcow2 >q.out 2>&1; qrc=$?
        uimg $verb $c.qcow2 >u.out 2>&1; urc=$?
        [ $urc = $qrc ] || { cat q.out u.out >&2; fail "$verb of $c: ublkd exit $urc, qemu-img $qrc"; }
        # the same words after ublkd's "qcow2: FILE: " prefix
        sed -i "s/qcow2: $c\.qcow2: //" u.out
        same_output "$verb of $c" u.out q.out
    done
    n_ok=$((n_ok + 1))
done

echo "ok: $n_ok cases" >&2
