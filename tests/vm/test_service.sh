#!/bin/bash
# The systemd unit's worker (dist/ublkd-service.in), as systemd runs it: `start` brings the
# configured device up in the foreground; after kill -9 of its daemon a second `start` (the
# unit's restart) recovers it with the data intact; `start` on a served device is refused;
# `stop` deletes it, drained and flushed.  The udev helper (dist/ublk-chown.in) leaves a
# device root added alone.
. "$(dirname "$0")/lib.sh"
need_cmd jq
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p $T/conf && chmod 0755 $T/conf
export UBLKD_CONF_DIR=$T/conf
W() { sh "$ROOT/dist/ublkd-service.in" "$@"; }
# A free id: the configuration names it, as a real one would.
id=40; while [ -e /sys/class/ublk-char/ublkc$id ]; do id=$((id + 1)); done
mkimg $T/d.raw 32M
printf 'ID=%s\nARGS=raw %s -q 2 %s\n' $id $T/d.raw "$CACHE_OPT" >$T/conf/disk.conf
chmod 0644 $T/conf/disk.conf
_lib_devs+=("$id")

# Not through W: the background job must be the worker itself, which becomes the daemon.
sh "$ROOT/dist/ublkd-service.in" start disk >$T/w1.out 2>&1 &
w1=$!
live() { [ "$(ublk_state $id 2>/dev/null)" = LIVE ]; }
wait_for live || { cat $T/w1.out; fail "start did not bring device $id up"; }
[ "$(ublk_pid $id)" = $w1 ] || fail "the daemon is not the worker's own process (systemd's main pid)"
head -c 4M /dev/urandom >$T/pat
dd if=$T/pat of=$(bdev $id) bs=1M oflag=direct status=none || fail "write to the device failed"
log "device $id up under the worker, 4 MiB written; killing its daemon"
kill -9 $w1; wait $w1 2>/dev/null || true   # 137: killed, as meant
quiesced() { [ "$(ublk_state $id)" = QUIESCED ]; }
wait_for quiesced || fail "device did not become QUIESCED (state $(ublk_state $id))"

sh "$ROOT/dist/ublkd-service.in" start disk >$T/w2.out 2>&1 &
w2=$!
wait_for live || { cat $T/w2.out; fail "restart did not recover the device"; }
[ "$(ublk_pid $id)" = $w2 ] || fail "the recovered daemon is not the worker's process"
cmp <(dd if=$(bdev $id) bs=1M count=4 iflag=direct status=none) $T/pat || fail "data lost across recovery"
W start disk >$T/w3.out 2>&1 && fail "start on a served device succeeded"
grep -q "already served" $T/w3.out || fail "start on a served device: $(cat $T/w3.out)"

# udev helper: root's device keeps root's nodes.
UBLKD="$UBLKD" sh "$ROOT/dist/ublk-chown.in" ublkb$id || fail "ublk-chown failed on root's device"
[ "$(stat -c %u $(bdev $id))" = 0 ] || fail "ublk-chown gave root's device away"

W stop disk || fail "stop failed"
wait $w2 || fail "the daemon did not exit cleanly on stop (status $?)"
[ -e /sys/class/ublk-char/ublkc$id ] && fail "device $id still exists after stop"
cmp <(head -c 4M $T/d.raw) $T/pat || fail "image does not hold the data after stop"
log "worker: start, recover after kill -9, refuse a second start, stop: ok"
