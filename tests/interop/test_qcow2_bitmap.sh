#!/bin/bash
# qcow2 persistent dirty bitmaps against qemu-img/qemu-io/qemu-nbd 7.2:
# `ublkd img bitmap` gives qemu-img bitmap's output and exit codes on the
# same arguments, and an image both tools list alike (img info, text and
# json) that both checkers find clean; bitmaps qemu-img made are listed the
# same by ublkd and the other way round; writes, zero writes and discards
# through ublkd set exactly the bits QEMU's do for the same requests
# (compared as qemu-nbd --bitmap exports them, read with nbdinfo --map);
# resize, rebase, commit and convert keep them as qemu-img does; a killed
# writer leaves them in use, and what qemu-img then refuses, ublkd refuses
# with the same words.
. "$(dirname "$0")/lib.sh"
require_format qcow2
require_cmd qemu-nbd nbdinfo

n_ok=0
# Names differ only in the auto node names ("#block123") and the copies'.
bnorm() { sed -e 's/#block[0-9]*/#NODE/g' -e 's/\bu\.qcow2/X.qcow2/g' -e 's/\bq\.qcow2/X.qcow2/g'; }

# info_same FILE: both tools list FILE's bitmaps alike (text and json).
info_same() {
    uimg info "$1" >ui.out 2>&1; "$QEMU_IMG" info "$1" >qi.out 2>&1
    same_output "info $1" ui.out qi.out
    uimg info --output=json "$1" >ui.out 2>&1; "$QEMU_IMG" info --output=json "$1" >qi.out 2>&1
    same_output "info --output=json $1" ui.out qi.out
}
# checks_clean FILE: both checkers find nothing.
checks_clean() {
    "$QEMU_IMG" check -q "$1" || fail "$2: qemu-img check of $1"
    uimg check -q "$1" || fail "$2: ublkd img check of $1"
}
# maps_same A B NAME...: both images' bitmaps hold the same bits.
maps_same() {
    local a=$1 b=$2 n
    shift 2
    for n in "$@"; do
        bitmap_map "$a" "$n" >ma.out; bitmap_map "$b" "$n" >mb.out
        diff -u mb.out ma.out >&2 || fail "bitmap $n: $a and $b differ (qemu's is -)"
    done
}

# bitmap_both IMG ARGS...: each tool runs `bitmap ARGS` on its copy of IMG
# (the last argument names the bitmap, the one before the file: written
# as IMG); same exit code and output, then both list alike and check clean.
bitmap_both() {
    local img=$1
    shift
    cp "$img" q.qcow2; cp "$img" u.qcow2
    [ -f src.qcow2 ] && { cp src.qcow2 qsrc.qcow2; cp src.qcow2 usrc.qcow2; }
    local qa=("${@//IMG/q.qcow2}") ua=("${@//IMG/u.qcow2}")
    qa=("${qa[@]//SRC/qsrc.qcow2}"); ua=("${ua[@]//SRC/usrc.qcow2}")
    "$QEMU_IMG" bitmap "${qa[@]}" >q.out 2>&1; local qrc=$?
    uimg bitmap "${ua[@]}" >u.out 2>&1; local urc=$?
    bnorm <q.out >q.n; bnorm <u.out >u.n
    [ $urc = $qrc ] || { sed 's/^/    u| /' u.out >&2; sed 's/^/    q| /' q.out >&2
                         fail "bitmap $*: ublkd exit $urc, qemu-img $qrc"; }
    same_output "bitmap $*" u.n q.n
    "$QEMU_IMG" info u.qcow2 | bnorm >ui.out; "$QEMU_IMG" info q.qcow2 | bnorm >qi.out
    grep -v '^disk size' ui.out >ui.n; grep -v '^disk size' qi.out >qi.n
    same_output "bitmap $*: the bitmaps after" ui.n qi.n
    info_same u.qcow2
    info_same q.qcow2
    checks_clean u.qcow2 "bitmap $*"
    checks_clean q.qcow2 "bitmap $*"
    n_ok=$((n_ok + 1))
}

