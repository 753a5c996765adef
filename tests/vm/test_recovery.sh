#!/bin/bash
# kill -9 the daemon while fio is writing: the device goes QUIESCED, I/O waits, `ublkd recover`
# brings a new daemon, fio finishes, and a verify pass over everything written succeeds.
. "$(dirname "$0")/lib.sh"
need_cmd fio
mkimg $T/r.raw 64M
ublk_add raw $T/r.raw $CACHE_OPT -q 2 >/dev/null
pid=$(ublk_pid $ID)
# Time-based, so it is certainly still writing when the daemon dies (20 s:
# on a loaded host fio's start-up and the first counter update took most of
# an 8 s run, and fio finished before the kill); the verify pass below
# replays the same sequence (randrepeat) over the 16 MiB.
fio --name=w --filename="$DEV" --direct=1 --ioengine=io_uring --rw=randwrite --bs=4k --iodepth=16 \
    --size=16M --time_based --runtime=20 --verify=crc32c --do_verify=0 --randrepeat=1 \
    --verify_state_save=0 --output-format=terse >$T/fio.out 2>&1 &
fpid=$!
# fio's start-up under TCG on a busy host can take seconds: wait for the
# daemon's (once a second) counters to show writes rather than sleeping.
writes_seen() { [ "$(ublk_stat $ID write ops)" -gt 0 ]; }
wait_for writes_seen || true
w0=$(ublk_stat $ID write ops)
[ "$w0" -gt 0 ] || fail "no writes reached the daemon before the kill"
kill -0 $fpid 2>/dev/null || { cat $T/fio.out; fail "fio ended before the daemon was killed"; }
kill -9 "$pid"
log "killed daemon $pid under I/O ($w0 writes so far)"
wait_for sh -c "[ \"\$($UBLKD list -n $ID --json | jq -r '.[0].state')\" = QUIESCED ]" \
  || fail "device did not become QUIESCED (state $(ublk_state $ID))"
kill -0 $fpid 2>/dev/null || { cat $T/fio.out; fail "fio did not wait for the recovery"; }
log "quiesced; recovering"
"$UBLKD" recover -n $ID || fail "ublkd recover failed"
[ "$(ublk_state $ID)" = LIVE ] || fail "device not LIVE after recover"
newpid=$(ublk_pid $ID)
[ "$newpid" != "$pid" ] || fail "pid did not change"
wait $fpid || { cat $T/fio.out; fail "fio saw errors across the recovery"; }
sleep 1.2
[ "$(ublk_stat $ID write ops)" -gt 0 ] || fail "the new daemon served no writes"
fio --name=w --filename="$DEV" --direct=1 --ioengine=io_uring --rw=randwrite --bs=4k --iodepth=16 \
    --size=16M --verify=crc32c --verify_only --randrepeat=1 --verify_fatal=1 >$T/v.out 2>&1 \
  || { cat $T/v.out; fail "verify after recovery failed"; }
