#!/bin/bash
# ublkd img check finds what qemu-img check finds on damaged vdi images, with
# the same exit codes, and repairs a wrong blocks_allocated with -r all.
. "$(dirname "$0")/vdi-common.sh"
T=$VDI_TMP

qemu-img create -q -f vdi "$T/base.vdi" 8M
qemu-io -f vdi -c "write -P 1 0 4k" -c "write -P 2 1M 4k" -c "write -P 3 2M 4k" "$T/base.vdi" >/dev/null

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
"$UBLKD" img io -c "read -P 1 0 4k" "$T/short.vdi" | grep -q "Pattern verification failed" && vdi_fail "short: block 0"
"$UBLKD" img io -c "read 2M 4k" "$T/short.vdi" >"$T/o" 2>&1
grep -qi "error" "$T/o" || { cat "$T/o"; vdi_fail "short: no error for missing block"; }
echo "ok: check and bad images"
