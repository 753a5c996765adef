#!/bin/bash
# qemu-img parity (issue 15): each case runs qemu-img 7.2 and ublkd img with
# the same arguments on the same files; exit code and output (modulo the
# program name) must be identical.  Where a command changes files, each tool
# works on its own copy and the results are compared as well.
. "$(dirname "$0")/lib.sh"
require_format raw vdi

# both ARGS...: same exit code and output from both tools.
both() {
    "$QEMU_IMG" "$@" >q.out 2>&1
    local qrc=$?
    uimg "$@" >u.out 2>&1
    local urc=$?
    [ $urc = $qrc ] || { sed 's/^/    u| /' u.out >&2; sed 's/^/    q| /' q.out >&2
                         fail "$*: ublkd exit $urc, qemu-img $qrc"; }
    same_output "$*" u.out q.out
}
# both_rc ARGS...: same exit code (for output that holds timings).
both_rc() {
    "$QEMU_IMG" "$@" >q.out 2>&1
    local qrc=$?
    uimg "$@" >u.out 2>&1
    local urc=$?
    [ $urc = $qrc ] || { sed 's/^/    u| /' u.out >&2; sed 's/^/    q| /' q.out >&2
                         fail "$*: ublkd exit $urc, qemu-img $qrc"; }
}

# --- info on vdi: no format-specific block, no second "disk size:" line
"$QEMU_IMG" create -q -f vdi d.vdi 10M
"$QEMU_IMG" create -q -f vdi -o static=on s.vdi 3M
"$QEMU_IO" -f vdi -c 'write -P 1 1M 64k' d.vdi >/dev/null
for f in d.vdi s.vdi; do
    both info "$f"
    both info --output=json "$f"
    both info -f vdi --backing-chain --output=json "$f"
    [ "$(uimg info "$f" | grep -c 'disk size')" = 1 ] || fail "info $f: more than one 'disk size' line"
done
"$QEMU_IMG" create -q -f raw r.img 10M
# raw with an offset: qemu 7.2 has no format-specific information for raw
uimg info 'json:{"driver":"raw","offset":4096,"size":8192,"file":{"driver":"file","filename":"r.img"}}' >u.out ||
    fail "info of raw with an offset"
grep -q 'Format specific' u.out && fail "info of raw with an offset prints format-specific information"

# --- info, map, check, compare beside a writer take qemu-img's locks: a raw
# image's reader lets the writer in; vdi's metadata child does not.
for img in r.img d.vdi; do
    "$QEMU_IO" -c 'sleep 60000' "$img" >/dev/null 2>&1 &
    qio=$!
    sleep 0.5
    both info "$img"
    both map "$img"
    both check "$img"
    both compare "$img" "$img"
    both_rc bench -c 1 "$img"
    kill $qio; wait $qio 2>/dev/null
done

# --- create: the size given twice, qemu's bool spellings (as typed in the
# "Formatting" line), the protocol's preallocation under vdi
both create -f raw -o size=2M c1.img 1M
[ -e c1.img ] && fail "create with the size given twice made c1.img"
for o in static=1 static=0 static=On static= static=yes static=y static=n static=true static=no \
         preallocation=full preallocation=falloc preallocation=off preallocation=metadata \
         static=on,preallocation=full; do
    "$QEMU_IMG" create -f vdi -o "$o" q.vdi 3M >q.out 2>&1; qrc=$?
    uimg create -f vdi -o "$o" u.vdi 3M >u.out 2>&1; urc=$?
    sed -i 's/q\.vdi/u.vdi/g' q.out
    [ $urc = $qrc ] || { cat u.out q.out >&2; fail "create -o $o: ublkd exit $urc, qemu-img $qrc"; }
    same_output "create -f vdi -o $o" u.out q.out
    if [ $qrc = 0 ]; then
        [ "$(stat -c %s u.vdi)" = "$(stat -c %s q.vdi)" ] || fail "create -o $o: file sizes differ"
        "$QEMU_IMG" check -q u.vdi || fail "create -o $o: qemu-img check of ublkd's image"
    fi
    rm -f q.vdi u.vdi
done
for o in preallocation=bogus preallocation=metadata; do
    both create -f raw -o "$o" p.img 1M
    rm -f p.img
done

# --- convert: -S 0 allocates everything (vdi too); -n into an existing
# sparse file keeps it sparse
make_sparse_raw src.raw 32M
for t in q u; do
    tool="$QEMU_IMG"; [ $t = u ] && tool="$UBLKD img"
    $tool convert -S 0 -f raw -O vdi src.raw $t.S0.vdi || fail "$t: convert -S 0 -O vdi"
    "$QEMU_IMG" create -q -f raw $t.n.raw 32M
    $tool convert -n -f raw -O raw src.raw $t.n.raw || fail "$t: convert -n"
    "$QEMU_IMG" map --output=json -f vdi $t.S0.vdi | sed "s/$t\.S0/X/g" >$t.S0.map
done
same_output "map of convert -S 0 -O vdi" u.S0.map q.S0.map
[ "$(alloc_bytes u.S0.vdi)" = "$(alloc_bytes q.S0.vdi)" ] ||
    fail "convert -S 0 -O vdi allocates $(alloc_bytes u.S0.vdi), qemu-img $(alloc_bytes q.S0.vdi)"
