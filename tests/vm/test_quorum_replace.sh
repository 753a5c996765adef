#!/bin/bash
# A 3-way quorum device (vote-threshold 2) of raw files; children changed
# while fio writes and verifies:
#   1. child 1 is replaced by a fresh empty file under a time-based fio job
#      that verifies what it wrote as it goes (reads during the rebuild);
#      the rebuild shows in `list --json` and ends; fio passes, a verify
#      pass over the whole device passes, and after `del` the three files
#      are identical (the writes made during the rebuild included);
#   2. the state file records the new graph (what `recover` opens);
#   3. refusals: a child of the wrong size, removing below the threshold;
#   4. child 2 is removed, fio verify runs on two children, a fresh file is
#      added as child 2 and rebuilt;
#   5. child 0 is replaced by a slow one (blkdebug delays its writes), the
#      daemon is killed with -9 in the middle of its rebuild, `recover` brings
#      the device back, the rebuild starts again and ends; the three files
#      are identical again.
. "$(dirname "$0")/lib.sh"
need_cmd fio cmp jq
SIZE=32M
for i in 0 1 2; do mkimg $T/c$i.raw $SIZE; done
q="driver=quorum,vote-threshold=2"
for i in 0 1 2; do q+=",children.$i.driver=raw,children.$i.file.filename=$T/c$i.raw"; done
ublk_add --blockdev "$q" $CACHE_OPT -q 2 --log $T/daemon.log >/dev/null

