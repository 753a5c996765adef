#!/bin/bash
# ublkd img check finds what qemu-img check finds on damaged vdi images, with
# the same exit codes, and repairs a wrong blocks_allocated with -r all.
. "$(dirname "$0")/vdi-common.sh"
T=$VDI_TMP

qemu-img create -q -f vdi "$T/base.vdi" 8M
qemu-io -f vdi -c "write -P 1 0 4k" -c "write -P 2 1M 4k" -c "write -P 3 2M 4k" "$T/base.vdi" >/dev/null ||
    vdi_fail "qemu-io write base.vdi"

# Reads are judged by the exit status (1 on a pattern mismatch, for qemu-io
# 7.2 and ublkd img io alike), never by grepping for "Pattern verification
# failed": a read that fails outright prints no such line and would pass.

check_both() {   # image, expected exit code
    local q u
    qemu-img check -f vdi "$1" >"$T/q.out" 2>&1; q=$?
    "$UBLKD" img check -f vdi "$1" >"$T/u.out" 2>&1; u=$?
    [ "$q" = "$2" ] || { cat "$T/q.out"; vdi_fail "$1: qemu-img check exit $q, expected $2"; }
    [ "$u" = "$q" ] || { cat "$T/q.out" "$T/u.out"; vdi_fail "$1: exit ublkd $u vs qemu $q"; }
}

check_both "$T/base.vdi" 0

cp "$T/base.vdi" "$T/dup.vdi"; vdi_poke32 "$T/dup.vdi" $((512 + 4)) 0    # block 1 -> slot 0
check_both "$T/dup.vdi" 2
grep -q "also used by" "$T/u.out" || vdi_fail "duplicate not reported"

cp "$T/base.vdi" "$T/big.vdi"; vdi_poke32 "$T/big.vdi" $((512 + 8)) 100
check_both "$T/big.vdi" 2
grep -q "too large" "$T/u.out" || vdi_fail "out-of-range entry not reported"

cp "$T/base.vdi" "$T/count.vdi"; vdi_poke32 "$T/count.vdi" 388 7
check_both "$T/count.vdi" 2
"$UBLKD" img check -r all -f vdi "$T/count.vdi" >"$T/r.out" 2>&1 || { cat "$T/r.out"; vdi_fail "repair"; }
vdi_qemu_clean "$T/count.vdi"

# Bad headers are refused with a message naming the image and the field.
cp "$T/base.vdi" "$T/bs.vdi"; vdi_poke32 "$T/bs.vdi" 376 65536
"$UBLKD" img info "$T/bs.vdi" >/dev/null 2>"$T/e" && vdi_fail "block size 64k accepted"
grep -q "bs.vdi.*unsupported block size 65536" "$T/e" || { cat "$T/e"; vdi_fail "message"; }
cp "$T/base.vdi" "$T/trunc.vdi"; truncate -s 520 "$T/trunc.vdi"   # inside the map
"$UBLKD" img info "$T/trunc.vdi" >/dev/null 2>"$T/e" && vdi_fail "truncated map accepted"
grep -q "extends beyond the end of the file" "$T/e" || { cat "$T/e"; vdi_fail "truncated message"; }
# Data area cut short: reads of the lost blocks fail, the rest reads.
cp "$T/base.vdi" "$T/short.vdi"; truncate -s $((1024 + 1024 * 1024 + 4096)) "$T/short.vdi"
"$UBLKD" img io -c "read -P 1 0 4k" "$T/short.vdi" >"$T/o" 2>&1 || { cat "$T/o"; vdi_fail "short: block 0"; }
"$UBLKD" img io -c "read 2M 4k" "$T/short.vdi" >"$T/o" 2>&1
grep -qi "error" "$T/o" || { cat "$T/o"; vdi_fail "short: no error for missing block"; }