[ "$(alloc_bytes u.n.raw)" = "$(alloc_bytes q.n.raw)" ] ||
    fail "convert -n allocates $(alloc_bytes u.n.raw), qemu-img $(alloc_bytes q.n.raw)"
cmp u.n.raw src.raw || fail "convert -n: target differs from source"

# --- an unsupported option is named, not its argument
for o in "-C" "-r 1M"; do
    uimg convert $o -f raw -O raw src.raw x.raw >u.out 2>&1 && fail "convert $o succeeded"
    grep -qF "convert option '${o%% *}' is not supported" u.out || { cat u.out >&2; fail "convert $o: message"; }
done

# --- --object takes secrets (test_qcow2_luks.sh); a bad one is qemu-img's error
both convert --object secret,id=x -f raw -O raw src.raw x.raw

# --- usage errors exit 1 (compare too); a bad -T is a "source cache option"
both compare r.img
both compare a b c
both compare --bogus
both compare
both compare -T bogus r.img r.img
both check -T bogus r.img
both bench -t bogus r.img
both bench -t bogus

# --- dd as qemu-img 7.2's: the output files and the messages
head -c 6M src.raw >src6.raw   # 512-byte blocks: keep it small
"$QEMU_IMG" convert -f raw -O vdi src6.raw src.vdi
dd_both() {   # dd_both OPERANDS...: of= is added, one output per tool
    rm -f q.dd u.dd
    "$QEMU_IMG" dd "$@" of=q.dd >q.out 2>&1; local qrc=$?
    uimg dd "$@" of=u.dd >u.out 2>&1; local urc=$?
    sed -i 's/q\.dd/u.dd/g' q.out
    [ $urc = $qrc ] || { cat u.out q.out >&2; fail "dd $*: ublkd exit $urc, qemu-img $qrc"; }
    same_output "dd $*" u.out q.out
    if [ -e q.dd ]; then
        [ -e u.dd ] || fail "dd $*: no output from ublkd"
        "$QEMU_IMG" compare -q u.dd q.dd || fail "dd $*: outputs differ"
        [ "$(stat -c %s u.dd)" = "$(stat -c %s q.dd)" ] || fail "dd $*: output sizes differ"
    fi
}
dd_both if=src6.raw
dd_both -f raw if=src6.raw bs=1M count=3
dd_both if=src6.raw bs=64k skip=20 count=100
dd_both if=src6.raw bs=4k skip=100000
dd_both -f vdi -O vdi if=src.vdi bs=1M count=2 skip=1
dd_both if=src6.raw bs=1000 count=7
dd_both if=src6.raw bs=0
dd_both if=src6.raw bs=1x
dd_both if=src6.raw count=-1
dd_both if=src6.raw bogus=1
dd_both if=src6.raw nonsense
dd_both -O nosuchfmt if=src6.raw
dd_both if=nonexist.raw
both dd if=src6.raw
both dd --bogus if=src6.raw of=x
both dd -f
# a typo is not found, as in qemu-img (every qemu-img 7.2 command exists now)
both resizz x.img
for cmd in info map check compare convert create bench amend; do both $cmd -f; done

# --- ublksrv habits that need no kernel: help for every verb, add --help
# names exactly this build's drivers
for v in img add del list recover resize snapshot features; do
    "$UBLKD" help $v >h.out 2>&1 || { cat h.out >&2; fail "ublkd help $v failed"; }
    grep -qi "usage\|version" h.out || fail "ublkd help $v prints no usage"
done
"$UBLKD" help nosuchverb >/dev/null 2>&1 && fail "ublkd help nosuchverb succeeded"
# resize: its usage, and the argument errors it gives before it looks for a device.
"$UBLKD" resize --help >h.out 2>&1 || { cat h.out >&2; fail "ublkd resize --help failed"; }
grep -q "usage: ublkd resize -n ID \[--shrink\] SIZE" h.out || { cat h.out >&2; fail "resize --help: usage"; }
grep -q "UBLK_F_UPDATE_SIZE (Linux 6.14+)" h.out || { cat h.out >&2; fail "resize --help: kernel"; }
resize_fails() {  # resize_fails STATUS PATTERN ARGS...
    local want=$1 pat=$2 rc=0; shift 2
    "$UBLKD" resize "$@" >r.out 2>&1 || rc=$?
    [ "$rc" = "$want" ] || { cat r.out >&2; fail "ublkd resize $*: exit $rc, not $want"; }
    grep -q -- "$pat" r.out || { cat r.out >&2; fail "ublkd resize $*: no '$pat'"; }
}
resize_fails 2 "-n ID is required" 1G
resize_fails 2 "SIZE is required" -n 1
resize_fails 2 "one SIZE only" -n 1 1G 2G
resize_fails 2 "invalid size '12parsecs'" -n 1 12parsecs
resize_fails 2 "invalid size '+0'" -n 1 +0
resize_fails 2 "invalid size '99999E' (too large)" -n 1 99999E
resize_fails 2 "invalid device id 'x'" -n x 1G
resize_fails 2 "unknown option '--grow'" -n 1 --grow 1G
resize_fails 1 "no device 1048575" -n 1048575 1G
if "$UBLKD" add --help >h.out 2>&1; then
    want=$(uimg --help | sed -n 's/^Supported formats: //p')
    grep -qF "TYPE is a block driver of this build: $want." h.out ||
        { cat h.out >&2; fail "add --help does not list this build's drivers ($want)"; }
fi
exit 0
