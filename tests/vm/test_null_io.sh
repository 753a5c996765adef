#!/bin/bash
# A null device with 1 and 2 queues serves fio reads/writes/flushes at block sizes from 512 B to
# 1 MiB (above max_io_size: the kernel splits) and depths 1..128 without errors (half of the
# shapes on each queue count), and the daemon's counters account for exactly the bytes fio
# moved.  (No data to verify on null.)
. "$(dirname "$0")/lib.sh"
need_cmd fio
stat_bytes() { sleep 1.2; echo "$(ublk_stat $ID read bytes) $(ublk_stat $ID write bytes)"; }
for q in 1 2; do
  ublk_add null --size 256M -q $q >/dev/null
  [ "$(cat /sys/block/ublkb$ID/size)" = $((256 * 2048)) ] || fail "size is $(cat /sys/block/ublkb$ID/size) sectors"
  [ "$(ls /sys/block/ublkb$ID/mq | wc -l)" = $q ] || fail "expected $q hw queues"
  read -r r0 w0 < <(stat_bytes)
  # each queue count gets half of the shapes (fio under TCG costs seconds each)
  if [ $q = 1 ]; then jobs=("512 1 randrw" "4k 128 randread" "1M 4 rw")
  else jobs=("4k 32 randrw" "64k 8 randwrite" "4k-256k 16 randrw"); fi
  for job in "${jobs[@]}"; do
    read -r bs qd rw <<<"$job"
    bsopt=--bs=$bs; [[ $bs == *-* ]] && bsopt=--bsrange=$bs
    out=$(fio --name=n --filename="$DEV" --direct=1 --ioengine=io_uring --rw=$rw $bsopt \
          --iodepth=$qd --numjobs=$q --time_based --runtime=1 --group_reporting \
          --output-format=json 2>$T/fio.err) || { cat $T/fio.err; fail "fio bs=$bs qd=$qd $rw failed"; }
    [ "$(jq '[.jobs[].error] | add' <<<"$out")" = 0 ] || fail "fio bs=$bs qd=$qd $rw reported an error"
    read -r fr fw fios < <(jq -r '[.jobs[0].read.io_bytes, .jobs[0].write.io_bytes,
        (.jobs[0].read.total_ios + .jobs[0].write.total_ios)] | @tsv' <<<"$out")
    [ "$fios" -gt 0 ] || fail "fio bs=$bs qd=$qd $rw completed no I/O"
    read -r r1 w1 < <(stat_bytes)
    log "q=$q bs=$bs qd=$qd $rw: fio ios $fios read $fr write $fw; daemon read $((r1 - r0)) write $((w1 - w0))"
    [ $((r1 - r0)) = "$fr" ] || fail "bs=$bs qd=$qd $rw: daemon read $((r1 - r0)) bytes, fio $fr"
    [ $((w1 - w0)) = "$fw" ] || fail "bs=$bs qd=$qd $rw: daemon wrote $((w1 - w0)) bytes, fio $fw"
    r0=$r1 w0=$w1
  done
  fio --name=f --filename="$DEV" --direct=1 --ioengine=io_uring --rw=randwrite --bs=4k \
      --iodepth=8 --numjobs=$q --time_based --runtime=1 --fsync=64 --group_reporting >/dev/null \
    || fail "fio --fsync on the null device failed"
  sleep 1.2
  f=$(ublk_stat $ID flush ops)
  [ "$f" -gt 0 ] || fail "fsync produced no flush"
  for op in read write flush; do
    e=$(ublk_stat $ID $op errors); [ "$e" = 0 ] || fail "$op errors: $e"
  done
  ublk_del $ID
  [ ! -e "$DEV" ] || fail "$DEV still exists after del"
done
# More queues than the kernel grants (it caps them at the possible CPUs): a warning names both.
ncpu=$(( $(cut -d- -f2 /sys/devices/system/cpu/possible) + 1 ))
if [ "$ncpu" -lt 64 ]; then
  dev=$("$UBLKD" add null --size 16M -q 64 2>$T/warn) || fail "add -q 64 failed: $(cat $T/warn)"
  id=${dev#/dev/ublkb}; _lib_devs+=("$id")
  log "add -q 64: $(cat $T/warn)"
  grep -q -- "--queues 64: the kernel granted $ncpu" $T/warn || fail "no warning about -q 64 vs $ncpu: '$(cat $T/warn)'"
  [ "$(ls /sys/block/ublkb$id/mq | wc -l)" = $ncpu ] || fail "expected $ncpu hw queues"
  # PR_SET_IO_FLUSHER (PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE) on the daemon's own threads
  # (io_uring's iou-wrk helpers are the kernel's).
  pid=$(ublk_pid $id) n=0
  for st in /proc/$pid/task/*/stat; do
    read -r _ comm _ _ _ _ _ _ fl _ < $st
    [[ $comm == "(iou-"* ]] && continue
    n=$((n + 1))
    [ $(( fl & 0x180000 )) = $(( 0x180000 )) ] || fail "thread $comm ($st) is not an IO flusher (flags $fl)"
  done
  [ $n -ge $((ncpu + 1)) ] || fail "expected the main thread and $ncpu queue threads, saw $n"
  ublk_del $id
fi
