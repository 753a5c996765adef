#!/bin/bash
# Discard and write-zeroes: data then blkdiscard / blkdiscard -z reads back zeros, and
# discard punches holes in the image file; NOUNMAP zeroes (BLKZEROOUT) keep the allocation,
# zeroes without it (fallocate --punch-hole on the device) free it.
. "$(dirname "$0")/lib.sh"
need_cmd blkdiscard fallocate
mkimg $T/d.raw 64M
ublk_add raw $T/d.raw $CACHE_OPT >/dev/null
[ "$(cat /sys/block/ublkb$ID/queue/discard_max_bytes)" -gt 0 ] || fail "discard not advertised"
dd if=/dev/urandom of="$DEV" bs=1M count=32 oflag=direct status=none
usage() { du -k $T/d.raw | cut -f1; }
before=$(usage)
blkdiscard -o 4M -l 8M "$DEV" || fail "blkdiscard failed"
cmp -n $((8 << 20)) <(dd if="$DEV" bs=1M skip=4 count=8 iflag=direct status=none) /dev/zero \
  || fail "discarded range does not read as zeros"
u0=$(usage)
blkdiscard -z -o 16M -l 4M "$DEV" || fail "blkdiscard -z (write zeroes) failed"
cmp -n $((4 << 20)) <(dd if="$DEV" bs=1M skip=16 count=4 iflag=direct status=none) /dev/zero \
  || fail "write-zeroes range does not read as zeros"
u1=$(usage)
log "NOUNMAP write-zeroes of 4 MiB: image usage ${u0}k -> ${u1}k"
[ "$u1" -ge "$u0" ] || fail "NOUNMAP write-zeroes freed space in the image (${u0}k -> ${u1}k)"
# PUNCH_HOLE on a block device is write-zeroes without NOUNMAP: may unmap.
fallocate --punch-hole --keep-size -o 24M -l 4M "$DEV" || fail "fallocate --punch-hole failed"
cmp -n $((4 << 20)) <(dd if="$DEV" bs=1M skip=24 count=4 iflag=direct status=none) /dev/zero \
  || fail "punched range does not read as zeros"
u2=$(usage)
log "unmapping write-zeroes of 4 MiB: image usage ${u1}k -> ${u2}k"
[ "$u2" -le $((u1 - 4096)) ] || fail "write-zeroes without NOUNMAP kept the space (${u1}k -> ${u2}k)"
# Data around the ranges survived.
[ "$(dd if="$DEV" bs=1M skip=2 count=1 iflag=direct status=none | tr -d '\0' | wc -c)" -gt 0 ] \
  || fail "data before the discarded range was lost"
sleep 1.2
[ "$(ublk_stat $ID discard ops)" -gt 0 ] || fail "no discard counted"
[ "$(ublk_stat $ID write_zeroes ops)" -ge 2 ] || fail "write-zeroes not counted"
ublk_del $ID
after=$(usage)
log "image usage ${before}k -> ${after}k"
[ "$after" -lt "$before" ] || fail "discard did not free space in the image ($before -> $after KiB)"