# A slot given up (failed allocation or crash): block 0 unmapped leaves slots
# 1, 2 in use with blocks_allocated 3.  Both tools call it corrupt; -r all
# moves block 2 into slot 0 so both call it clean, the data is unchanged and
# QEMU's next block (at slot blocks_allocated) lands on a free slot.
cp "$T/base.vdi" "$T/hole.vdi"; vdi_poke32 "$T/hole.vdi" 512 0xffffffff
qemu-img convert -f vdi -O raw "$T/hole.vdi" "$T/hole.before.raw"
check_both "$T/hole.vdi" 2
"$UBLKD" img check -r all -f vdi "$T/hole.vdi" >"$T/r.out" 2>&1 || { cat "$T/r.out"; vdi_fail "hole repair"; }
check_both "$T/hole.vdi" 0
qemu-img convert -f vdi -O raw "$T/hole.vdi" "$T/hole.after.raw"
cmp "$T/hole.before.raw" "$T/hole.after.raw" || vdi_fail "hole repair changed the data"
qemu-io -f vdi -c "write -P 9 5M 4k" "$T/hole.vdi" >/dev/null || vdi_fail "hole repair: qemu-io write"
check_both "$T/hole.vdi" 0
qemu-io -f vdi -c "read -P 2 1M 4k" -c "read -P 3 2M 4k" -c "read -P 9 5M 4k" "$T/hole.vdi" >"$T/o" 2>&1 ||
    { cat "$T/o"; vdi_fail "hole repair: qemu's next block clobbered data"; }

# A static image whose data area was cut short: convert and compare must fail
# on the lost blocks, not read them as zeros.
qemu-img create -q -f vdi -o static=on "$T/st.vdi" 8M
qemu-io -f vdi -c "write -P 7 3M 4k" "$T/st.vdi" >/dev/null
truncate -s $((1024 + 2 * 1024 * 1024)) "$T/st.vdi"
"$UBLKD" img convert -f vdi -O raw "$T/st.vdi" "$T/st.raw" 2>"$T/e"; rc=$?
[ $rc = 1 ] || vdi_fail "truncated static convert: exit $rc, expected 1"
grep -q "error while reading at byte 2097152: Input/output error" "$T/e" || { cat "$T/e"; vdi_fail "truncated static convert message"; }
"$UBLKD" img compare "$T/st.vdi" "$T/st.vdi" >/dev/null 2>&1 && vdi_fail "truncated static compare succeeded"

# One allocating write must not hide a truncated block: it is refused, the
# file does not grow over the hole, and check still reports the block.
cp "$T/short.vdi" "$T/t.vdi"; sz=$(stat -c %s "$T/t.vdi")
"$UBLKD" img io -c "read 2M 4k" -c "write 5M 4k" -c "read -P 0 2M 4k" "$T/t.vdi" >"$T/o" 2>&1 &&
    { cat "$T/o"; vdi_fail "truncated: io succeeded"; }
grep -q "t.vdi.*data area truncated" "$T/o" || { cat "$T/o"; vdi_fail "truncated: no message"; }
[ "$(stat -c %s "$T/t.vdi")" = "$sz" ] || vdi_fail "truncated: file grew over the hole"
"$UBLKD" img check -f vdi "$T/t.vdi" >"$T/u.out" 2>&1; rc=$?
[ $rc = 2 ] || { cat "$T/u.out"; vdi_fail "truncated: check exit $rc after the write"; }
"$UBLKD" img io -c "read 2M 4k" "$T/t.vdi" 2>&1 | grep -qi "error" || vdi_fail "truncated: block reads"

# Two blocks in one slot: writes to either fail with a message (QEMU writes
# both silently), reads work.
"$UBLKD" img io -c "write -P 8 1M 4k" "$T/dup.vdi" >"$T/o" 2>&1 && vdi_fail "dup: write succeeded"
grep -q "dup.vdi: block 1 shares data slot 0" "$T/o" || { cat "$T/o"; vdi_fail "dup: no message"; }
"$UBLKD" img io -c "read -P 1 1M 4k" "$T/dup.vdi" >"$T/o" 2>&1 || { cat "$T/o"; vdi_fail "dup: read"; }

# Headers qemu-img 7.2 opens and checks clean, so do we: any header_size,
# VirtualBox's undo/diff types (null UUIDs).  Types VirtualBox does not
# define are read but not written.
for f in 72:0x100 72:0x17f 72:0x1000 76:3 76:4 76:5 76:0; do
    cp "$T/base.vdi" "$T/h.vdi"; vdi_poke32 "$T/h.vdi" "${f%%:*}" $((${f#*:}))
    check_both "$T/h.vdi" 0
    vdi_same_raw "$T/h.vdi" "hdr-${f/:/-}" >/dev/null
done
"$UBLKD" img io -c "write 0 4k" "$T/h.vdi" >/dev/null 2>"$T/e" && vdi_fail "type 0 written"
grep -q "h.vdi: unsupported image type 0 for writing" "$T/e" || { cat "$T/e"; vdi_fail "type 0 message"; }
echo "ok: check and bad images"
