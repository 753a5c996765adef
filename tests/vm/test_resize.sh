#!/bin/bash
# `ublkd resize` (issue #11 item 5).  On every kernel: the refusals that need
# no kernel support (shrink without --shrink, a size the logical block size
# does not divide, an unknown device, a dead daemon, formats without resize,
# a peer of another uid on the control socket), each leaving the device and
# the image as they were.  With UPDATE_SIZE (7.3 guest): a mounted ext4 on a
# raw image, and one on a qcow2 image (its L1 table grown), grows under fio verify, resize2fs fills the new space, a file
# larger than the old fs verifies, e2fsck is clean; the size survives a kill
# -9 and recover; --shrink on an unmounted device keeps the data below the
# new end and a regrow reads zeros past it.  Without it (6.12): the refusal
# names the kernel and nothing changes.
. "$(dirname "$0")/lib.sh"
need_cmd fio mkfs.ext4 resize2fs e2fsck blockdev jq python3 stat qemu-img
M=1048576
RUN=/run/ublkd
# wait_long CMD...: retry for up to 60 s (fio rounds under TCG take seconds).
wait_long() { for _ in $(seq 600); do "$@" && return 0; sleep 0.1; done; return 1; }
has_update_size() { "$UBLKD" features | grep -qw UBLK_F_UPDATE_SIZE; }
dev_size() { blockdev --getsize64 "$1"; }
file_size() { stat -c %s "$1"; }
# expect_refused PATTERN ARGS...: ublkd resize fails, saying PATTERN.
expect_refused() {
  local pat=$1 out; shift
  if out=$("$UBLKD" resize "$@" 2>&1); then fail "ublkd resize $* succeeded ($out)"; fi
  grep -qi -- "$pat" <<<"$out" || fail "ublkd resize $*: '$out' does not say '$pat'"
  log "ok: resize $* -> $out"
}

# ---- what is refused on any kernel ----
mkimg $T/a.raw 64M
ublk_add raw $T/a.raw $CACHE_OPT >/dev/null
A=$ID ADEV=$DEV
sock=$RUN/$A.sock
[ -S "$sock" ] || fail "no control socket $sock"
[ "$(stat -c '%a %U' "$sock")" = "600 root" ] || fail "$sock is $(stat -c '%a %U' "$sock")"
expect_refused "pass --shrink" -n $A 32M
expect_refused "not a multiple of the device's logical block size 512" -n $A $((64 * M + 100))
expect_refused "no device 999" -n 999 128M
expect_refused "invalid size" -n $A 12parsecs
expect_refused "SIZE is required" -n $A
[ "$(dev_size $ADEV)" = $((64 * M)) ] || fail "device size changed to $(dev_size $ADEV)"
[ "$(file_size $T/a.raw)" = $((64 * M)) ] || fail "image size changed to $(file_size $T/a.raw)"
"$UBLKD" resize -n $A 64M | grep -q "already $((64 * M)) bytes" || fail "same size: not 'already'"

# The daemon serves root and its own uid only.  The run directory keeps
# everyone else away (and the daemon closes it again within a second if it
# is opened up), so the socket is reached through a hard link elsewhere,
# made writable for a moment: then the daemon's own check must refuse uid
# 65534.
mkdir -p /run/ublkd-resize-test
on_exit "rm -rf /run/ublkd-resize-test"
ln "$sock" /run/ublkd-resize-test/s.sock
chmod 666 /run/ublkd-resize-test/s.sock
reply=$(setpriv --reuid=65534 --regid=65534 --clear-groups python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
try:
    s.sendall(b"{\"ublkd-ctl\": 1, \"op\": \"resize\", \"size\": 268435456}\n")
except OSError:
    pass          # refused before the request was read: the reason is queued
print(s.recv(4096).decode())' /run/ublkd-resize-test/s.sock 2>&1) || true
chmod 600 "$sock"
rm -rf /run/ublkd-resize-test
grep -q '"ok":false' <<<"$reply" && grep -q 'uid 65534 is neither root nor' <<<"$reply" ||
  fail "uid 65534 was not refused by the daemon: $reply"
log "ok: uid 65534 refused: $reply"
# Another version, and garbage, are answered with an error, not acted on.
reply=$(python3 -c '
import socket, sys
for msg in (b"{\"ublkd-ctl\": 2, \"op\": \"resize\", \"size\": 268435456}\n", b"\x00garbage\n"):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1]); s.sendall(msg); print(s.recv(4096).decode())' "$sock")
grep -q 'version 2; this ublkd speaks version 1' <<<"$reply" || fail "version 2 not refused: $reply"
grep -q 'not a JSON object' <<<"$reply" || fail "garbage not refused: $reply"
[ "$(dev_size $ADEV)" = $((64 * M)) ] || fail "a refused request changed the device"

