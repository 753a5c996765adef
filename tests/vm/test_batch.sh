#!/bin/bash
# --batch (UBLK_F_BATCH_IO, Linux 7.3): PREP/FETCH/COMMIT_IO_CMDS instead of one command per
# request.  fio verify with -q 1 and -q 2, with zero copy (AUTO_BUF_REG) and without (the
# kernel copies to the tag buffers, elements carry their address) and with --user-copy;
# list shows it; kill -9 + `ublkd recover` mid-fio keeps it and the data; `upgrade` too;
# --batch with --per-io-threads is refused.  The AUTO_BUF_REG fallback: with
# UBLKD_TEST_AUTO_BUF_REG_FAIL every registration fails (an index past the table, as
# kublk's null target does), the requests arrive flagged NEED_REG_BUF and are
# registered by hand: fio verify passes and list counts them, with and without --batch.
# On a kernel without BATCH_IO (6.12) --batch=on is refused naming it, auto falls back,
# and the rest is reported as needing 7.3.
. "$(dirname "$0")/lib.sh"
need_cmd fio jq
feats=$("$UBLKD" features)
mkimg $T/r.raw 64M
batch_of() { "$UBLKD" list -n "$1" --json | jq -r '.[0].batch'; }

if ! grep -q "UBLK_F_BATCH_IO" <<<"$feats"; then
  before=$(ublk_ids | wc -l)
  if out=$("$UBLKD" add raw $T/r.raw $CACHE_OPT --batch=on 2>&1); then
    fail "--batch=on was accepted by a kernel without BATCH_IO: $out"
  fi
  grep -q "lacks UBLK_F_BATCH_IO (Linux 7.3" <<<"$out" || fail "unclear error: $out"
  [ "$(ublk_ids | wc -l)" = "$before" ] || fail "the refused add left a device behind"
  ublk_add raw $T/r.raw $CACHE_OPT --batch=auto >/dev/null
  [ "$(batch_of $ID)" = false ] || fail "--batch=auto on $(uname -r): list says batch $(batch_of $ID)"
  fio_verify "$DEV" --bs=4k --iodepth=16
  ublk_del $ID
  log "kernel $(uname -r) lacks BATCH_IO: --batch=on refused ($out); auto serves without it." \
      "The batch data path, recovery and the NEED_REG_BUF fallback need Linux 7.3 (VM_KERNEL=7.3)"
  exit 0
fi

out=$("$UBLKD" add raw $T/r.raw --batch --per-io-threads=2 2>&1) \
  && fail "--batch with --per-io-threads was accepted: $out"
grep -q "PER_IO_DAEMON" <<<"$out" || fail "unclear error for --batch --per-io-threads: $out"

# run NAME ARGS...: add with ARGS, check list, fio verify at two block size mixes, del.
run() {
  local name=$1; shift
  ublk_add raw $T/r.raw $CACHE_OPT "$@" >/dev/null
  [ "$(batch_of $ID)" = true ] || fail "$name: list says batch $(batch_of $ID)"
  "$UBLKD" list -n $ID | grep -q "batch on" || fail "$name: list text lacks 'batch on'"
  "$UBLKD" list -n $ID | grep -q "BATCH_IO" || fail "$name: flags lack BATCH_IO"
  fio_verify "$DEV" --bs=4k --iodepth=32
  fio_verify "$DEV" --bsrange=512-128k --iodepth=8 --numjobs=2 --offset_increment=8M
  local zc
  zc=$("$UBLKD" list -n $ID --json | jq -r '.[0].zero_copy')
  ublk_del $ID
  log "$name ($*): verify ok, zero copy $zc"
}
run "zero copy, 1 queue" --batch -q 1
run "zero copy, 2 queues" --batch -q 2
run "copy, 1 queue" --batch -q 1 --zero-copy=off
run "copy, 2 queues" --batch -q 2 --zero-copy=off
run "user copy" --batch -q 2 --user-copy
run "register" --batch -q 1 --zero-copy=register
run "auto" --batch=auto -q 1

