#!/bin/bash
# Cache attributes follow the cache mode; flushes and FUA writes reach the daemon and the
# data is in the image file after del.
. "$(dirname "$0")/lib.sh"
mkimg $T/f.raw 32M
ublk_add raw $T/f.raw $CACHE_OPT >/dev/null
[ "$(cat /sys/block/ublkb$ID/queue/write_cache)" = "write back" ] || fail "write_cache is not 'write back'"
[ "$(cat /sys/block/ublkb$ID/queue/fua)" = 1 ] || fail "FUA not advertised"
echo hello-flush | dd of="$DEV" bs=4k conv=sync,fsync oflag=direct status=none
# O_SYNC|O_DIRECT writes go down as FUA writes.
echo hello-fua | dd of="$DEV" bs=4k seek=1 conv=sync oflag=direct,sync status=none
sleep 1.2
fl=$(ublk_stat $ID flush ops)
log "flush ops $fl"
[ "$fl" -gt 0 ] || fail "fsync did not produce a flush"
ublk_del $ID
head -c 11 $T/f.raw | grep -q hello-flush || fail "flushed data not in the image"
dd if=$T/f.raw bs=4k skip=1 count=1 status=none | grep -q hello-fua || fail "FUA data not in the image"
# writethrough: every write is stable, so no volatile cache is advertised.
ublk_add raw $T/f.raw --cache=writethrough >/dev/null
[ "$(cat /sys/block/ublkb$ID/queue/write_cache)" = "write through" ] || fail "writethrough still advertises a cache"
