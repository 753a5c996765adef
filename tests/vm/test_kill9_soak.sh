#!/bin/bash
# kill -9 soak: per image format, KILL9_CYCLES times (2 in `make test`, 50 in
# `make soak`), the daemon is killed with SIGKILL at a random moment while
# fio writes blocks carrying crc32c verify headers.  The cycles take turns:
# odd ones bring the device back with `ublkd recover` (the kernel holds the
# I/O and reissues it to the new daemon, so fio must finish without an
# error), even ones with `del --force` + `add` (fio's I/O in flight fails).
# Either way every write fio saw complete must read back: fio saves which
# writes completed (verify_state_save) and a verify-only pass checks exactly
# those.  After every del `qemu-img check` (formats that have one) must find
# no corruption (leaked clusters are allowed after a crash), and at the end
# the device must read what qemu-img reads.
# Formats: KILL9_FORMATS; a new format is one more word in the default.
# The formats run side by side, each on its own device and image: a cycle
# spends most of its time waiting (the rate-capped write, the kill's random
# delay, polling the published counters), so three at once take about the
# time of one.  Each format's lines are prefixed with its name.
# vm-timeout: 900
. "$(dirname "$0")/lib.sh"
need_cmd fio qemu-img jq sha256sum
CYCLES=${KILL9_CYCLES:-5}
FORMATS=${KILL9_FORMATS:-raw vdi qcow2}
IMG_SIZE=256M
# Each cycle writes REGION bytes at its own offset (8 regions 32 MiB apart,
# then round again), so an allocating format allocates in every cycle of a
# round while the image stays small enough for the guest's tmpfs.  The rate
# cap makes the write last about 3 s whatever the machine's speed, so the
# kill (0-1 s after the first writes complete) lands while fio writes.
REGION=24M REGION_STEP=32 REGIONS=8 RATE=8m

# fio_job DEV CYCLE ARGS...: the cycle's job; the write and the verify pass
# must agree on everything but the phase options.  Run in $F/fio (the
# format's own directory) so the verify state file
# (local-k9-0-verify.state) is found again.
fio_job() {
  local dev=$1 c=$2; shift 2
  (cd "$F/fio" && exec fio --name=k9 --filename="$dev" --direct=1 --ioengine=io_uring \
     --rw=randwrite --bsrange=4k-32k --iodepth=16 \
     --offset=$(( ((c - 1) % REGIONS) * REGION_STEP ))M --size=$REGION \
     --randseed=$((1000 + c)) --verify=crc32c "$@")
}

# image_check FMT IMG: qemu-img check must find no corruption.  Exit 3 is
# leaked clusters only (a kill between a cluster's refcount and the L2 entry
# that uses it leaves one: safe, as in QEMU); 63 means the format has no
# check; 2 (corruption) and 1 (check failed) fail the cycle.
image_check() {
  local rc=0
  qemu-img check -q -f "$1" "$2" >"$F/check.out" 2>&1 || rc=$?
  case $rc in 0|63) ;;
    3) leaks=$((leaks + 1));;
    *) cat "$F/check.out"; fail "$1 cycle $c: qemu-img check exit $rc";;
  esac
}

quiesced() { [ "$(ublk_state $ID)" = QUIESCED ]; }
# Writes the block layer completed on the device (field 5 of its stat): read
# from sysfs, not through `ublkd list` (a process under TCG, and the
# daemon's counters are published only once a second).
bdev_writes() { local r; read -r _ _ _ _ r _ </sys/block/ublkb$ID/stat; echo "$r"; }
writes_seen() { [ "$(bdev_writes)" -gt "$w_before" ]; }

