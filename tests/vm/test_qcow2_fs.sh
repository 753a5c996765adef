#!/bin/bash
# File systems on qcow2 devices (2 queues): mkfs.ext4 and mkfs.xfs, mount,
# copy a tree, umount, remount and compare, fsck; after del qemu-img check
# is clean and qemu-img reads what the device served.  Then discard: the
# files are deleted and fstrim run, and the whole device blkdiscarded: each
# time the image's allocated size (qemu-img info's actual-size) drops and
# qemu-img check stays clean.
. "$(dirname "$0")/lib.sh"
need_cmd mkfs.ext4 e2fsck mkfs.xfs xfs_repair fstrim blkdiscard qemu-img jq

mkdir -p "$T/src" "$T/mnt"
for i in $(seq 1 16); do head -c $((i * 37 * 1024)) /dev/urandom > "$T/src/f$i"; done
mkdir "$T/src/d"
for i in $(seq 1 40); do echo "small file $i" > "$T/src/d/s$i"; done

disk_size() { qemu-img info -U --output=json "$1" | jq '.["actual-size"]'; }
check_clean() {
  local rc=0
  qemu-img check -q -f qcow2 "$1" >"$T/check.out" 2>&1 || rc=$?
  [ $rc = 0 ] || { cat "$T/check.out"; fail "$1 ($2): qemu-img check exit $rc"; }
}
fsck_dev() {
  case $1 in
    ext4) e2fsck -fn "$2" ;;
    xfs) xfs_repair -n "$2" ;;
  esac >"$T/fsck.out" 2>&1 || { cat "$T/fsck.out"; fail "$1: fsck of $2"; }
}

for fs in ext4 xfs; do
  img=$T/$fs.qcow2
  case $fs in ext4) size=96M;; xfs) size=320M;; esac   # mkfs.xfs wants 300M
  qemu-img create -q -f qcow2 "$img" $size
  id=$(ublk_add qcow2 "$img" -q 2 $CACHE_OPT)
  dev=$(bdev "$id")
  log "$fs: mkfs, copy, remount"
  case $fs in
    ext4) mkfs.ext4 -q -F -E nodiscard "$dev" ;;
    xfs) mkfs.xfs -q -f -K "$dev" ;;
  esac >/dev/null || fail "mkfs.$fs"
  mount "$dev" "$T/mnt" || fail "$fs: mount"
  cp -r "$T/src" "$T/mnt/copy"
  umount "$T/mnt"
  mount "$dev" "$T/mnt" || fail "$fs: remount"
  diff -r "$T/src" "$T/mnt/copy" || fail "$fs: copied tree differs after remount"
  umount "$T/mnt"
  fsck_dev $fs "$dev"
  # The file system flushed at umount: what qemu-img reads from the image
  # now must be what the device serves (one pass over both).
  qemu-img compare -U -q -f raw -F qcow2 "$dev" "$img" || fail "$fs: qemu-img reads other data than the device served"
  ublk_del "$id"
  check_clean "$img" "after the copy"
  full=$(disk_size "$img")

  log "$fs: delete, fstrim, blkdiscard"
  id=$(ublk_add qcow2 "$img" -q 2 $CACHE_OPT)
  dev=$(bdev "$id")
  mount "$dev" "$T/mnt" || fail "$fs: mount for fstrim"
  rm -rf "$T/mnt/copy"
  # Blocks of deleted files are free for fstrim only once the journal
  # has committed the delete.
  sync -f "$T/mnt"
  fstrim -v "$T/mnt" || fail "$fs: fstrim"
  umount "$T/mnt"
  fsck_dev $fs "$dev"
  trimmed=$(disk_size "$img")
  log "$fs: actual-size $full -> $trimmed after fstrim"
  # The tree was 5 MiB; most of its clusters must be gone.
  [ "$trimmed" -lt $((full - 3 * 1024 * 1024)) ] || fail "$fs: fstrim freed too little ($full -> $trimmed)"
  blkdiscard -f "$dev" || fail "$fs: blkdiscard"
  cmp -n $((8 << 20)) "$dev" /dev/zero || fail "$fs: discarded device does not read zeros"
  ublk_del "$id"
  check_clean "$img" "after fstrim and blkdiscard"
  empty=$(disk_size "$img")
  log "$fs: actual-size $trimmed -> $empty after blkdiscard"
  [ "$empty" -lt $((trimmed / 2)) ] || fail "$fs: blkdiscard freed too little ($trimmed -> $empty)"
  rm -f "$img"
done
log "ok"
