#!/bin/bash
# A failed allocation leaves no scar (issue #10 item 3), as qemu-img check
# 7.2 judges it: blkdebug fails the block-map, data or header write of one of
# seven concurrent allocating writes (ublkd img bench -d 7); the image is
# clean at once, or its one hole is reused by the next allocation, the last
# block of the full disk can be written, and QEMU writing the image in
# between never lands on a live slot.
. "$(dirname "$0")/vdi-common.sh"
T=$VDI_TMP

# ",file.inject-error.N...." for rule N: event offset errno
rule() { echo -n ",file.inject-error.$1.event=write,file.inject-error.$1.offset=$2,file.inject-error.$1.errno=$3,file.inject-error.$1.once=on"; }
# 7 concurrent 1 MiB writes of 0x07 to blocks 0..6 of $1 through blkdebug with rules $2
bench7() {
    "$UBLKD" img bench -w -d 7 -c 7 -s 1M -S 1M --pattern=7 --image-opts \
        "driver=vdi,file.driver=blkdebug,file.image.filename=$1$2" >"$T/b.out" 2>&1
}
u32() { od -A n -t u4 -j "$2" -N 4 "$1" | tr -d ' '; }
fresh() { rm -f "$1"; qemu-img create -q -f vdi "$1" 8M || vdi_fail "create $1"; }
# Blocks $2.. of $1 read as pattern 7 (qemu-io's view).
reads7() {
    local img=$1 b; shift
    for b in "$@"; do
        qemu-io -f vdi -c "read -P 7 ${b}M 1M" "$img" >"$T/r.out" 2>&1 ||
            { cat "$T/r.out"; vdi_fail "$img: block $b does not read back"; }
    done
}
full_and_tight() {   # every block has a slot, and the file holds exactly 8 slots
    local img=$1 d
    d=$(u32 "$img" 344)
    [ "$(u32 "$img" 388)" = 8 ] || vdi_fail "$img: blocks_allocated $(u32 "$img" 388), expected 8"
    [ "$(stat -c %s "$img")" = $((d + 8 * 1048576)) ] ||
        vdi_fail "$img: file is $(stat -c %s "$img") bytes, expected $((d + 8 * 1048576))"
}

# 1. One transient map-write error: retried, nothing lost, clean at once.
fresh "$T/a.vdi"
bench7 "$T/a.vdi" "$(rule 0 512 5)" || { cat "$T/b.out"; vdi_fail "transient map error failed a write"; }
vdi_qemu_clean "$T/a.vdi"
reads7 "$T/a.vdi" 0 1 2 3 4 5 6
echo "ok: transient map-write error retried"

# 2. The map write and its retry fail: that write fails with EIO and leaves
# one hole (qemu-img check: count mismatch) while the others complete.
fresh "$T/b.vdi"
bench7 "$T/b.vdi" "$(rule 0 512 5)$(rule 1 512 5)" && vdi_fail "double map error: no write failed"
grep -q "Failed request at offset 0: Input/output error" "$T/b.out" || { cat "$T/b.out"; vdi_fail "message"; }
qemu-img check -f vdi "$T/b.vdi" >"$T/c.out" 2>&1
[ $? = 2 ] && grep -q "allocated blocks mismatch, is 6, should be 7" "$T/c.out" ||
    { cat "$T/c.out"; vdi_fail "expected one hole after the double map error"; }
# QEMU appends at blocks_allocated (slot 7), a free slot: nothing overwritten.
qemu-io -f vdi -c "write -P 7 7M 1M" "$T/b.vdi" >/dev/null || vdi_fail "qemu-io write block 7"
reads7 "$T/b.vdi" 1 2 3 4 5 6 7
# ublkd's next allocation takes the hole: the last block of the full disk.
"$UBLKD" img io -f vdi -c "write -P 7 0 1M" "$T/b.vdi" >"$T/w.out" 2>&1 ||
    { cat "$T/w.out"; vdi_fail "writing the last free block"; }
[ "$(u32 "$T/b.vdi" 512)" = 0 ] || vdi_fail "block 0 is in slot $(u32 "$T/b.vdi" 512), not the hole"
vdi_qemu_clean "$T/b.vdi"
"$UBLKD" img check -f vdi "$T/b.vdi" >"$T/c.out" 2>&1 || { cat "$T/c.out"; vdi_fail "ublkd check"; }
full_and_tight "$T/b.vdi"
reads7 "$T/b.vdi" 0 1 2 3 4 5 6 7
echo "ok: double map-write error: hole reused, full disk, clean"

# 3. A data write fails with ENOSPC (a full host file system): its slot goes
# back and the image is clean at once.  The error comes back before the
# later writes start, so the bench issues none; the blocks read zeros and can
# be written later, up to the full disk.
fresh "$T/c.vdi"
d=$(u32 "$T/c.vdi" 344)
bench7 "$T/c.vdi" "$(rule 0 $((d + 3 * 1048576 + 4096)) 28)" && vdi_fail "ENOSPC: no write failed"
grep -q "Failed request at offset 3145728: No space left on device" "$T/b.out" ||
    { cat "$T/b.out"; vdi_fail "ENOSPC message"; }
vdi_qemu_clean "$T/c.vdi"
[ "$(stat -c %s "$T/c.vdi")" = $((d + 3 * 1048576)) ] || vdi_fail "file grew past the 3 blocks written"
qemu-io -f vdi -c "read -P 0 3M 5M" "$T/c.vdi" >/dev/null || vdi_fail "unwritten blocks do not read zeros"
reads7 "$T/c.vdi" 0 1 2
"$UBLKD" img io -f vdi -c "write -P 7 3M 1M" -c "write -P 7 7M 1M" -c "write -P 7 4M 3M" \
    "$T/c.vdi" >"$T/w.out" 2>&1 || { cat "$T/w.out"; vdi_fail "writes after ENOSPC"; }
vdi_qemu_clean "$T/c.vdi"
full_and_tight "$T/c.vdi"
reads7 "$T/c.vdi" 0 1 2 3 4 5 6 7
echo "ok: ENOSPC on a data write: slot back, clean"

# 4. A header write fails: the write succeeds, the next publish or the
# closing flush rewrites the count.
fresh "$T/d.vdi"
bench7 "$T/d.vdi" "$(rule 0 0 5)" || { cat "$T/b.out"; vdi_fail "header error failed a write"; }
vdi_qemu_clean "$T/d.vdi"
[ "$(u32 "$T/d.vdi" 388)" = 7 ] || vdi_fail "blocks_allocated $(u32 "$T/d.vdi" 388), expected 7"
reads7 "$T/d.vdi" 0 1 2 3 4 5 6
echo "ok: header write error: count rewritten"
