#!/bin/bash
# Discard and write-zeroes: data then blkdiscard / blkdiscard -z reads back zeros, and
# discard punches holes in the image file; NOUNMAP zeroes keep the allocation.
. "$(dirname "$0")/lib.sh"
need_cmd blkdiscard
mkimg $T/d.raw 64M
ublk_add raw $T/d.raw $CACHE_OPT >/dev/null
[ "$(cat /sys/block/ublkb$ID/queue/discard_max_bytes)" -gt 0 ] || fail "discard not advertised"
dd if=/dev/urandom of="$DEV" bs=1M count=32 oflag=direct status=none
before=$(du -k $T/d.raw | cut -f1)
blkdiscard -o 4M -l 8M "$DEV" || fail "blkdiscard failed"
cmp -n $((8 << 20)) <(dd if="$DEV" bs=1M skip=4 count=8 iflag=direct status=none) /dev/zero \
  || fail "discarded range does not read as zeros"
blkdiscard -z -o 16M -l 4M "$DEV" || fail "blkdiscard -z (write zeroes) failed"
cmp -n $((4 << 20)) <(dd if="$DEV" bs=1M skip=16 count=4 iflag=direct status=none) /dev/zero \
  || fail "write-zeroes range does not read as zeros"
# Data around the ranges survived.
[ "$(dd if="$DEV" bs=1M skip=2 count=1 iflag=direct status=none | tr -d '\0' | wc -c)" -gt 0 ] \
  || fail "data before the discarded range was lost"
sleep 1.2
[ "$(ublk_stat $ID discard ops)" -gt 0 ] || fail "no discard counted"
[ "$(ublk_stat $ID write_zeroes ops)" -gt 0 ] || fail "no write-zeroes counted"
ublk_del $ID
after=$(du -k $T/d.raw | cut -f1)
log "image usage ${before}k -> ${after}k"
[ "$after" -lt "$before" ] || fail "discard did not free space in the image ($before -> $after KiB)"
