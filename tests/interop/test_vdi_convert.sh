#!/bin/bash
# vdi <-> raw round trips are byte-exact both ways, with either tool on
# either side.
. "$(dirname "$0")/vdi-common.sh"
T=$VDI_TMP

# A raw image with data, holes and a tail that is not a MiB multiple.
truncate -s $((9 * 1024 * 1024 + 4096)) "$T/src.raw"
head -c 1500000 /dev/urandom | dd of="$T/src.raw" bs=4096 seek=10 conv=notrunc status=none
head -c 70000 /dev/urandom | dd of="$T/src.raw" bs=1 seek=$((6 * 1024 * 1024 + 3)) conv=notrunc status=none
head -c 4096 /dev/urandom | dd of="$T/src.raw" bs=4096 seek=2304 conv=notrunc status=none

"$UBLKD" img convert -f raw -O vdi "$T/src.raw" "$T/u.vdi" || vdi_fail "ublkd raw->vdi"
vdi_qemu_clean "$T/u.vdi"
qemu-img compare -f raw -F vdi "$T/src.raw" "$T/u.vdi" >/dev/null || vdi_fail "qemu-img compare raw vs ublkd vdi"
"$UBLKD" img convert -f vdi -O raw "$T/u.vdi" "$T/uu.raw" || vdi_fail "ublkd vdi->raw"
cmp "$T/src.raw" "$T/uu.raw" || vdi_fail "ublkd round trip not byte-exact"
qemu-img convert -f vdi -O raw "$T/u.vdi" "$T/uq.raw"
cmp "$T/src.raw" "$T/uq.raw" || vdi_fail "ublkd vdi read by qemu differs"

qemu-img convert -f raw -O vdi "$T/src.raw" "$T/q.vdi"
"$UBLKD" img convert -f vdi -O raw "$T/q.vdi" "$T/qu.raw" || vdi_fail "ublkd reading qemu vdi"
cmp "$T/src.raw" "$T/qu.raw" || vdi_fail "qemu vdi read by ublkd differs"

"$UBLKD" img compare "$T/q.vdi" "$T/u.vdi" >/dev/null || vdi_fail "ublkd img compare"
# Only the blocks holding data are allocated, as with qemu-img convert.
qa=$(qemu-img map --output=json "$T/q.vdi" | grep -c '"data": true')
ua=$(qemu-img map --output=json "$T/u.vdi" | grep -c '"data": true')
[ "$qa" = "$ua" ] || vdi_fail "allocation differs: qemu $qa runs, ublkd $ua runs"
echo "ok: vdi<->raw round trips byte-exact"
