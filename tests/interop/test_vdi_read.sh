#!/bin/bash
# Images made by qemu-img 7.2 (dynamic with data, static, odd sizes, empty,
# discarded blocks) read identically through ublkd and qemu-img.
. "$(dirname "$0")/vdi-common.sh"
T=$VDI_TMP

qemu-img create -q -f vdi "$T/dyn.vdi" 64M
qemu-io -f vdi -c "write -P 0xab 0 64k" -c "write -P 0xcd 3M 1M" -c "write -P 0x11 10M 2M" \
    -c "write -P 0x22 63M 512" "$T/dyn.vdi" >/dev/null || vdi_fail "qemu-io write"
vdi_same_raw "$T/dyn.vdi" dynamic

qemu-img create -q -f vdi -o static=on "$T/static.vdi" 8M
qemu-io -f vdi -c "write -P 0x33 1M 4k" "$T/static.vdi" >/dev/null || vdi_fail "qemu-io write static"
vdi_same_raw "$T/static.vdi" static

qemu-img create -q -f vdi "$T/odd.vdi" $((3 * 1024 * 1024 + 512 * 7))   # not a MiB multiple
qemu-io -f vdi -c "write -P 0x44 3M 3584" "$T/odd.vdi" >/dev/null || vdi_fail "qemu-io write odd"
vdi_same_raw "$T/odd.vdi" odd-mib

# Sizes that are not sector multiples (VBoxManage convertfromraw): both
# tools round the size up to 512.
cp "$T/odd.vdi" "$T/odd512.vdi"
vdi_poke64 "$T/odd512.vdi" 368 $((3 * 1024 * 1024 + 1000))
vdi_same_raw "$T/odd512.vdi" odd-sector
sz=$("$UBLKD" img info --output=json "$T/odd512.vdi" | sed -n 's/.*"virtual-size": *\([0-9]*\).*/\1/p' | head -1)
[ "$sz" = $((3 * 1024 * 1024 + 1024)) ] || vdi_fail "odd-sector: virtual size $sz"

qemu-img create -q -f vdi "$T/empty.vdi" 0
vdi_same_raw "$T/empty.vdi" empty

# A DISCARDED (0xfffffffe) entry reads as zeros in both.
cp "$T/dyn.vdi" "$T/disc.vdi"
vdi_poke32 "$T/disc.vdi" $((512 + 3 * 4)) 0xfffffffe
vdi_same_raw "$T/disc.vdi" discarded

# qemu-img map and ublkd img map agree on what is data and what is zero.
qemu-img map --output=json -f vdi "$T/dyn.vdi" > "$T/map.q"
"$UBLKD" img map --output=json -f vdi "$T/dyn.vdi" > "$T/map.u" || vdi_fail "ublkd img map"
diff -u "$T/map.q" "$T/map.u" || vdi_fail "map output differs"
echo "ok: map output identical"