# soak_format FMT: every cycle of one format, in a subshell of its own (its
# fail ends only it; its device is in $T/.devs for the test's cleanup).
soak_format() {
  local fmt=$1
  F=$T/k9-$fmt
  mkdir -p "$F/fio"
  img=$F/k9.$fmt
  qemu-img create -q -f "$fmt" "$img" $IMG_SIZE || fail "qemu-img create -f $fmt"
  ublk_add "$fmt" "$img" $CACHE_OPT -q 2 >/dev/null
  under_io=0 leaks=0
  for c in $(seq 1 "$CYCLES"); do
    if [ $((c % 2)) = 1 ]; then mode=recover; else mode=readd; fi
    rm -f "$F"/fio/*.state
    w_before=$(bdev_writes)
    pid=$(ublk_pid $ID)
    fio_job "$DEV" $c --rate=$RATE --do_verify=0 --verify_state_save=1 --output-format=terse \
      >"$F/w.out" 2>&1 &
    fpid=$!
    # Writes seen means fio is past its start-up; the kill lands 0-1 s later.
    wait_for writes_seen || { cat "$F/w.out"; fail "$fmt cycle $c: no writes reached the daemon"; }
    sleep "0.$(printf %03d $((RANDOM % 1000)))"
    running=0; kill -0 $fpid 2>/dev/null && running=1
    kill -9 "$pid"
    under_io=$((under_io + running))
    wait_for quiesced || fail "$fmt cycle $c: device not QUIESCED after kill -9 (state $(ublk_state $ID))"
    if [ $mode = recover ]; then
      "$UBLKD" recover -n $ID >/dev/null || fail "$fmt cycle $c: ublkd recover failed"
      [ "$(ublk_state $ID)" = LIVE ] || fail "$fmt cycle $c: not LIVE after recover"
      wait $fpid || { cat "$F/w.out"; fail "$fmt cycle $c: fio saw errors across the recovery"; }
    else
      "$UBLKD" del --force -n $ID || fail "$fmt cycle $c: del of the dead daemon's device failed"
      # fio's writes in flight fail now (or it had finished): either ends it.
      wait $fpid || true
      image_check "$fmt" "$img"
      ublk_add "$fmt" "$img" $CACHE_OPT -q 2 >/dev/null
    fi
    ls "$F"/fio/*verify.state >/dev/null 2>&1 || { cat "$F/w.out"; fail "$fmt cycle $c: fio saved no verify state"; }
    # fio's replay also checks the writes that failed (EIO after the del):
    # a bad block is excused only if its write is one fio reported failed.
    sed -n 's/.*io_u error on file .* write offset=\([0-9]*\),.*/\1/p' "$F/w.out" | sort -u >"$F/failed"
    vrc=0
    fio_job "$DEV" $c --verify_only=1 --verify_state_load=1 --verify_fatal=0 \
      --continue_on_error=verify >"$F/v.out" 2>&1 || vrc=$?
    sed -n 's/.*requested block: offset=\([0-9]*\),.*/\1/p' "$F/v.out" | sort -u >"$F/bad"
    [ $vrc = 0 ] || [ -s "$F/bad" ] || { cat "$F/v.out"; fail "$fmt cycle $c: verify pass failed (exit $vrc)"; }
    # continue_on_error=verify makes fio exit 0: a failure it reported in a
    # form the line above did not parse must still fail the cycle.
    ! grep -qiE 'verify failed|bad magic|bad header|verify: ' "$F/v.out" || [ -s "$F/bad" ] ||
      { cat "$F/v.out"; fail "$fmt cycle $c: verify failures not understood"; }
    # sed reads all of comm's output: head would end the pipe early, and a
    # long list then killed the test with SIGPIPE before it said why.
    lost=$(comm -23 "$F/bad" "$F/failed" | sed -n 1,5p | tr '\n' ' ')
    [ -z "$lost" ] || { cat "$F/w.out" "$F/v.out"; fail "$fmt cycle $c ($mode): acknowledged writes at $lost do not read back"; }
    log "$fmt cycle $c: killed $pid $( [ $running = 1 ] && echo under I/O || echo 'after fio ended'), $mode, verified ($(wc -l <"$F/failed") failed writes excused, $(wc -l <"$F/bad") unwritten)"
  done
  # The image as the daemon serves it and as qemu-img reads it must agree
  # (for raw they are the same bytes).
  [ "$fmt" = raw ] || want=$(sha256sum <"$DEV" | cut -d' ' -f1)
  ublk_del $ID
  image_check "$fmt" "$img"
  if [ "$fmt" != raw ]; then
    qemu-img convert -f "$fmt" -O raw "$img" "$F/k9.out.raw"
    [ "$want" = "$(sha256sum <"$F/k9.out.raw" | cut -d' ' -f1)" ] || fail "$fmt: qemu-img reads other data than the device served"
  fi
  rm -f "$img" "$F/k9.out.raw"
  log "$fmt: $CYCLES cycles survived, $under_io killed under I/O, $leaks checks found leaks (allowed)"
  [ $under_io -gt 0 ] || fail "$fmt: no kill landed while fio was writing"
}

pids=()
for fmt in $FORMATS; do
  ( soak_format "$fmt" ) >"$T/k9-$fmt.log" 2>&1 &
  pids+=($!)
done
failed=
i=0
for fmt in $FORMATS; do
  wait "${pids[$i]}" || failed="$failed $fmt"
  sed "s/^/$fmt| /" "$T/k9-$fmt.log"
  i=$((i + 1))
done
[ -z "$failed" ] || fail "kill -9 soak failed for:$failed"