counter() {  # counter CHILD NAME: a quorum child's counter from list --json (-1: none)
  "$UBLKD" list -n $ID --json | jq -r "[.[0].stats.node_counters | to_entries[]
      | select(.key | endswith(\"children.$1.$2\")) | .value] | add // -1"
}
rebuilt() {  # rebuilt CHILD: its rebuild ended, and covered the device
  [ "$(counter $1 rebuild-running)" = 0 ] &&
    [ "$(counter $1 rebuild-done)" = "$(counter $1 rebuild-total)" ] &&
    [ "$(counter $1 rebuild-error)" = 0 ]
}
wait_rebuilt() {
  for _ in $(seq 300); do rebuilt $1 && return 0; sleep 0.2; done
  "$UBLKD" list -n $ID; fail "child $1 was not rebuilt in 60 s"
}
events() { grep -c "event {\"type\":\"$1\"" $T/daemon.log || true; }

# Fill the device first, so the rebuild copies data (not zeros only).
FIO_SIZE=$SIZE fio_verify "$DEV" --iodepth=16 --bs=64k --rw=write

log "1: replace child 1 under fio"
fio --name=bg --filename="$DEV" --direct=1 --ioengine=io_uring --rw=randrw --rwmixread=30 \
    --bsrange=4k-64k --iodepth=16 --size=$SIZE --time_based --runtime=10 \
    --verify=crc32c --verify_backlog=32 --verify_fatal=1 --output-format=terse \
    >$T/fio-bg.out 2>&1 &
fio_pid=$!
on_exit "kill $fio_pid 2>/dev/null"
sleep 2
mkimg $T/c1new.raw $SIZE
# A relative file name: the client makes it absolute in its directory.
(cd $T && "$UBLKD" quorum -n $ID --replace 1 --with "driver=raw,file.filename=c1new.raw") \
  || fail "replace refused"
sleep 1.2
done_at=$(counter 1 rebuild-done); total=$(counter 1 rebuild-total)
log "rebuild: $done_at of $total bytes, eta $(counter 1 rebuild-eta-s) s"
[ "$total" -gt 0 ] || fail "no rebuild counters in list --json"
wait $fio_pid || { cat $T/fio-bg.out; fail "fio failed during the rebuild"; }
wait_rebuilt 1
[ "$(events QUORUM_REBUILD_START)" -ge 1 ] || fail "no QUORUM_REBUILD_START event"
[ "$(events QUORUM_REBUILD_DONE)" -ge 1 ] || fail "no QUORUM_REBUILD_DONE event"
FIO_SIZE=$SIZE fio_verify "$DEV" --iodepth=16 --bsrange=4k-64k

log "2: the state records the new graph"
"$UBLKD" list -n $ID --json | jq -r '.[0].graph' | grep -q "$T/c1new.raw" \
  || fail "the state's graph does not name the new child"
"$UBLKD" list -n $ID --json | jq -r '.[0].graph' | grep -q "$T/c1.raw" \
  && fail "the state's graph still names the old child"

log "3: refusals"
mkimg $T/small.raw 16M
out=$("$UBLKD" quorum -n $ID --replace 0 --with "driver=raw,file.filename=$T/small.raw" 2>&1) \
  && fail "a child of another size was accepted"
echo "$out" | grep -q "same size" || fail "wrong-size message: $out"

log "4: remove child 2, then add a fresh one"
"$UBLKD" quorum -n $ID --remove 2 || fail "remove refused"
out=$("$UBLKD" quorum -n $ID --remove 0 2>&1) && fail "removing below the threshold was accepted"
echo "$out" | grep -q "fewer than vote-threshold=2" || fail "remove message: $out"
FIO_SIZE=$SIZE fio_verify "$DEV" --iodepth=16 --bs=16k
mkimg $T/c2new.raw $SIZE
"$UBLKD" quorum -n $ID --add "driver=raw,file.filename=$T/c2new.raw" | grep -q "children.2 added" \
  || fail "add refused"
FIO_SIZE=$SIZE fio_verify "$DEV" --iodepth=16 --bsrange=4k-32k
wait_rebuilt 2
"$UBLKD" list -n $ID | grep -q "rebuild" || fail "list shows no rebuild"

log "5: kill -9 in the middle of a rebuild, then recover"
# The new child's writes wait 150 ms each (blkdebug): 32 chunks of 1 MiB take ~5 s.
mkimg $T/c0new.raw $SIZE
starts=$(events QUORUM_REBUILD_START)
"$UBLKD" quorum -n $ID --replace 0 --with "driver=blkdebug,inject-fault.0.action=delay,inject-fault.0.event=write,inject-fault.0.delay-ms=150,image.driver=raw,image.file.filename=$T/c0new.raw" \
  || fail "replace with a slow child refused"
for _ in $(seq 100); do [ "$(counter 0 rebuild-done)" -gt 0 ] && break; sleep 0.1; done
part=$(counter 0 rebuild-done)
[ "$part" -gt 0 ] && [ "$part" -lt "$(counter 0 rebuild-total)" ] ||
  fail "the rebuild was not under way ($part of $(counter 0 rebuild-total))"
kill -9 "$(ublk_pid $ID)"
wait_for eval '[ "$(ublk_state $ID)" = QUIESCED ]' || fail "not QUIESCED after kill -9"
"$UBLKD" recover -n $ID >/dev/null || fail "recover in the middle of a rebuild failed"
# The recovered daemon starts the rebuild again from 0 and ends it; guest I/O meanwhile.
FIO_SIZE=8M fio_verify "$DEV" --iodepth=8 --bs=64k
wait_rebuilt 0
[ "$(events QUORUM_REBUILD_START)" -ge $((starts + 2)) ] ||
  fail "the recovered daemon did not start the rebuild again"
ublk_del $ID
cmp $T/c0new.raw $T/c1new.raw || fail "the child rebuilt across a recovery differs from child 1"
cmp $T/c0new.raw $T/c2new.raw || fail "the added child differs from the rebuilt child 0"
cmp -s $T/c1new.raw $T/c2.raw && fail "the removed child took writes after its removal"
[ "$(events QUORUM_FAILURE)" = 0 ] || fail "a request failed the vote"
[ "$(events QUORUM_REBUILD_FAILED)" = 0 ] || fail "a rebuild failed"
log "ok: $(events QUORUM_REBUILD_DONE) rebuilds"
