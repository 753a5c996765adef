#!/bin/bash
# Issue #10 item 1: del, del -a and recover signal only a device's own daemon.
# After kill -9 of a daemon its pid is given to an unrelated process (through
# ns_last_pid, so that even the kernel's ublksrv_pid names it) or written into
# a state file; del/recover must leave that process alone and still do their job.
. "$(dirname "$0")/lib.sh"
need_cmd jq
RUN=/run/ublkd
mkimg $T/a.raw 16M
quiesced() { [ "$("$UBLKD" list -n "$1" --json | jq -r '.[0].state')" = QUIESCED ]; }
gone() { ! kill -0 "$1" 2>/dev/null; }
victims=()
on_exit 'kill "${victims[@]}" 2>/dev/null'

# take_pid PID: start `sleep` with exactly PID (sets VICTIM), or return 1.
take_pid() {
  [ -w /proc/sys/kernel/ns_last_pid ] || return 1
  for _ in $(seq 50); do
    echo $(( $1 - 1 )) > /proc/sys/kernel/ns_last_pid
    sleep 300 &
    VICTIM=$!
    victims+=("$VICTIM")
    [ "$VICTIM" = "$1" ] && return 0
    kill "$VICTIM"
  done
  return 1
}

# 1. The kernel's ublksrv_pid (and the state file's) now name an unrelated process.
ublk_add raw $T/a.raw $CACHE_OPT >/dev/null
pid=$(ublk_pid $ID)
kill -9 $pid
wait_for gone $pid || fail "daemon $pid survived kill -9"
wait_for quiesced $ID || fail "device $ID did not become QUIESCED"
if take_pid $pid; then
  log "sleep $VICTIM now has the dead daemon's pid"
  [ "$("$UBLKD" list -n $ID --json | jq -r '.[0].daemon_alive')" = false ] \
    || fail "list calls the unrelated process $VICTIM device $ID's daemon"
  # recover must not take the unrelated process for a live daemon
  timeout 60 "$UBLKD" recover -n $ID >$T/rec.out 2>&1 || { cat $T/rec.out; fail "recover refused because of an unrelated process"; }
  kill -0 $VICTIM 2>/dev/null || fail "recover killed unrelated process $VICTIM"
  pid=$(ublk_pid $ID)
  kill -9 $pid
  wait_for gone $pid || fail "recovered daemon $pid survived kill -9"
  wait_for quiesced $ID || fail "device $ID did not become QUIESCED again"
  kill $VICTIM
  take_pid $pid || fail "could not give pid $pid to a sleep a second time"
  s=$(date +%s)
  timeout 60 "$UBLKD" del -n $ID || fail "del of a device whose daemon died failed"
  [ $(( $(date +%s) - s )) -lt 20 ] || fail "del waited for an unrelated process"
  kill -0 $VICTIM 2>/dev/null || fail "del killed unrelated process $VICTIM (the kernel's stale ublksrv_pid)"
  [ ! -e /sys/class/ublk-char/ublkc$ID ] || fail "device $ID still in the kernel"
else
  log "no writable ns_last_pid: the kernel-pid case is not tested"
fi

# 2. The state files name an unrelated process: ID.json (a device the kernel
# has, daemon dead) and 77.json (a device the kernel does not have); del -a.
ublk_add raw $T/a.raw $CACHE_OPT >/dev/null
pid=$(ublk_pid $ID)
kill -9 $pid
wait_for gone $pid || fail "daemon $pid survived kill -9"
wait_for quiesced $ID || fail "device $ID did not become QUIESCED"
sleep 300 &
VICTIM=$!; victims+=("$VICTIM")
jq ".pid = $VICTIM" $RUN/$ID.json > $T/st && cat $T/st > $RUN/$ID.json
jq ".pid = $VICTIM | .id = 77" $RUN/$ID.json > $RUN/77.json
timeout 60 "$UBLKD" del -a || fail "del -a failed"
kill -0 $VICTIM 2>/dev/null || fail "del -a killed process $VICTIM named by a state file"
[ ! -e /sys/class/ublk-char/ublkc$ID ] || fail "del -a left device $ID in the kernel"
[ ! -e $RUN/77.json ] || fail "del -a left the stale state file 77.json"
# (A live daemon is still stopped by del: test_teardown, test_lifecycle.)
