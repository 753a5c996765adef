#!/bin/bash
# --per-io-threads (UBLK_F_PER_IO_DAEMON, Linux 6.16+): N threads share the tags of all
# queues.  fio verify with one queue over two threads and two queues over three; every
# named thread is there (/proc/PID/task) and served requests (the count each logs when it
# stops); kill -9 and `ublkd recover` bring the same layout back with the data intact.
# On a kernel without the flag the option is refused, naming it, and no device is left.
. "$(dirname "$0")/lib.sh"
need_cmd fio jq
feats=$("$UBLKD" features)
mkimg $T/r.raw 64M

if ! grep -q UBLK_F_PER_IO_DAEMON <<<"$feats"; then
  before=$(ublk_ids | wc -l)
  if out=$("$UBLKD" add raw $T/r.raw $CACHE_OPT --per-io-threads=2 2>&1); then
    fail "--per-io-threads was accepted by a kernel without PER_IO_DAEMON: $out"
  fi
  grep -q "lacks UBLK_F_PER_IO_DAEMON" <<<"$out" || fail "unclear error: $out"
  [ "$(ublk_ids | wc -l)" = "$before" ] || fail "the refused add left a device behind"
  log "kernel $(uname -r) lacks PER_IO_DAEMON: refused ($out); the option itself is" \
      "tested on Linux 6.16+ (VM_KERNEL=7.3)"
  exit 0
fi

# threads PID ID: the names of the daemon's server threads, sorted.
threads() { cat /proc/$1/task/*/comm | grep "^ublk$2-" | sort | tr '\n' ' '; }
# cpu_ticks PID NAME: utime + stime of the daemon's thread NAME.
cpu_ticks() {
  local t
  for t in /proc/$1/task/*; do
    if [ "$(cat $t/comm)" = "$2" ]; then
      # comm has no spaces here, so the fields are where proc(5) says
      awk '{ print $14 + $15 }' $t/stat
      return
    fi
  done
  echo "no thread $2"
}

# run_verify QUEUES THREADS: add, check the threads, fio verify, del, check each thread's count.
run_verify() {
  local nq=$1 nt=$2 i want= pid
  ublk_add raw $T/r.raw $CACHE_OPT -q $nq --per-io-threads=$nt --log $T/d$nq.log >/dev/null
  "$UBLKD" list -n $ID | grep -q PER_IO_DAEMON || fail "device lacks PER_IO_DAEMON: $("$UBLKD" list -n $ID)"
  pid=$(ublk_pid $ID)
  for ((i = 0; i < nt; i++)); do want+="ublk$ID-t$i "; done
  [ "$(threads $pid $ID)" = "$want" ] || fail "-q $nq --per-io-threads=$nt: threads '$(threads $pid $ID)', want '$want'"
  "$UBLKD" list -n $ID | grep -q "I/O thread $((nt - 1)): tid [1-9]" \
    || fail "list does not show I/O thread $((nt - 1)): $("$UBLKD" list -n $ID)"
  [ "$("$UBLKD" list -n $ID --json | jq '.[0].io_threads | map(select(.tid > 0)) | length')" = $nt ] \
    || fail "list --json: io_threads is not $nt threads with tids"
  fio_verify "$DEV" --bs=4k --iodepth=32
  local cpu=
  for ((i = 0; i < nt; i++)); do cpu+="t$i $(cpu_ticks $pid ublk$ID-t$i) "; done
  ublk_del $ID
  for ((i = 0; i < nt; i++)); do
    local n
    n=$(sed -n "s/.*I\/O thread $i ([0-9]* tags) served \([0-9]*\) requests.*/\1/p" $T/d$nq.log)
    [ -n "$n" ] || { cat $T/d$nq.log; fail "thread $i logged no request count"; }
    [ "$n" -gt 0 ] || { cat $T/d$nq.log; fail "-q $nq --per-io-threads=$nt: thread $i served no request"; }
  done
  log "-q $nq --per-io-threads=$nt: verify ok; $(grep -o 'I/O thread.*' $T/d$nq.log | tr '\n' ';') CPU ticks $cpu"
}
run_verify 1 2
run_verify 2 3

# kill -9 under writes, recover: the new daemon serves with the same threads, fio sees no
# error (reissue), and the data verifies.
ublk_add raw $T/r.raw $CACHE_OPT -q 1 --per-io-threads=2 >/dev/null
pid=$(ublk_pid $ID)
fio --name=w --filename="$DEV" --direct=1 --ioengine=io_uring --rw=randwrite --bs=4k --iodepth=16 \
    --size=16M --time_based --runtime=10 --verify=crc32c --do_verify=0 --randrepeat=1 \
    --verify_state_save=0 --output-format=terse >$T/fio.out 2>&1 &
fpid=$!
writes_seen() { [ "$(ublk_stat $ID write ops)" -gt 0 ]; }
wait_for writes_seen || true
[ "$(ublk_stat $ID write ops)" -gt 0 ] || fail "no writes reached the daemon before the kill"
kill -0 $fpid 2>/dev/null || { cat $T/fio.out; fail "fio ended before the daemon was killed"; }
kill -9 "$pid"
wait_for sh -c "[ \"\$($UBLKD list -n $ID --json | jq -r '.[0].state')\" = QUIESCED ]" \
  || fail "device did not become QUIESCED (state $(ublk_state $ID))"
"$UBLKD" recover -n $ID || fail "ublkd recover of a --per-io-threads device failed"
[ "$(ublk_state $ID)" = LIVE ] || fail "device not LIVE after recover"
newpid=$(ublk_pid $ID)
[ "$newpid" != "$pid" ] || fail "pid did not change"
[ "$(threads $newpid $ID)" = "ublk$ID-t0 ublk$ID-t1 " ] \
  || fail "recovered daemon's threads: '$(threads $newpid $ID)'"
wait $fpid || { cat $T/fio.out; fail "fio saw errors across the recovery"; }
fio --name=w --filename="$DEV" --direct=1 --ioengine=io_uring --rw=randwrite --bs=4k --iodepth=16 \
    --size=16M --verify=crc32c --verify_only --randrepeat=1 --verify_fatal=1 >$T/v.out 2>&1 \
  || { cat $T/v.out; fail "verify after recovery failed"; }
log "kill -9 + recover with --per-io-threads=2: fio and verify ok"
