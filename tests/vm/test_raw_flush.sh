#!/bin/bash
# Cache attributes follow the cache mode; flushes and FUA writes reach the daemon and the
# data is in the image file after del.
. "$(dirname "$0")/lib.sh"
mkimg $T/f.raw 32M
ublk_add raw $T/f.raw $CACHE_OPT >/dev/null
[ "$(cat /sys/block/ublkb$ID/queue/write_cache)" = "write back" ] || fail "write_cache is not 'write back'"
[ "$(cat /sys/block/ublkb$ID/queue/fua)" = 1 ] || fail "FUA not advertised"
# Plain O_DIRECT writes are not FUA; fsync sends a flush.
echo hello-flush | dd of="$DEV" bs=4k conv=sync,fsync oflag=direct status=none
sleep 1.2
fl=$(ublk_stat $ID flush ops); fua0=$(ublk_fua $ID)
log "after fsync: flush ops $fl, fua writes $fua0"
[ "$fl" -gt 0 ] || fail "fsync did not produce a flush"
[ "$fua0" = 0 ] || fail "plain O_DIRECT writes arrived as FUA ($fua0)"
# O_DIRECT|O_SYNC writes to a block device are REQ_FUA (block/fops.c), and
# with FUA advertised they reach the daemon as UBLK_IO_F_FUA.
echo hello-fua | dd of="$DEV" bs=4k seek=1 count=1 conv=sync oflag=direct,sync status=none
fio --name=fua --filename="$DEV" --direct=1 --sync=dsync --ioengine=psync --rw=write --bs=4k \
    --offset=1M --size=64k >/dev/null || fail "fio --sync=dsync failed"
sleep 1.2
fua=$(ublk_fua $ID)
log "fua writes $fua"
[ "$fua" -ge 17 ] || fail "expected at least 17 FUA writes (1 dd + 16 fio), the daemon saw $fua"
ublk_del $ID
head -c 11 $T/f.raw | grep -q hello-flush || fail "flushed data not in the image"
dd if=$T/f.raw bs=4k skip=1 count=1 status=none | grep -q hello-fua || fail "FUA data not in the image"
# writethrough: every write is stable, so no volatile cache is advertised.
ublk_add raw $T/f.raw --cache=writethrough >/dev/null
[ "$(cat /sys/block/ublkb$ID/queue/write_cache)" = "write through" ] || fail "writethrough still advertises a cache"
