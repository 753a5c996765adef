#!/bin/bash
# SAFE_STOP_DEV and NO_AUTO_PART_SCAN (Linux 7.x).  `del` refuses a device that is
# open unless --force (on 7.x the kernel's TRY_STOP_DEV makes the check and the
# stop one step; on 6.12 only ublkd's own check runs), and deletes a closed one.
# --no-partition-scan keeps the kernel from scanning a disk that has a partition
# table (7.x); on 6.12 it fails saying what it needs.
. "$(dirname "$0")/lib.sh"
feats=$("$UBLKD" features)
mkimg $T/a.raw 32M
# An MBR with one Linux partition (sectors 2048..10239), written by hand:
# type 0x83 at 450, first LBA at 454, sector count at 458, signature at 510.
mbr() { printf "$2" | dd of=$T/a.raw bs=1 seek=$1 conv=notrunc status=none; }
mbr 450 '\x83'; mbr 454 '\x00\x08\x00\x00'; mbr 458 '\x00\x20\x00\x00'; mbr 510 '\x55\xaa'

ublk_add raw $T/a.raw $CACHE_OPT >/dev/null
wait_for test -b ${DEV}p1 || fail "without --no-partition-scan the kernel did not find ${DEV}p1"
exec 3<"$DEV"
if out=$("$UBLKD" del -n $ID 2>&1); then fail "del took away an open device"; fi
log "refused: $out"
grep -q "busy\|is open" <<<"$out" || fail "del's refusal does not say the device is in use: $out"
[ -b "$DEV" ] || fail "the refused del removed $DEV anyway"
exec 3<&-
ublk_del $ID
[ ! -e /sys/class/ublk-char/ublkc$ID ] || fail "device $ID still exists after del"

if grep -q UBLK_F_NO_AUTO_PART_SCAN <<<"$feats"; then
  ublk_add raw $T/a.raw $CACHE_OPT --no-partition-scan >/dev/null
  "$UBLKD" list -n $ID | grep -q NO_AUTO_PART_SCAN || fail "device lacks NO_AUTO_PART_SCAN"
  sleep 1
  [ ! -e ${DEV}p1 ] || fail "--no-partition-scan: the kernel scanned the disk anyway (${DEV}p1)"
  ublk_del $ID
else
  if out=$("$UBLKD" add raw $T/a.raw $CACHE_OPT --no-partition-scan 2>&1); then
    fail "--no-partition-scan was accepted by a kernel without NO_AUTO_PART_SCAN: $out"
  fi
  grep -q "lacks UBLK_F_NO_AUTO_PART_SCAN" <<<"$out" || fail "unclear error: $out"
  log "kernel $(uname -r) lacks NO_AUTO_PART_SCAN and SAFE_STOP_DEV: checked the refusal and" \
      "ublkd's own busy check; the kernel's are tested on Linux 7.x (VM_KERNEL=7.3)"
fi