# ---- messages, exit codes and the result of every verb
"$QEMU_IMG" create -q -f qcow2 a.qcow2 10M
"$QEMU_IO" -c 'write -P 1 0 64k' a.qcow2 >/dev/null
"$QEMU_IMG" create -q -f qcow2 -o compat=0.10 v2.qcow2 10M
"$QEMU_IMG" create -q -f qcow2 src.qcow2 10M
"$QEMU_IMG" bitmap --add src.qcow2 s0
"$QEMU_IO" -c 'write 1M 64k' -c 'write 5M 1k' src.qcow2 >/dev/null
"$QEMU_IMG" create -q -f qcow2 big.qcow2 20M
"$QEMU_IMG" bitmap --add big.qcow2 s0
cp a.qcow2 b.qcow2
"$QEMU_IMG" bitmap --add b.qcow2 b0
"$QEMU_IMG" bitmap --add -g 128k b.qcow2 b1
"$QEMU_IMG" bitmap --disable b.qcow2 b1
"$QEMU_IO" -c 'write 2M 4k' -c 'write 9M 1M' b.qcow2 >/dev/null
long=$(printf 'n%.0s' $(seq 1024)); max=${long:1}
for args in "--add IMG x" "--add -g 512 IMG x" "--add -g 2G IMG x" "--add -g 4G IMG x" \
            "--add -g 1000 IMG x" "--add -g 0 IMG x" "--add -g 64k IMG x" "--add IMG $max" \
            "--add IMG $long" "--add IMG ''" "--add --add IMG x" "--add --remove IMG x" \
            "--add --disable IMG x" "--remove IMG x" "--clear IMG x" "--enable IMG x" \
            "--merge b0 IMG x" "--add --merge b0 IMG x" "IMG x" "--add IMG" "--add" \
            "-g 64k --remove IMG x" "-F qcow2 --add IMG x" "-b SRC --add IMG x" \
            "--add -g abc IMG x" "--add -g" "--bogus IMG x" "--add -f raw IMG x" \
            "--add -f qcow2 IMG x" "--add IMG x y" "--add nonexistent.qcow2 x"; do
    eval "bitmap_both a.qcow2 $args"
done
for args in "--add IMG b0" "--remove IMG b0" "--remove IMG b1" "--clear IMG b0" \
            "--clear IMG b1" "--enable IMG b1" "--disable IMG b0" "--disable IMG b1" \
            "--enable IMG b0" "--remove --add IMG b0" "--merge b1 IMG b0" "--merge b0 IMG b1" \
            "--merge nope IMG b0" "--merge b0 IMG nope" "--merge s0 -b SRC IMG b0" \
            "--merge s0 -b SRC -F qcow2 IMG b1" "--merge s0 -b SRC -F raw IMG b1" \
            "--merge s0 -b big.qcow2 IMG b0" "--merge zz -b SRC IMG b0" \
            "--clear --merge s0 -b SRC --disable IMG b0" "--add -g 1M IMG b2" \
            "--remove --remove IMG b0" "--add -g 2G IMG g"; do
    eval "bitmap_both b.qcow2 $args"
done
bitmap_both v2.qcow2 --add IMG x
# What each verb left must read back the same bits in QEMU's export.
for args in "--clear IMG b0" "--merge b0 IMG b1" "--merge s0 -b SRC IMG b1" "--add -g 1M IMG b2"; do
    eval "bitmap_both b.qcow2 $args"
    maps_same u.qcow2 q.qcow2 b0 b1
done
bitmap_both b.qcow2 --merge b0 IMG b1 --add IMG b3 --merge b1
maps_same u.qcow2 q.qcow2 b1

# ---- recording: the same requests through ublkd and through qemu-io
# (a granularity smaller than, equal to and larger than the cluster, one
# disabled bitmap that must not change, unaligned edges, zero writes with
# and without unmap, discards).
"$QEMU_IMG" create -q -f qcow2 r.qcow2 64M
"$QEMU_IMG" bitmap --add -g 4k r.qcow2 g4k
"$QEMU_IMG" bitmap --add r.qcow2 g64k
"$QEMU_IMG" bitmap --add -g 1M r.qcow2 g1m
"$QEMU_IMG" bitmap --add -g 512 r.qcow2 g512
"$QEMU_IMG" bitmap --add r.qcow2 off
"$QEMU_IO" -c 'write 40M 64k' r.qcow2 >/dev/null
"$QEMU_IMG" bitmap --disable r.qcow2 off
ios=(-c 'write -P 7 0 4k' -c 'write 100k 1' -c 'write 1000k 300k' -c 'write -z 8M 1M'
     -c 'write -z -u 12M 64k' -c 'discard 20M 128k' -c 'write 63M 1M' -c 'writev 30M 512 1k'
     -c 'write -z 33M 3k' -c 'discard 35M 7k')
