#!/bin/bash
# mkfs.ext4 + mount + write + sync + umount + del; the image is then checked on the host side
# (e2fsck -fn, and a loop mount sees the same files).
. "$(dirname "$0")/lib.sh"
need_cmd mkfs.ext4 e2fsck losetup
mkimg $T/fs.raw 128M
ublk_add raw $T/fs.raw $CACHE_OPT -q 2 >/dev/null
mkfs.ext4 -q -F "$DEV" || fail "mkfs.ext4 failed"
mkdir $T/mnt
mount "$DEV" $T/mnt || fail "mount failed"
dd if=/dev/urandom of=$T/mnt/big bs=1M count=20 status=none
for i in $(seq 50); do echo "file $i" > $T/mnt/f$i; done
sum=$(md5sum < $T/mnt/big)
sync
umount $T/mnt
ublk_del $ID
e2fsck -fn $T/fs.raw || fail "e2fsck found problems in the image"
mount -o loop,ro $T/fs.raw $T/mnt || fail "loop mount of the image failed"
[ "$(md5sum < $T/mnt/big)" = "$sum" ] || { umount $T/mnt; fail "data differs through loop"; }
[ "$(cat $T/mnt/f50)" = "file 50" ] || { umount $T/mnt; fail "small file differs"; }
umount $T/mnt
