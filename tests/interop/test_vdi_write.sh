#!/bin/bash
# Images ublkd creates and writes read identically through qemu-img and pass
# qemu-img check.
. "$(dirname "$0")/vdi-common.sh"
T=$VDI_TMP

"$UBLKD" img create -q -f vdi "$T/w.vdi" 40M || vdi_fail "ublkd img create"
vdi_qemu_clean "$T/w.vdi"
"$UBLKD" img io -f vdi -c "write -P 0x5a 1M 64k" -c "write -P 0xa5 5M 3M" \
    -c "write -P 0x77 39M 1023k" -c "write -P 0x01 0 512" "$T/w.vdi" >/dev/null ||
    vdi_fail "ublkd img io write"
vdi_qemu_clean "$T/w.vdi"
# Reads are judged by the exit status (1 on a pattern mismatch), not by a
# grep for "Pattern verification failed", which a failed read never prints.
qemu-io -f vdi -c "read -P 0x5a 1M 64k" -c "read -P 0 1088k 960k" -c "read -P 0xa5 5M 3M" \
    -c "read -P 0x77 39M 1023k" -c "read -P 0x01 0 512" "$T/w.vdi" >"$T/o" 2>&1 ||
    { cat "$T/o"; vdi_fail "qemu-io reading ublkd's writes"; }
vdi_same_raw "$T/w.vdi" ublkd-written

# qemu writes into a ublkd image and ublkd writes into a qemu image.
qemu-io -f vdi -c "write -P 0x66 20M 1M" "$T/w.vdi" >/dev/null || vdi_fail "qemu-io write into ublkd's image"
"$UBLKD" img io -f vdi -c "read -P 0x66 20M 1M" "$T/w.vdi" >"$T/o" 2>&1 ||
    { cat "$T/o"; vdi_fail "ublkd does not see qemu's write"; }
qemu-img create -q -f vdi "$T/q.vdi" 16M
"$UBLKD" img io -f vdi -c "write -P 0x42 2M 1536k" "$T/q.vdi" >/dev/null || vdi_fail "io into qemu image"
vdi_qemu_clean "$T/q.vdi"
vdi_same_raw "$T/q.vdi" qemu-made-ublkd-written

# Static images from ublkd: everything allocated, qemu agrees.
"$UBLKD" img create -q -f vdi -o static=on "$T/s.vdi" 5M || vdi_fail "create static"
vdi_qemu_clean "$T/s.vdi"
[ "$(stat -c %s "$T/s.vdi")" -ge $((5 * 1024 * 1024)) ] || vdi_fail "static image not preallocated"
qemu-img map --output=json "$T/s.vdi" > "$T/s.map" || vdi_fail "qemu-img map of the static image"
grep -q '"data": false' "$T/s.map" && vdi_fail "static image has unallocated blocks"

# Size limits as qemu-img.
"$UBLKD" img create -q -f vdi "$T/big.vdi" 5P 2>"$T/err" && vdi_fail "5P accepted"
grep -q "Unsupported VDI image size (size is 0x14000000000000, max supported is 0x1fffff8000000)" "$T/err" ||
    { cat "$T/err"; vdi_fail "size limit message"; }
# At the boundary both tools agree: the largest size creates and each tool
# opens the other's image; one byte more (rounded up to a sector) is refused
# by both with the same message.  The map alone is 2 GiB of 0xff entries, so
# one such image exists at a time.
max=$((0x1fffff8000000))
# A max-size image has a 2 GiB block map that cannot be sparse: only where
# the disk has room for it (CI machines have been seen with little free).
free_kb=$(df -Pk "$T" | awk 'NR==2 {print $4}')
if [ "${free_kb:-0}" -gt $((6 * 1024 * 1024)) ]; then
    "$UBLKD" img create -q -f vdi "$T/max.vdi" $max || vdi_fail "ublkd refuses the max size"
    qemu-img info --output=json "$T/max.vdi" | grep -q "\"virtual-size\": $max" ||
        vdi_fail "qemu-img cannot open ublkd's max-size image"
    head -c 392 "$T/max.vdi" | tail -c +65 | od -An -tx1 >"$T/max.u.hdr"
    rm -f "$T/max.vdi"
    qemu-img create -q -f vdi "$T/max.vdi" $max || vdi_fail "qemu-img refuses the max size"
    "$UBLKD" img info --output=json "$T/max.vdi" | grep -q "\"virtual-size\": *$max" ||
        vdi_fail "ublkd cannot open qemu-img's max-size image"
    head -c 392 "$T/max.vdi" | tail -c +65 | od -An -tx1 >"$T/max.q.hdr"
    rm -f "$T/max.vdi"
    diff -u "$T/max.q.hdr" "$T/max.u.hdr" || vdi_fail "max-size headers differ"
else
    echo "note: less than 6 GiB free in $T, max-size create round trip not run"
fi
qemu-img create -q -f vdi "$T/over.vdi" $((max + 1)) 2>"$T/err.q" && vdi_fail "qemu-img took max+1"
"$UBLKD" img create -q -f vdi "$T/over.vdi" $((max + 1)) 2>"$T/err.u" && vdi_fail "ublkd took max+1"
want="Unsupported VDI image size (size is 0x1fffff8000200, max supported is 0x1fffff8000000)"
grep -qF "$want" "$T/err.q" || { cat "$T/err.q"; vdi_fail "qemu-img max+1 message"; }
grep -qF "$want" "$T/err.u" || { cat "$T/err.u"; vdi_fail "ublkd max+1 message"; }
rm -f "$T/over.vdi"
echo "ok: ublkd-written images are clean and identical"
