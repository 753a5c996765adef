#!/bin/bash
# Issue #11 item 7: what a device's users see when its daemon is killed, in each
# --recovery mode (reissue, with I/O in flight, is test_recovery.sh):
#   none     the kernel stops the device: state DEAD, I/O fails, recover refuses
#            naming the mode, del still works;
#   fail     state QUIESCED: new I/O waits (it neither fails nor completes), and
#            completes with the right data once `ublkd recover` brings a daemon;
#   fail-io  state FAIL_IO: new I/O fails at once (EREMOTEIO); after recover it
#            succeeds and the data written before the kill is intact.
# A kernel without USER_RECOVERY_FAIL_IO (bit 9) must refuse --recovery=fail-io
# at add time with a message naming the flag (checked instead of the fail-io run).
. "$(dirname "$0")/lib.sh"
need_cmd jq

state_is() { [ "$(ublk_state "$1")" = "$2" ]; }
gone() { ! kill -0 "$1" 2>/dev/null; }

# prepare MODE: a device over a fresh image holding a pattern in its first MiB;
# sets ID, DEV, PID.
prepare() {
  local mode=$1
  mkimg "$T/$mode.raw" 16M
  ublk_add raw "$T/$mode.raw" $CACHE_OPT --recovery="$mode" >/dev/null
  head -c 1M /dev/urandom > "$T/$mode.pat"
  dd if="$T/$mode.pat" of="$DEV" bs=64k oflag=direct conv=fsync status=none \
    || fail "$mode: writing the pattern failed"
  PID=$(ublk_pid "$ID")
}

# read_first_mib OUT: a direct read of the first MiB (dd's exit status).
read_first_mib() { dd if="$DEV" of="$1" bs=64k count=16 iflag=direct status=none; }

kill_daemon() {
  kill -9 "$PID"
  wait_for gone "$PID" || fail "$1: daemon $PID survived kill -9"
}

# --- none ---------------------------------------------------------------
prepare none
kill_daemon none
wait_for state_is "$ID" DEAD || fail "none: state $(ublk_state "$ID") after the kill, not DEAD"
if [ -b "$DEV" ]; then
  # The node may linger a moment while the kernel deletes the disk; any I/O
  # that reaches it must fail, never hang or return data.
  rc=0; timeout 20 dd if="$DEV" of=/dev/null bs=4k count=1 iflag=direct status=none 2>"$T/none.err" || rc=$?
  [ "$rc" != 0 ] || fail "none: a read of a device whose daemon is dead succeeded"
  [ "$rc" != 124 ] || fail "none: a read of a device whose daemon is dead hung"
fi
out=$("$UBLKD" recover -n "$ID" 2>&1) && fail "none: recover succeeded: $out"
grep -q -- "--recovery=none" <<<"$out" || fail "none: recover's refusal does not name the mode: $out"
ublk_del "$ID"
log "none: DEAD, I/O fails, recover refused ($out)"

# --- fail ---------------------------------------------------------------
prepare fail
kill_daemon fail
wait_for state_is "$ID" QUIESCED || fail "fail: state $(ublk_state "$ID") after the kill, not QUIESCED"
read_first_mib "$T/fail.out" 2>"$T/fail.err" &
rpid=$!
sleep 3
kill -0 $rpid 2>/dev/null || { wait $rpid; fail "fail: a read on a quiesced device ended (status $?) instead of waiting: $(cat "$T/fail.err")"; }
"$UBLKD" recover -n "$ID" >/dev/null || fail "fail: ublkd recover failed"
state_is "$ID" LIVE || fail "fail: state $(ublk_state "$ID") after recover, not LIVE"
for _ in $(seq 300); do kill -0 $rpid 2>/dev/null || break; sleep 0.1; done
kill -0 $rpid 2>/dev/null && fail "fail: the waiting read did not complete within 30 s of recover"
wait $rpid || fail "fail: the read that waited for recovery failed: $(cat "$T/fail.err")"
cmp -s "$T/fail.out" "$T/fail.pat" || fail "fail: the read that waited for recovery returned wrong data"
ublk_del "$ID"
log "fail: QUIESCED, a new read waited and completed with the right data after recover"

# --- fail-io ------------------------------------------------------------
if ! "$UBLKD" features 2>/dev/null | grep -q "USER_RECOVERY_FAIL_IO"; then
  mkimg "$T/nofailio.raw" 16M
  out=$("$UBLKD" add raw "$T/nofailio.raw" $CACHE_OPT --recovery=fail-io 2>&1) \
    && { echo "${out##*/ublkb}" >> "$T/.devs"; fail "fail-io: add succeeded on a kernel without FAIL_IO: $out"; }
  grep -q "USER_RECOVERY_FAIL_IO" <<<"$out" || fail "fail-io: the refusal does not name the flag: $out"
  log "fail-io: needs a kernel whose ublk driver has UBLK_F_USER_RECOVERY_FAIL_IO (Debian's 6.12 lacks it, the 7.3 guest has it); checked the refusal: $out"
  exit 0
fi
prepare fail-io
kill_daemon fail-io
wait_for state_is "$ID" FAIL_IO || fail "fail-io: state $(ublk_state "$ID") after the kill, not FAIL_IO"
rc=0; timeout 20 dd if="$DEV" of=/dev/null bs=4k count=1 iflag=direct status=none 2>"$T/fio.err" || rc=$?
[ "$rc" != 124 ] || fail "fail-io: a read on a FAIL_IO device hung instead of failing"
[ "$rc" != 0 ] || fail "fail-io: a read on a FAIL_IO device succeeded"
# The kernel ends such requests with BLK_STS_TARGET: readers see EREMOTEIO
# (7.3); EIO is accepted too, anything else (ENXIO: the disk went away) is not.
grep -qiE "remote I/O error|input/output error" "$T/fio.err" \
  || fail "fail-io: the read failed, but not with EREMOTEIO or EIO: $(cat "$T/fio.err")"
rc=0; timeout 20 dd if=/dev/zero of="$DEV" bs=4k count=1 oflag=direct status=none 2>"$T/fiow.err" || rc=$?
[ "$rc" != 0 ] && [ "$rc" != 124 ] || fail "fail-io: a write on a FAIL_IO device did not fail at once (status $rc)"
"$UBLKD" recover -n "$ID" >/dev/null || fail "fail-io: ublkd recover failed"
state_is "$ID" LIVE || fail "fail-io: state $(ublk_state "$ID") after recover, not LIVE"
read_first_mib "$T/failio.out" || fail "fail-io: read after recover failed"
cmp -s "$T/failio.out" "$T/fail-io.pat" || fail "fail-io: data written before the kill changed"
dd if=/dev/zero of="$DEV" bs=4k count=1 seek=300 oflag=direct status=none || fail "fail-io: write after recover failed"
ublk_del "$ID"
log "fail-io: FAIL_IO, I/O failed at once ($(cat "$T/fio.err")), recover brought it back with the data intact"
