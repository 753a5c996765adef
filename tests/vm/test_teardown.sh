#!/bin/bash
# del --force with I/O in flight: returns promptly, the device is gone, the daemon exited, fio
# ends.  (Plain del refuses: fio holds the device open; test_lifecycle covers that.)
# SIGTERM to the daemon does the same as del.
. "$(dirname "$0")/lib.sh"
need_cmd fio
mkimg $T/t.raw 64M
ublk_add raw $T/t.raw $CACHE_OPT -q 2 -d 256 >/dev/null
pid=$(ublk_pid $ID)
fio --name=t --filename="$DEV" --direct=1 --ioengine=io_uring --rw=randrw --bs=16k --iodepth=128 \
    --numjobs=2 --time_based --runtime=60 >/dev/null 2>&1 &
fpid=$!
# del must meet I/O in flight: fio's start-up under TCG can outlast any fixed
# sleep (then del met an idle device), so wait for the daemon's counters.
writes_seen() { [ "$(ublk_stat $ID write ops)" -gt 0 ]; }
wait_for writes_seen || fail "no writes reached the daemon before del"
kill -0 $fpid 2>/dev/null || fail "fio ended before del"
s=$(date +%s)
if "$UBLKD" del -n $ID 2>$T/del.err; then fail "del took a device fio has open"; fi
grep -q "busy: pid $fpid\|busy: pid [0-9]* (fio)" $T/del.err || fail "del's refusal does not name fio: $(cat $T/del.err)"
timeout 60 "$UBLKD" del -n $ID --force || fail "del --force with I/O in flight failed or hung"
log "del took $(( $(date +%s) - s ))s"
[ ! -e /dev/ublkb$ID ] || fail "device still there"
! kill -0 $pid 2>/dev/null || fail "daemon still running"
timeout 30 sh -c "while kill -0 $fpid 2>/dev/null; do sleep 0.2; done" || fail "fio hangs after del"
wait $fpid || true
[ -z "$("$UBLKD" list -n $ID 2>/dev/null)" ] || fail "device still listed"
# SIGTERM path
ublk_add raw $T/t.raw $CACHE_OPT >/dev/null
pid=$(ublk_pid $ID)
kill -TERM $pid
wait_for sh -c "! kill -0 $pid 2>/dev/null" || fail "daemon ignored SIGTERM"
wait_for sh -c "[ ! -e /sys/class/ublk-char/ublkc$ID ]" || fail "SIGTERM left the device in the kernel"
