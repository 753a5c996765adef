#!/bin/bash
# `ublkd upgrade` while fio writes with crc32c headers: the device's daemon is
# replaced by one running another binary (a copy of $UBLKD), the pid changes,
# the new daemon runs the copy, fio sees no error and a verify pass over
# everything written succeeds.  With UBLK_F_QUIESCE (7.3 guest) the old daemon
# drains and hands the device over; without it (6.12) upgrade says so and
# kills and recovers with reissue instead.  Also the refusals: a device added
# with --recovery=none, a binary writable by others.
. "$(dirname "$0")/lib.sh"
need_cmd fio
has_quiesce() { "$UBLKD" features | grep -qw UBLK_F_QUIESCE; }

# ---- refusals, before anything changes ----
mkimg $T/n.raw 16M
N=$(ublk_add raw $T/n.raw $CACHE_OPT --recovery=none)
N=${N#/dev/ublkb}
npid=$(ublk_pid $N)
out=$("$UBLKD" upgrade -n $N 2>&1) && fail "upgrade of a --recovery=none device succeeded"
grep -q 'upgrade needs --recovery=reissue' <<<"$out" || fail "unexpected refusal: $out"
[ "$(ublk_pid $N)" = "$npid" ] || fail "the refused upgrade changed the daemon"
cp "$UBLKD" $T/ublkd-ww
chmod 0777 $T/ublkd-ww
out=$("$UBLKD" upgrade -n $N --binary $T/ublkd-ww 2>&1) && fail "upgrade to a world-writable binary succeeded"
grep -q 'is writable by others' <<<"$out" || fail "unexpected refusal: $out"
log "refusals checked"

# ---- a new daemon that fails: the device stays QUIESCED, recover retries ----
mkimg $T/f.raw 16M
F=$(ublk_add raw $T/f.raw $CACHE_OPT)
cp /bin/false $T/false
chmod 0755 $T/false
echo upgrade-me | dd of=/dev/ublkb$F bs=4k count=1 conv=sync oflag=direct status=none
out=$("$UBLKD" upgrade -n $F --binary $T/false 2>&1) && fail "upgrade to /bin/false succeeded"
grep -q "stays QUIESCED, its I/O waiting: 'ublkd recover -n $F' retries" <<<"$out" \
  || fail "a failed new daemon was not reported as asked: $out"
[ "$(ublk_state $F)" = QUIESCED ] || fail "device $F is $(ublk_state $F) after a failed upgrade, not QUIESCED"
"$UBLKD" recover -n $F >/dev/null || fail "recover after a failed upgrade failed"
[ "$(ublk_state $F)" = LIVE ] || fail "device $F not LIVE after recover"
dd if=/dev/ublkb$F of=$T/f.out bs=4k count=1 iflag=direct status=none
grep -q upgrade-me $T/f.out || fail "device $F lost its data across the failed upgrade and recover"
log "failed new daemon: QUIESCED, recovered"

# ---- the upgrade under I/O ----
cp "$UBLKD" $T/ublkd-new
chmod 0755 $T/ublkd-new
mkimg $T/r.raw 64M
ublk_add raw $T/r.raw $CACHE_OPT -q 2 --log $T/d.log >/dev/null
pid=$(ublk_pid $ID)
if has_quiesce; then
  "$UBLKD" list -n $ID --json | jq -r '.[0].flag_list[]' | grep -qx QUIESCE \
    || fail "device added without UBLK_F_QUIESCE on a kernel that has it"
fi
fio --name=w --filename="$DEV" --direct=1 --ioengine=io_uring --rw=randwrite --bs=4k --iodepth=16 \
    --size=16M --time_based --runtime=20 --verify=crc32c --do_verify=0 --randrepeat=1 \
    --verify_state_save=0 --output-format=terse >$T/fio.out 2>&1 &
fpid=$!
writes_seen() { [ "$(ublk_stat $ID write ops)" -gt 0 ]; }
wait_for writes_seen || true
w0=$(ublk_stat $ID write ops)
[ "$w0" -gt 0 ] || fail "no writes reached the daemon before the upgrade"
kill -0 $fpid 2>/dev/null || { cat $T/fio.out; fail "fio ended before the upgrade"; }
log "upgrading daemon $pid under I/O ($w0 writes so far)"
"$UBLKD" upgrade -n $ID --binary $T/ublkd-new >$T/up.out 2>&1 || { cat $T/up.out; fail "ublkd upgrade failed"; }
cat $T/up.out
if has_quiesce; then
  grep -q 'lacks UBLK_F_QUIESCE' $T/up.out && fail "upgrade fell back on a kernel with QUIESCE"
  # The old daemon drained and left the device rather than being killed.
  grep -q "ublkd/$ID\[$pid\]: device $ID handed over (QUIESCED)" $T/d.log \
    || { cat $T/d.log; fail "the old daemon did not log its handover"; }
else
  grep -q 'the kernel lacks UBLK_F_QUIESCE; killing the daemon and recovering with reissue' $T/up.out \
    || fail "upgrade did not say it fell back to kill and recover"
fi
kill -0 $fpid 2>/dev/null || { cat $T/fio.out; fail "fio ended during the upgrade (it should run 20 s)"; }
[ "$(ublk_state $ID)" = LIVE ] || fail "device not LIVE after upgrade"
newpid=$(ublk_pid $ID)
[ "$newpid" != "$pid" ] || fail "pid did not change"
kill -0 "$pid" 2>/dev/null && fail "the old daemon $pid is still running"
exe=$(readlink /proc/$newpid/exe)
[ "$exe" = "$T/ublkd-new" ] || fail "the new daemon runs $exe, not $T/ublkd-new"
wait $fpid || { cat $T/fio.out; fail "fio saw errors across the upgrade"; }
sleep 1.2
[ "$(ublk_stat $ID write ops)" -gt 0 ] || fail "the new daemon served no writes"
fio --name=w --filename="$DEV" --direct=1 --ioengine=io_uring --rw=randwrite --bs=4k --iodepth=16 \
    --size=16M --verify=crc32c --verify_only --randrepeat=1 --verify_fatal=1 >$T/v.out 2>&1 \
  || { cat $T/v.out; fail "verify after upgrade failed"; }
log "upgraded $pid -> $newpid ($exe), fio and verify clean"
