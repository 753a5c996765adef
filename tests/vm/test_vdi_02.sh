#!/bin/bash
# A filesystem on a vdi device: mkfs.ext4 (discards + metadata writes all
# over the disk), mount, copy a tree, umount, check with e2fsck, then
# qemu-img check and compare the device contents with qemu-img's reading.
. "$(dirname "$0")/lib.sh"
need_cmd mkfs.ext4 e2fsck qemu-img sha256sum

qemu-img create -q -f vdi "$T/fs.vdi" 128M
id=$(ublk_add vdi "$T/fs.vdi" -q 2 $CACHE_OPT)
dev=$(bdev "$id")
mkfs.ext4 -q -F "$dev" || fail "mkfs.ext4"
mkdir "$T/mnt"
mount "$dev" "$T/mnt" || fail "mount"
mkdir -p "$T/src"
for i in $(seq 1 40); do head -c $((i * 37 * 1024)) /dev/urandom > "$T/src/f$i"; done
cp -r /usr/include/linux "$T/src/linux-headers" 2>/dev/null || true
cp -r "$T/src" "$T/mnt/copy"
umount "$T/mnt"
mount "$dev" "$T/mnt" || fail "remount"
diff -r "$T/src" "$T/mnt/copy" || fail "copied tree differs after remount"
umount "$T/mnt"
e2fsck -fn "$dev" >/dev/null || fail "e2fsck"
want=$(sha256sum < "$dev" | cut -d' ' -f1)
ublk_del "$id"
_lib_devs=()
qemu-img check -f vdi "$T/fs.vdi" || fail "qemu-img check"
qemu-img convert -f vdi -O raw "$T/fs.vdi" "$T/fs.raw"
[ "$want" = "$(sha256sum < "$T/fs.raw" | cut -d' ' -f1)" ] || fail "qemu-img reads different data"
log "ok"
