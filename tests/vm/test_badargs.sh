#!/bin/bash
# Bad arguments fail with a clear message and leave no device behind, and a
# failed add never touches another device: every case runs while device 0 is
# live, and after each one device 0 still serves I/O and `ublkd list`, the
# /dev/ublk* nodes and the run directory are exactly as before.
. "$(dirname "$0")/lib.sh"
mkimg $T/ok.raw 16M
: > $T/empty.raw
printf 'not a vdi image' > $T/junk.vdi; truncate -s 1M $T/junk.vdi
# Device 0 on purpose: an add that fails before it knows its own id must not
# mistake 0 for it.
ublk_add null --size 64M -n 0 >/dev/null
[ "$ID" = 0 ] || fail "-n 0 gave device $ID"
survivor=$ID survivor_pid=$(ublk_pid $ID)
# Counter lines change when anything (udev, blkid) reads the device; the rest must not.
snapshot() {
  "$UBLKD" list | grep -Ev '^ +(read|write|flush|discard|write_zeroes) +ops |^ +(fua writes|zero copy) '
  echo "ids: $(ublk_ids | tr '\n' ' ')"
  echo "nodes: $(ls /dev | grep '^ublk' | tr '\n' ' ')"
  echo "run: $(ls /run/ublkd 2>/dev/null | grep -v '\.tmp' | tr '\n' ' ')"
}
before=$(snapshot)
expect_fail() {  # expect_fail PATTERN ARGS...
  local pat=$1; shift
  local out now
  if out=$(env ${ADD_ENV:-} "$UBLKD" add "$@" 2>&1); then fail "ublkd add $* succeeded (printed $out)"; fi
  grep -qi -- "$pat" <<<"$out" || fail "ublkd add $*: message '$out' does not mention '$pat'"
  log "ok: add $* -> $out"
  now=$(snapshot)
  [ "$now" = "$before" ] || fail "ublkd add $* changed the devices:
--- before
$before
--- after
$now"
  kill -0 "$survivor_pid" || fail "ublkd add $*: the daemon of device $survivor died"
  [ "$(ublk_state $survivor)" = LIVE ] || fail "ublkd add $*: device $survivor is $(ublk_state $survivor)"
  dd if=/dev/ublkb$survivor of=/dev/null bs=4k count=1 iflag=direct status=none \
    || fail "ublkd add $*: device $survivor no longer reads"
}
expect_fail "no such file" raw $T/missing.raw $CACHE_OPT
expect_fail "vdi" vdi $T/junk.vdi $CACHE_OPT
expect_fail "size" raw $T/empty.raw $CACHE_OPT
expect_fail "max-discard" raw $T/ok.raw $CACHE_OPT --discard-granularity 1M --max-discard 4k
expect_fail "queues" raw $T/ok.raw -q 0
expect_fail "depth" raw $T/ok.raw -d 5000
expect_fail "unknown device type" nosuchfmt $T/ok.raw
expect_fail "has no file" null $T/ok.raw   # null without --size is 250G (test_list)
expect_fail "block-size" raw $T/ok.raw --logical-block-size 1000
expect_fail "already in use" null --size 16M -n 0
# A failure after START_DEV (the state file cannot be written) unwinds the
# device it made and nothing else.
ADD_ENV=UBLKD_RUN_DIR=/proc/no/such/dir expect_fail "cannot create" raw $T/ok.raw $CACHE_OPT
ublk_add raw $T/ok.raw $CACHE_OPT -n 7 >/dev/null
[ "$ID" = 7 ] || fail "-n 7 gave device $ID"
before=$(snapshot)
expect_fail "already in use" raw $T/ok.raw $CACHE_OPT -n 7
expect_fail "size" raw $T/empty.raw $CACHE_OPT

# Issue #10 item 6: nothing silently changed.  Sizes the logical block size
# cannot cover are refused, naming what would be lost.
truncate -s $((1048576 + 1000)) $T/odd.raw
truncate -s $((64 * 1048576 + 512)) $T/tail512.raw
expect_fail "last 488 bytes would be unreachable" null --size 1000
expect_fail "last 488 bytes would be unreachable" raw $T/odd.raw $CACHE_OPT
expect_fail "last 512 bytes would be unreachable" raw $T/tail512.raw $CACHE_OPT --logical-block-size 4096
expect_fail "--size 8E is too large" null --size 8E
expect_fail "--log /nonexistent/dir/log: directory /nonexistent/dir" null --size 16M --log /nonexistent/dir/log
expect_fail "own daemon" null --size 16M -o throttling.group=g
if "$UBLKD" features | grep -q UBLK_F_USER_RECOVERY_FAIL_IO; then
  log "kernel has USER_RECOVERY_FAIL_IO: --recovery=fail-io is honoured"
else
  expect_fail "lacks UBLK_F_USER_RECOVERY_FAIL_IO" null --size 16M --recovery=fail-io
fi
# ...and the whole 64M+512 image without --logical-block-size: 512-byte blocks.
ublk_add raw $T/tail512.raw $CACHE_OPT >/dev/null
[ "$(blockdev --getsize64 $DEV)" = $((64 * 1048576 + 512)) ] ||
  fail "64M+512 image gave a $(blockdev --getsize64 $DEV)-byte device"
ublk_del $ID
# --no-discard hides discard, not write-zeroes offload.
mkimg $T/nd.raw 16M
ublk_add raw $T/nd.raw $CACHE_OPT --no-discard >/dev/null
q=/sys/block/ublkb$ID/queue
[ "$(cat $q/discard_max_bytes)" = 0 ] || fail "--no-discard: discard_max_bytes $(cat $q/discard_max_bytes)"
[ "$(cat $q/write_zeroes_max_bytes)" -gt 0 ] || fail "--no-discard: write_zeroes_max_bytes is 0"
dd if=/dev/urandom of=$DEV bs=64k count=1 oflag=direct status=none
fallocate -z -o 0 -l 65536 $DEV 2>/dev/null || blkdiscard -z -o 0 -l 65536 $DEV ||
  fail "--no-discard: write-zeroes on the device failed"
cmp -n 65536 $DEV /dev/zero || fail "--no-discard: write-zeroes did not zero"
ublk_del $ID
log "ok: sizes, --log, --recovery, throttling.group, --no-discard"