cp r.qcow2 rq.qcow2; cp r.qcow2 ru.qcow2
"$QEMU_IO" "${ios[@]}" rq.qcow2 >/dev/null || fail "qemu-io on rq.qcow2"
uimg io "${ios[@]}" ru.qcow2 >/dev/null || fail "ublkd img io on ru.qcow2"
maps_same ru.qcow2 rq.qcow2 g4k g64k g1m g512 off
info_same ru.qcow2
checks_clean ru.qcow2 "recording"
bitmap_map ru.qcow2 g4k | grep -q '^ *8388608  *1048576  *1  *dirty' ||
    fail "recording: the zero write of 8M+1M is not in bitmap g4k"
n_ok=$((n_ok + 1))
# A second writable open keeps what the first recorded and adds to it.
"$QEMU_IO" -c 'write 50M 4k' rq.qcow2 >/dev/null
uimg io -c 'write 50M 4k' ru.qcow2 >/dev/null
maps_same ru.qcow2 rq.qcow2 g4k off
# img dd and convert -n into an image with bitmaps record as qemu-img's do.
cp r.qcow2 cq.qcow2; cp r.qcow2 cu.qcow2
"$QEMU_IMG" create -q -f raw in.raw 64M
"$QEMU_IO" -f raw -c 'write -P 3 3M 200k' -c 'write -P 4 60M 1M' in.raw >/dev/null
"$QEMU_IMG" convert -n -f raw -O qcow2 in.raw cq.qcow2
uimg convert -n -f raw -O qcow2 in.raw cu.qcow2
maps_same cu.qcow2 cq.qcow2 g4k g1m off
checks_clean cu.qcow2 "convert -n"
n_ok=$((n_ok + 1))

# ---- resize: the bitmaps follow (grow and shrink), or the resize is
# refused while one is in use
# (ublkd refuses to shrink over data, deliberately: the shrink cuts the
# growth off again)
cp ru.qcow2 zq.qcow2; cp ru.qcow2 zu.qcow2
for size in +10M --shrink\ -7M; do
    # shellcheck disable=SC2086
    "$QEMU_IMG" resize -q zq.qcow2 $size; uimg resize -q zu.qcow2 $size ||
        fail "resize $size"
    info_same zu.qcow2
    maps_same zu.qcow2 zq.qcow2 g4k g64k g1m g512 off
    checks_clean zu.qcow2 "resize $size"
    "$QEMU_IO" -c 'write 40M 1k' zq.qcow2 >/dev/null; uimg io -c 'write 40M 1k' zu.qcow2 >/dev/null
    maps_same zu.qcow2 zq.qcow2 g4k
    n_ok=$((n_ok + 1))
done

# ---- a writer killed while the image is open: the bitmaps stay in use
cp b.qcow2 k.qcow2
"$UBLKD" img bench -w -c 2000000 -d 1 -s 4k k.qcow2 >/dev/null 2>&1 &
pid=$!
for i in $(seq 100); do
    "$QEMU_IMG" info -U k.qcow2 2>/dev/null | grep -q in-use && break
    sleep 0.05
done
kill -9 $pid; killed_wait $pid k.qcow2
"$QEMU_IMG" info -U k.qcow2 | grep -q in-use || fail "killed writer: no bitmap in use"
info_same k.qcow2
# the checkers agree (qemu-img 7.2 says nothing of bitmaps in use)
"$QEMU_IMG" check k.qcow2 >qc.out 2>&1; qrc=$?
uimg check k.qcow2 >uc.out 2>&1; urc=$?
[ $qrc = $urc ] || fail "check after kill: qemu-img exit $qrc, ublkd $urc"
same_output "check after kill" uc.out qc.out
"$QEMU_IMG" check -r all k.qcow2 >qc.out 2>&1; qrc=$?
cp k.qcow2 k2.qcow2
for args in "--clear IMG b0" "--enable IMG b1" "--merge b0 IMG b1" "--remove IMG b0" \
            "--add IMG b0" "--remove IMG b1"; do
    eval "bitmap_both k.qcow2 $args"
done
cp k.qcow2 kq.qcow2; cp k.qcow2 ku.qcow2
"$QEMU_IMG" resize kq.qcow2 20M >q.out 2>&1; qrc=$?
uimg resize ku.qcow2 20M >u.out 2>&1; urc=$?
[ $qrc = $urc ] || fail "resize with a bitmap in use: qemu-img exit $qrc, ublkd $urc"
same_output "resize with a bitmap in use" u.out q.out
cmp -s k.qcow2 ku.qcow2 || fail "resize with a bitmap in use changed the image"
n_ok=$((n_ok + 1))

