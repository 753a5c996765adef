#!/bin/bash
# `ublkd snapshot -n ID -c NAME` and `ublkd add --snapshot NAME` (issue #13
# item 9).  A mapped qcow2 device serving writes from a background writer:
# the snapshot is taken (I/O drained and resumed, the pause printed), the
# writer goes on, and the snapshot then holds exactly what was written
# before it (a region written once before, a region overwritten after);
# both checkers are clean after the device goes; the snapshot maps read-only
# and reads the old data; a second snapshot while fio verifies keeps fio
# clean.  Refusals: a raw device, a missing name, an unknown device, a
# read-only mapping, each changing nothing.
. "$(dirname "$0")/lib.sh"
need_cmd fio qemu-img qemu-io jq
M=1048576

"$UBLKD" img create -f qcow2 $T/s.qcow2 64M >/dev/null
ublk_add qcow2 $T/s.qcow2 $CACHE_OPT >/dev/null
S=$ID SDEV=$DEV
# region A (0..8M): 0x5a before the snapshot, 0xa5 after
python3 -c "import sys; sys.stdout.buffer.write(b'\x5a' * (8 << 20))" >$T/a.bin
python3 -c "import sys; sys.stdout.buffer.write(b'\xa5' * (8 << 20))" >$T/b.bin
dd if=$T/a.bin of=$SDEV bs=1M oflag=direct status=none || fail "write region A"
# a writer busy on region C (32M..48M) while the snapshot is taken
( for _ in $(seq 40); do dd if=$T/b.bin of=$SDEV bs=1M seek=32 oflag=direct status=none || exit 1; done ) &
writer=$!
sleep 0.5
out=$("$UBLKD" snapshot -n $S -c live1 2>&1) || fail "ublkd snapshot: $out"
log "ok: $out"
grep -Eq "snapshot 'live1' taken \(id 1\); I/O paused [0-9.]+ ms" <<<"$out" || fail "output: $out"
dd if=$T/b.bin of=$SDEV bs=1M oflag=direct status=none || fail "overwrite region A"
wait $writer || fail "the writer failed across the snapshot"
# a second one while fio verifies its own region
fio --name=v --filename=$SDEV --rw=randwrite --bs=4k --iodepth=16 --ioengine=libaio --direct=1 \
    --offset=$((16 * M)) --size=$((8 * M)) --verify=crc32c --do_verify=1 --verify_fatal=1 \
    --verify_state_save=0 --runtime=6 --time_based >$T/fio.out 2>&1 &
fiopid=$!
sleep 2
out2=$("$UBLKD" snapshot -n $S -c live2 2>&1) || fail "second ublkd snapshot: $out2"
log "ok: $out2"
wait $fiopid || { cat $T/fio.out; fail "fio verify across the snapshot"; }
cmp -n $((8 * M)) $T/b.bin $SDEV || fail "region A does not read the new data"

# refusals, each changing nothing
mkimg $T/r.raw 16M
ublk_add raw $T/r.raw $CACHE_OPT >/dev/null
R=$ID
out=$("$UBLKD" snapshot -n $R -c x 2>&1) && fail "a raw device took a snapshot: $out"
grep -qi "not supported\|does not support" <<<"$out" || fail "raw refusal says: $out"
out=$("$UBLKD" snapshot -n $S 2>&1) && fail "no name accepted"
grep -q -- "-c NAME is required" <<<"$out" || fail "no-name refusal says: $out"
out=$("$UBLKD" snapshot -n 999 -c x 2>&1) && fail "device 999 accepted"
log "ok: refusals"

ublk_del $S
qemu-img check -q $T/s.qcow2 || fail "qemu-img check after live snapshots"
"$UBLKD" img check -q $T/s.qcow2 || fail "ublkd img check after live snapshots"
qemu-img snapshot -l $T/s.qcow2 | grep -q " live2 " || fail "live2 not listed"
qemu-img convert -l snapshot.name=live1 -O raw $T/s.qcow2 $T/live1.raw
cmp -n $((8 * M)) $T/a.bin $T/live1.raw || fail "live1 does not hold region A as before"

# the snapshot mapped read-only reads the old data
out=$("$UBLKD" add qcow2 $T/s.qcow2 --snapshot live1 $CACHE_OPT) || fail "add --snapshot: $out"
_lib_devs+=("${out#/dev/ublkb}"); echo "${out#/dev/ublkb}" >>"$T/.devs"
cmp -n $((8 * M)) $T/a.bin $out || fail "the mapped snapshot does not read region A as before"
[ "$(cat /sys/block/${out#/dev/}/ro)" = 1 ] || fail "the mapped snapshot is not read-only"
out3=$("$UBLKD" snapshot -n ${out#/dev/ublkb} -c y 2>&1) && fail "a snapshot of a read-only mapping: $out3"
ublk_del ${out#/dev/ublkb}
out=$("$UBLKD" add qcow2 $T/s.qcow2 --snapshot nosuch $CACHE_OPT 2>&1) && fail "add --snapshot nosuch: $out"
grep -q "Can't find snapshot" <<<"$out" || fail "add --snapshot nosuch says: $out"
qemu-img check -q $T/s.qcow2 || fail "qemu-img check at the end"
log "ok: live snapshots"