# Formats that cannot resize say so and change nothing.
"$UBLKD" img create -f vdi $T/v.vdi 32M >/dev/null
ublk_add vdi $T/v.vdi $CACHE_OPT >/dev/null
vsz=$(file_size $T/v.vdi)
expect_refused "resize not supported by the vdi driver" -n $ID 64M
[ "$(file_size $T/v.vdi)" = "$vsz" ] && [ "$(dev_size $DEV)" = $((32 * M)) ] ||
  fail "a refused vdi resize changed something"
ublk_del $ID
# qcow2 resizes (drivers/qcow2-resize.c).  With UPDATE_SIZE a shrink over
# data is refused naming the offset (the device gets its old size back);
# without it the kernel is the refusal.  Either way nothing changes.
"$UBLKD" img create -f qcow2 $T/q.qcow2 32M >/dev/null
ublk_add qcow2 $T/q.qcow2 $CACHE_OPT >/dev/null
dd if=/dev/urandom of=$DEV bs=1M seek=20 count=1 oflag=direct conv=fsync status=none
if has_update_size; then
  expect_refused "guest offset 20971520 (0x1400000) past the new end holds data" -n $ID --shrink 16M
else
  expect_refused "needs Linux >= 6.14" -n $ID 64M
fi
[ "$(dev_size $DEV)" = $((32 * M)) ] || fail "a refused qcow2 resize changed the device"
ublk_del $ID
[ "$(qemu-img info -U --output=json $T/q.qcow2 | jq '."virtual-size"')" = $((32 * M)) ] ||
  fail "a refused qcow2 resize changed the image"
qemu-img check -q $T/q.qcow2 || fail "qemu-img check after a refused qcow2 resize"

# A dead daemon: said before anything is tried.
ublk_add null --size 16M >/dev/null
kill -9 "$(ublk_pid $ID)"
wait_for sh -c "[ \"\$($UBLKD list -n $ID --json | jq -r '.[0].state')\" = QUIESCED ]" ||
  fail "device $ID did not become QUIESCED"
expect_refused "is not running; 'ublkd recover -n ID' first" -n $ID 32M
"$UBLKD" del -n $ID >/dev/null || fail "del of the quiesced device failed"
[ ! -e $RUN/$ID.sock ] || fail "del left the dead daemon's socket $RUN/$ID.sock"

if ! has_update_size; then
  # ---- 6.12: refused cleanly, nothing changed ----
  expect_refused "needs Linux >= 6.14; this kernel's ublk driver lacks UPDATE_SIZE" -n $A 128M
  [ "$(file_size $T/a.raw)" = $((64 * M)) ] || fail "the refused resize changed the image"
  [ "$(dev_size $ADEV)" = $((64 * M)) ] || fail "the refused resize changed the device"
  ublk_del $A
  [ ! -e "$sock" ] || fail "del left $sock"
  echo "UPDATE_SIZE needs 7.3 kernel; checked the fallback"
  exit 0
fi

# ---- with UPDATE_SIZE: grow a mounted ext4 under I/O ----
# The kernel's rule: UBLK_F_UPDATE_SIZE is a capability GET_FEATURES reports,
# not a flag the device must be added with.  ublkd does not ask for it, so the
# resizes below show that the kernel takes UPDATE_SIZE without it.
"$UBLKD" list -n $A --json | jq -r '.[0].flag_list[]' | grep -qx UPDATE_SIZE &&
  fail "device $A was added with UPDATE_SIZE: this test no longer shows that it is not needed"
mkfs.ext4 -q -F $ADEV
mkdir -p $T/mnt
mount $ADEV $T/mnt
on_exit "umount $T/mnt 2>/dev/null"
# Verifying writers, one round after another, until told to stop: the
# resize happens while they run, and every round must verify.
( n=0
  while [ ! -e $T/stop ]; do
    fio --name=load --filename=$T/mnt/load --size=8M --direct=1 --ioengine=io_uring \
        --rw=randwrite --bs=4k --iodepth=8 --verify=crc32c --do_verify=1 --verify_fatal=1 \
        --randrepeat=0 --output-format=terse >$T/load.out 2>&1 || { echo fail > $T/load.fail; exit 1; }
    n=$((n + 1)); echo $n > $T/load.rounds
  done ) &