# ---- rebase, commit and convert keep the bitmaps (and the checks clean)
"$QEMU_IMG" create -q -f qcow2 base.qcow2 10M
"$QEMU_IO" -c 'write -P 9 0 2M' base.qcow2 >/dev/null
"$QEMU_IMG" bitmap --add base.qcow2 bb
for t in q u; do
    cp base.qcow2 base$t.qcow2
    "$QEMU_IMG" create -q -f qcow2 -b base$t.qcow2 -F qcow2 top$t.qcow2
    "$QEMU_IMG" bitmap --add top$t.qcow2 tb
    "$QEMU_IO" -c 'write -P 5 1M 64k' top$t.qcow2 >/dev/null
done
"$QEMU_IMG" create -q -f qcow2 nb.qcow2 10M
"$QEMU_IMG" bitmap --add -g 4k nb.qcow2 nbb
cp nb.qcow2 nbq.qcow2; cp nb.qcow2 nbu.qcow2
"$QEMU_IMG" rebase -b nbq.qcow2 -F qcow2 topq.qcow2
uimg rebase -b nbu.qcow2 -F qcow2 topu.qcow2
maps_same topu.qcow2 topq.qcow2 tb
info_same topu.qcow2
checks_clean topu.qcow2 rebase
"$QEMU_IMG" commit -q topq.qcow2; uimg commit -q topu.qcow2
maps_same nbu.qcow2 nbq.qcow2 nbb
bitmap_map nbu.qcow2 nbb | grep -q dirty || fail "commit: the base's bitmap recorded nothing"
maps_same topu.qcow2 topq.qcow2 tb
checks_clean topu.qcow2 commit; checks_clean nbu.qcow2 commit
"$QEMU_IMG" convert --bitmaps -O qcow2 ru.qcow2 conv.qcow2
maps_same conv.qcow2 rq.qcow2 g4k g1m off
"$QEMU_IMG" measure --output=json -O qcow2 ru.qcow2 >q.out
uimg measure --output=json -O qcow2 ru.qcow2 >u.out
same_output "measure of an image with bitmaps" u.out q.out
n_ok=$((n_ok + 1))

# ---- crafted directories: refused on open, as QEMU refuses them
cp b.qcow2 c.qcow2
diroff=$("$QEMU_IMG" info --output=json c.qcow2 >/dev/null; python3 - c.qcow2 <<'EOF'
import struct, sys
d = open(sys.argv[1], 'rb').read()
hl = struct.unpack('>I', d[100:104])[0]
p = hl
while True:
    t, l = struct.unpack('>II', d[p:p + 8])
    if t == 0:
        break
    if t == 0x23852875:
        print(struct.unpack('>Q', d[p + 24:p + 32])[0])
    p += 8 + (l + 7) // 8 * 8
EOF
)
[ -n "$diroff" ] || fail "no bitmap directory found in c.qcow2"
# poke OFFSET-IN-ENTRY0 BYTES-HEX: a copy of c.qcow2 with the first entry changed
poke() { cp c.qcow2 p.qcow2; printf "$2" | dd of=p.qcow2 bs=1 seek=$((diroff + $1)) conv=notrunc status=none; }
for case in '17 \x08' '17 \x20' '16 \x02' '12 \x00\x00\x00\x04' '8 \x00\x00\x00\x00' \
            '0 \x00\x00\x00\x00\x00\x00\x00\x00' '7 \x01' '20 \x00\x00\x00\x08' \
            '18 \xff\xff' '8 \x7f\x00\x00\x00'; do
    # shellcheck disable=SC2086
    poke $case
    "$QEMU_IMG" info p.qcow2 >q.out 2>&1; qrc=$?
    uimg info p.qcow2 >u.out 2>&1; urc=$?
    [ $urc = $qrc ] || { cat q.out u.out >&2; fail "crafted entry ($case): qemu-img exit $qrc, ublkd $urc"; }
    if [ $qrc != 0 ]; then
        grep -q "^ublkd img: Could not open 'p.qcow2': " u.out ||
            { cat u.out >&2; fail "crafted entry ($case): no clear error"; }
        # the same reason, after ublkd's "qcow2: FILE: " prefix
        qmsg=$(sed -n "s/^qemu-img: Could not open 'p.qcow2': //p" q.out)
        grep -qF "$qmsg" u.out || { cat q.out u.out >&2; fail "crafted entry ($case): other reason"; }
    fi
    n_ok=$((n_ok + 1))
done
echo "ok: $n_ok bitmap cases" >&2