# The AUTO_BUF_REG fallback, with and without batching.
for b in on off; do
  export UBLKD_TEST_AUTO_BUF_REG_FAIL=1
  ublk_add raw $T/r.raw $CACHE_OPT --batch=$b --zero-copy=on --log $T/fb-$b.log >/dev/null
  unset UBLKD_TEST_AUTO_BUF_REG_FAIL
  fio_verify "$DEV" --bs=4k --iodepth=16
  sleep 1.2
  n=$("$UBLKD" list -n $ID --json | jq -r '.[0].stats.zc_reg_fallbacks // error("no zc_reg_fallbacks")')
  [ "$n" -gt 0 ] || fail "--batch=$b: no request took the NEED_REG_BUF path ($n)"
  "$UBLKD" list -n $ID | grep -q "registered by hand $n" || fail "list text lacks the fallback count"
  ublk_del $ID
  log "NEED_REG_BUF fallback (--batch=$b): verify ok, $n requests registered by hand"
done

# kill -9 under writes with 2 queues, recover: the device stays batched, fio sees no
# error (reissue) and the data verifies.
for zc in on off; do
  ublk_add raw $T/r.raw $CACHE_OPT -q 2 --batch --zero-copy=$zc >/dev/null
  pid=$(ublk_pid $ID)
  fio --name=w --filename="$DEV" --direct=1 --ioengine=io_uring --rw=randwrite --bs=4k \
      --iodepth=16 --numjobs=2 --size=8M --offset_increment=8M --time_based --runtime=8 --verify=crc32c \
      --do_verify=0 --randrepeat=1 --verify_state_save=0 --output-format=terse >$T/fio.out 2>&1 &
  fpid=$!
  writes_seen() { [ "$(ublk_stat $ID write ops)" -gt 0 ]; }
  wait_for writes_seen || true
  [ "$(ublk_stat $ID write ops)" -gt 0 ] || fail "no writes reached the daemon before the kill"
  kill -0 $fpid 2>/dev/null || { cat $T/fio.out; fail "fio ended before the daemon was killed"; }
  kill -9 "$pid"
  wait_for sh -c "[ \"\$($UBLKD list -n $ID --json | jq -r '.[0].state')\" = QUIESCED ]" \
    || fail "device did not become QUIESCED (state $(ublk_state $ID))"
  "$UBLKD" recover -n $ID || fail "ublkd recover of a --batch device failed"
  [ "$(ublk_state $ID)" = LIVE ] || fail "device not LIVE after recover"
  [ "$(ublk_pid $ID)" != "$pid" ] || fail "pid did not change"
  [ "$(batch_of $ID)" = true ] || fail "recovered device is not batched"
  wait $fpid || { cat $T/fio.out; fail "zero copy $zc: fio saw errors across the recovery"; }
  fio --name=w --filename="$DEV" --direct=1 --ioengine=io_uring --rw=randwrite --bs=4k \
      --iodepth=16 --numjobs=2 --size=8M --offset_increment=8M --verify=crc32c --verify_only --randrepeat=1 \
      --verify_fatal=1 >$T/v.out 2>&1 || { cat $T/v.out; fail "verify after recovery failed"; }
  if [ $zc = on ]; then
    # upgrade: the new daemon takes the device over, still batched
    pid=$(ublk_pid $ID)
    "$UBLKD" upgrade -n $ID >/dev/null || fail "ublkd upgrade of a --batch device failed"
    wait_for sh -c "[ \"\$($UBLKD list -n $ID --json | jq -r '.[0].pid')\" != $pid ]" \
      || fail "upgrade did not replace the daemon"
    wait_for sh -c "[ \"\$($UBLKD list -n $ID --json | jq -r '.[0].state')\" = LIVE ]" \
      || fail "device not LIVE after upgrade"
    [ "$(batch_of $ID)" = true ] || fail "upgraded device is not batched"
    fio --name=w --filename="$DEV" --direct=1 --ioengine=io_uring --rw=randwrite --bs=4k \
        --iodepth=16 --numjobs=2 --size=8M --offset_increment=8M --verify=crc32c --verify_only --randrepeat=1 \
        --verify_fatal=1 >$T/v.out 2>&1 || { cat $T/v.out; fail "verify after upgrade failed"; }
  fi
  ublk_del $ID
  log "kill -9 + recover mid-fio (--batch -q 2 --zero-copy=$zc)$([ $zc = on ] && echo ' and upgrade'): fio and verify ok"
done