lpid=$!
wait_long test -s $T/load.rounds || fail "the load never finished a round"
w0=$(ublk_stat $A write ops)
"$UBLKD" resize -n $A +64M || fail "ublkd resize -n $A +64M failed"
[ "$(dev_size $ADEV)" = $((128 * M)) ] || fail "device is $(dev_size $ADEV) bytes after growing"
[ "$(file_size $T/a.raw)" = $((128 * M)) ] || fail "image is $(file_size $T/a.raw) bytes"
[ "$("$UBLKD" list -n $A --json | jq '.[0].size')" = $((128 * M)) ] || fail "list shows the old size"
[ "$(jq .size $RUN/$A.json)" = $((128 * M)) ] || fail "the state file did not record the new size"
resize2fs $ADEV >$T/r2fs.out 2>&1 || { cat $T/r2fs.out; fail "resize2fs failed"; }
kill -0 $lpid 2>/dev/null || { cat $T/load.out; fail "the load ended during the resize"; }
r0=$(cat $T/load.rounds)
wait_long sh -c "[ \$(cat $T/load.rounds) -gt $r0 ]" || fail "the load stopped after the resize"
touch $T/stop
wait $lpid || { cat $T/load.out; fail "fio verify failed across the resize"; }
[ ! -e $T/load.fail ] || { cat $T/load.out; fail "fio verify failed across the resize"; }
log "grew under I/O: $(cat $T/load.rounds) verified rounds, $(( $(ublk_stat $A write ops) - w0 )) writes since"
# The new space holds data: 80 MiB do not fit in the old 64 MiB fs.
blocks=$(df -k --output=size $T/mnt | tail -1)
[ "$blocks" -gt $((100 * 1024)) ] || fail "the fs is only ${blocks}k after resize2fs"
FIO_SIZE=80M fio_verify $T/mnt/big --bs=1M --iodepth=4
umount $T/mnt
e2fsck -fn $ADEV >$T/fsck.out 2>&1 || { cat $T/fsck.out; fail "e2fsck after growing found errors"; }

# ---- the size survives the daemon's death: recover keeps it ----
pid=$(ublk_pid $A)
kill -9 $pid
wait_for sh -c "[ \"\$($UBLKD list -n $A --json | jq -r '.[0].state')\" = QUIESCED ]" ||
  fail "device $A did not become QUIESCED"
out=$("$UBLKD" recover -n $A 2>&1) || fail "recover failed: $out"
grep -qi "warn" <<<"$out" && fail "recover warned: $out"
[ "$(dev_size $ADEV)" = $((128 * M)) ] || fail "device is $(dev_size $ADEV) bytes after recover"
[ "$(jq .size $RUN/$A.json)" = $((128 * M)) ] || fail "the recovered daemon records another size"
e2fsck -fn $ADEV >$T/fsck.out 2>&1 || { cat $T/fsck.out; fail "e2fsck after recover found errors"; }

# ---- --shrink on the unmounted device ----
head -c $((2 * M)) /dev/urandom > $T/pat
dd if=$T/pat of=$ADEV bs=1M seek=62 oflag=direct conv=fsync status=none
dd if=$T/pat of=$ADEV bs=1M seek=100 oflag=direct conv=fsync status=none
expect_refused "pass --shrink" -n $A 64M
"$UBLKD" resize -n $A --shrink 64M || fail "ublkd resize --shrink 64M failed"
[ "$(dev_size $ADEV)" = $((64 * M)) ] || fail "device is $(dev_size $ADEV) bytes after shrinking"
[ "$(file_size $T/a.raw)" = $((64 * M)) ] || fail "image is $(file_size $T/a.raw) bytes after shrinking"
dd if=$ADEV of=$T/tail bs=1M skip=62 count=2 iflag=direct status=none
cmp $T/pat $T/tail || fail "the data below the new end changed"
n=$(dd if=$ADEV bs=1M skip=64 count=1 iflag=direct status=none | wc -c)
[ "$n" = 0 ] || fail "read $n bytes past the new end"
# Growing again shows zeros where the cut-off data was, not the old bytes.
"$UBLKD" resize -n $A 101M || fail "regrow failed"
cmp -n $M <(dd if=$ADEV bs=1M skip=100 count=1 iflag=direct status=none) /dev/zero ||
  fail "the regrown space shows data from before the shrink"
cmp $T/pat <(dd if=$ADEV bs=1M skip=62 count=2 iflag=direct status=none) ||
  fail "the data below the old end changed after regrowing"
ublk_del $A
[ ! -e "$sock" ] || fail "del left $sock"
log "UPDATE_SIZE: grew mounted ext4 under fio, shrank and regrew the unmounted device"

# ---- qcow2: a mounted ext4 grows under I/O, the L1 table with it ----
# 64 MiB with 4 KiB clusters is 32 L1 entries; 192 MiB needs a new L1 table.
"$UBLKD" img create -f qcow2 -o cluster_size=4096 $T/g.qcow2 64M >/dev/null
ublk_add qcow2 $T/g.qcow2 $CACHE_OPT >/dev/null
G=$ID GDEV=$DEV
mkfs.ext4 -q -F $GDEV
mount $GDEV $T/mnt
rm -f $T/stop $T/load.rounds $T/load.fail
( n=0
  while [ ! -e $T/stop ]; do
    fio --name=load --filename=$T/mnt/load --size=8M --direct=1 --ioengine=io_uring \
        --rw=randwrite --bs=4k --iodepth=8 --verify=crc32c --do_verify=1 --verify_fatal=1 \
        --randrepeat=0 --output-format=terse >$T/load.out 2>&1 || { echo fail > $T/load.fail; exit 1; }
    n=$((n + 1)); echo $n > $T/load.rounds
  done ) &
