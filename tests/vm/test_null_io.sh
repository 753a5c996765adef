#!/bin/bash
# A null device with 1 and 2 queues serves fio reads/writes/flushes without errors, and the counters move.
. "$(dirname "$0")/lib.sh"
for q in 1 2; do
  ublk_add null --size 256M -q $q >/dev/null
  [ "$(cat /sys/block/ublkb$ID/size)" = $((256 * 2048)) ] || fail "size is $(cat /sys/block/ublkb$ID/size) sectors"
  [ "$(ls /sys/block/ublkb$ID/mq | wc -l)" = $q ] || fail "expected $q hw queues"
  fio --name=n --filename="$DEV" --direct=1 --ioengine=io_uring --rw=randrw --bs=4k \
      --iodepth=32 --numjobs=$q --time_based --runtime=2 --fsync=64 --group_reporting >/dev/null \
    || fail "fio on the null device failed"
  sleep 1.2
  r=$(ublk_stat $ID read ops); w=$(ublk_stat $ID write ops); e=$(ublk_stat $ID read errors)
  log "q=$q read ops $r write ops $w read errors $e"
  [ "$r" -gt 0 ] && [ "$w" -gt 0 ] || fail "counters did not move (read $r write $w)"
  [ "$e" = 0 ] || fail "read errors: $e"
  ublk_del $ID
  [ ! -e "$DEV" ] || fail "$DEV still exists after del"
done
