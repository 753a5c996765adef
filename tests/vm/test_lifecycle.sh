#!/bin/bash
# Issue #10 item 7: del refuses a mounted or open device (EBUSY, naming the
# holder) unless --force; recover of a --blockdev device with a relative file
# name works from another directory; list without access to /dev/ublk-control
# says why and fails; a failed unprivileged add leaves no device behind.
. "$(dirname "$0")/lib.sh"
need_cmd mkfs.ext4 setpriv jq
mkimg $T/fs.raw 32M
mkdir $T/mnt

# Mounted: refused, the mount point named; the file system keeps working.
ublk_add raw $T/fs.raw $CACHE_OPT >/dev/null
pid=$(ublk_pid $ID)
mkfs.ext4 -q -F "$DEV" || fail "mkfs.ext4 failed"
mount "$DEV" $T/mnt || fail "mount failed"
on_exit "umount $T/mnt 2>/dev/null"
echo unsynced > $T/mnt/f
if out=$("$UBLKD" del -n $ID 2>&1); then fail "del of a mounted device succeeded"; fi
log "refused: $out"
grep -q "busy: mounted on $T/mnt" <<<"$out" || fail "the refusal does not name the mount: $out"
kill -0 $pid 2>/dev/null || fail "the daemon was stopped anyway"
[ "$(ublk_state $ID)" = LIVE ] || fail "device not LIVE after the refused del"
sync
[ "$(cat $T/mnt/f)" = unsynced ] || fail "file lost"
umount $T/mnt

# Open by a process (not exclusively): refused, the process named.
exec 3<"$DEV"
if out=$("$UBLKD" del -n $ID 2>&1); then fail "del of an open device succeeded"; fi
log "refused: $out"
grep -q "pid $$ (bash) has it open" <<<"$out" || fail "the refusal does not name the opener: $out"
if out=$("$UBLKD" del -a 2>&1); then fail "del -a took an open device: $out"; fi
[ -e /sys/class/ublk-char/ublkc$ID ] || fail "del -a deleted the open device"
exec 3<&-
# --force takes it from a holder (the kernel's DEL_DEV then waits for the
# holder's last close, so this one lets go after a moment).
( exec 3<"$DEV"; sleep 3 ) &
wait_for sh -c "ls -l /proc/$!/fd 2>/dev/null | grep -q ublkb$ID" || true
timeout 60 "$UBLKD" del -n $ID --force || fail "del --force failed"
[ ! -e /sys/class/ublk-char/ublkc$ID ] || fail "device still there after del --force"
! kill -0 $pid 2>/dev/null || fail "daemon still running after del --force"

# --blockdev with a relative file name, recovered from another directory.
mkdir $T/d && mkimg $T/d/rel.raw 8M
( cd $T/d && "$UBLKD" add --blockdev driver=raw,file.driver=file,file.filename=rel.raw,file.cache.direct=off \
    >$T/add.out ) || fail "add --blockdev with a relative file name failed"
dev=$(cat $T/add.out); ID=${dev#/dev/ublkb}; _lib_devs+=("$ID")
pid=$(ublk_pid $ID)
kill -9 $pid
wait_for sh -c "! kill -0 $pid 2>/dev/null" || fail "daemon survived kill -9"
wait_for sh -c "[ \"\$($UBLKD list -n $ID --json | jq -r '.[0].state')\" = QUIESCED ]" \
  || fail "device $ID did not become QUIESCED"
( cd / && timeout 60 "$UBLKD" recover -n $ID ) || fail "recover from / of a relative --blockdev failed"
[ "$(ublk_state $ID)" = LIVE ] || fail "device not LIVE after recover"
ublk_del $ID

# list without access to /dev/ublk-control, while a device exists.
ublk_add null --size 1M >/dev/null
chmod 0600 /dev/ublk-control
install -m 755 "$UBLKD" $T/ublkd
chmod 755 $T
if out=$(setpriv --reuid=65534 --regid=65534 --clear-groups env UBLKD_RUN_DIR=$T/urun $T/ublkd list 2>&1); then
  fail "list without access to /dev/ublk-control exited 0: $out"
fi
log "list: $out"
grep -q "/dev/ublk-control" <<<"$out" || fail "list does not say why: $out"
ublk_del $ID

# A failed unprivileged add (no udev rule hands it the nodes).  The kernel
# checks every command on an unprivileged device against the caller's access
# to its char device, so the device cannot be deleted by the user who made
# it: the add must say so (and who can), and the user's list must show it.
if "$UBLKD" features | grep -q UNPRIVILEGED_DEV; then
  chmod 0666 /dev/ublk-control
  on_exit "chmod 0600 /dev/ublk-control"
  mkdir -p $T/u && chown 65534 $T/u
  asu() { setpriv --reuid=65534 --regid=65534 --clear-groups env UBLKD_RUN_DIR=$T/u/run "$@"; }
  asu truncate -s 8M $T/u/img.raw
  before=$(ublk_ids | tr '\n' ' ')
  if out=$(asu $T/ublkd add raw $T/u/img.raw $CACHE_OPT 2>&1); then
    _lib_devs+=("${out#/dev/ublkb}")
    fail "unprivileged add without its nodes succeeded: $out"
  fi
  log "failed add: $out"
  after=$(ublk_ids | tr '\n' ' ')
  for id in $after; do grep -qw "$id" <<<"$before" || left=$id; done
  if [ -n "${left:-}" ]; then
    _lib_devs+=("$left")
    grep -q "device $left stays in the kernel.*only root can delete it (ublkd del -n $left)" <<<"$out" \
      || fail "the failed add left device $left without saying so: $out"
    lout=$(asu $T/ublkd list 2>&1) || true
    grep -q "dev $left: /dev/ublkb$left not accessible to you" <<<"$lout" \
      || fail "the user's list does not show the leftover device $left: $lout"
    asu $T/ublkd del -a || fail "the user's del -a failed over a device it cannot touch"
    "$UBLKD" del -n $left || fail "root could not delete the leftover device $left"
  fi
fi