lpid=$!
wait_long test -s $T/load.rounds || fail "the qcow2 load never finished a round"
"$UBLKD" resize -n $G 192M || fail "ublkd resize -n $G 192M (qcow2) failed"
[ "$(dev_size $GDEV)" = $((192 * M)) ] || fail "qcow2 device is $(dev_size $GDEV) bytes after growing"
resize2fs $GDEV >$T/r2fs.out 2>&1 || { cat $T/r2fs.out; fail "resize2fs on qcow2 failed"; }
r0=$(cat $T/load.rounds)
wait_long sh -c "[ \$(cat $T/load.rounds) -gt $r0 ]" || fail "the qcow2 load stopped after the resize"
touch $T/stop
wait $lpid || { cat $T/load.out; fail "fio verify failed across the qcow2 resize"; }
[ ! -e $T/load.fail ] || { cat $T/load.out; fail "fio verify failed across the qcow2 resize"; }
FIO_SIZE=120M fio_verify $T/mnt/big --bs=1M --iodepth=4
umount $T/mnt
e2fsck -fn $GDEV >$T/fsck.out 2>&1 || { cat $T/fsck.out; fail "e2fsck after the qcow2 grow found errors"; }
ublk_del $G
qemu-img check $T/g.qcow2 >$T/qchk.out 2>&1 || { cat $T/qchk.out; fail "qemu-img check after the qcow2 grow"; }
[ "$(qemu-img info --output=json $T/g.qcow2 | jq '."virtual-size"')" = $((192 * M)) ] ||
  fail "the qcow2 image did not record the new size"
log "UPDATE_SIZE: grew a mounted ext4 on qcow2 under fio (L1 table grown), qemu-img check clean"

# ---- an unprivileged device: its owner's daemon may send UPDATE_SIZE ----
# (the kernel checks read and write access to /dev/ublkcN, as for SET_PARAMS)
if "$UBLKD" features | grep -q UNPRIVILEGED_DEV; then
  U=65534
  chmod 0666 /dev/ublk-control
  # Stand-in for udev (as test_unpriv): the installed rule's helper hands
  # each new node to the device's owner.
  CHOWN_HELPER=$(cd "$(dirname "$0")/../.." && pwd)/dist/ublk-chown.in
  ( set +e
    while :; do
      for c in /sys/class/ublk-char/ublkc*; do
        [ -e "$c" ] || continue; n=${c##*/ublkc}
        for d in ublkc$n ublkb$n; do
          [ -e /dev/$d ] && [ "$(stat -c %u /dev/$d)" != $U ] &&
            UBLKD="$UBLKD" sh "$CHOWN_HELPER" $d 2>/dev/null
        done
      done
      sleep 0.05
    done ) &
  chowner=$!
  on_exit "kill $chowner 2>/dev/null; chmod 0600 /dev/ublk-control"
  mkdir -p $T/u && chown $U $T/u && chmod 755 $T
  as_user() { setpriv --reuid=$U --regid=$U --clear-groups env UBLKD_RUN_DIR=$T/u/run "$@"; }
  install -m 755 "$UBLKD" $T/u/ublkd
  as_user truncate -s 32M $T/u/img.raw
  out=$(as_user $T/u/ublkd add raw $T/u/img.raw $CACHE_OPT 2>&1) || fail "unprivileged add failed: $out"
  uid_dev=${out#/dev/ublkb}; _lib_devs+=("$uid_dev"); echo "$uid_dev" >> "$T/.devs"
  as_user $T/u/ublkd resize -n $uid_dev 48M || fail "the owner could not resize its unprivileged device"
  [ "$(dev_size $out)" = $((48 * M)) ] || fail "unprivileged device is $(dev_size $out) bytes"
  [ "$(file_size $T/u/img.raw)" = $((48 * M)) ] || fail "user image is $(file_size $T/u/img.raw) bytes"
  # Root's ublkd does not take another user's state (or socket) as its own.
  if out2=$(UBLKD_RUN_DIR=$T/u/run "$UBLKD" resize -n $uid_dev 64M 2>&1); then
    fail "root resized through the user's run directory: $out2"
  fi
  log "ok: root with the user's run directory: $out2"
  as_user $T/u/ublkd del -n $uid_dev || fail "unprivileged del failed"
  log "UPDATE_SIZE from an unprivileged device's own daemon works"
else
  echo "kernel lacks UNPRIVILEGED_DEV: the unprivileged resize was not checked"
fi
