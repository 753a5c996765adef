#!/bin/bash
# An unprivileged user with access to /dev/ublk-control adds a device over their own image
# (UBLK_F_UNPRIVILEGED_DEV), does verified I/O and deletes it, and cannot expose root's image.
. "$(dirname "$0")/lib.sh"
need_cmd setpriv fio
"$UBLKD" features | grep -q UNPRIVILEGED_DEV || skip "kernel lacks UBLK_F_UNPRIVILEGED_DEV"
U=65534
chmod 0666 /dev/ublk-control
# Stand-in for udev: run the installed rule's helper (dist/ublk-chown.in) on each
# new ublk node, which hands it to the device's owner as the kernel records it.
# Without set -e: a node deleted between the check and the chown must not end
# the loop (every later add would then wait for a node that stays root's).
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
# Not a trap of our own: that replaced lib.sh's, and under set -e its
# "(exit $rc)" ended the trap before _lib_cleanup whenever the test failed.
on_exit "kill $chowner 2>/dev/null; chmod 0600 /dev/ublk-control"
mkdir -p $T/u && chown $U $T/u && chmod 755 $T
as_user() { setpriv --reuid=$U --regid=$U --clear-groups env UBLKD_RUN_DIR=$T/u/run "$@"; }
# The user runs a copy: the build tree may sit under a directory only root
# can enter (a CI clone in /root).
install -m 755 "$UBLKD" $T/u/ublkd
UUBLKD=$T/u/ublkd
as_user truncate -s 32M $T/u/img.raw
# A memlock limit of 4 pages: the daemon's registered tag buffers run out
# after a few requests and the rest must go the ordinary (pinned) way.
out=$(as_user prlimit --memlock=16384 "$UUBLKD" add raw $T/u/img.raw $CACHE_OPT 2>&1) ||
  fail "unprivileged add failed: $out"
id=${out#/dev/ublkb}; _lib_devs+=("$id")
log "user device: $out"
as_user "$UUBLKD" list -n $id | grep -q UNPRIVILEGED_DEV || fail "device not flagged UNPRIVILEGED_DEV"
as_user fio --name=u --filename=$out --direct=1 --ioengine=io_uring --rw=randwrite --bs=4k --iodepth=8 \
   --size=4M --verify=crc32c --do_verify=1 --verify_fatal=1 >/dev/null || fail "fio as the user failed"
pid=$(ublk_pid $id)
pin=$(awk '/^VmPin/{print $2}' /proc/$pid/status)
log "user daemon VmPin: ${pin:-?} kB"
# No "${pin:-0}": a missing VmPin must not read as "within the limit".
[ -n "$pin" ] || fail "no VmPin in /proc/$pid/status"
[ "$pin" -le 16 ] || fail "daemon pinned ${pin} kB past its 16 kB memlock limit"
# root's image is not the user's to expose
truncate -s 16M $T/root.raw; chmod 600 $T/root.raw
if out2=$(as_user "$UUBLKD" add raw $T/root.raw $CACHE_OPT 2>&1); then
  fail "user could expose root's image: $out2"
fi
log "refused as expected: $out2"
grep -qi "permission denied" <<<"$out2" || fail "message does not say permission denied: $out2"
as_user "$UUBLKD" del -n $id || fail "unprivileged del failed"
[ ! -e /sys/class/ublk-char/ublkc$id ] || fail "device still exists"
# Root can take down a user's device whose daemon died: for a device added
# unprivileged the kernel wants the char device's path from root too.
out3=$(as_user "$UUBLKD" add raw $T/u/img.raw $CACHE_OPT 2>&1) || fail "second unprivileged add failed: $out3"
id3=${out3#/dev/ublkb}; _lib_devs+=("$id3")
pid3=$(ublk_pid $id3)
kill -9 $pid3
wait_for sh -c "! kill -0 $pid3 2>/dev/null"
"$UBLKD" del -n $id3 || fail "root could not delete device $id3, whose unprivileged daemon died"
[ ! -e /sys/class/ublk-char/ublkc$id3 ] || fail "device $id3 still exists"
# Zero copy: the kernel refuses SUPPORT_ZERO_COPY and AUTO_BUF_REG (as USER_COPY) to
# unprivileged devices.  --zero-copy=on/register ask it and must fail saying so (on a
# kernel without zero copy: saying that); the default (auto) copies.
for m in on register; do
  if out4=$(as_user "$UUBLKD" add raw $T/u/img.raw $CACHE_OPT --zero-copy=$m 2>&1); then
    fail "unprivileged --zero-copy=$m gave a device: $out4"
  fi
  log "unprivileged --zero-copy=$m: $out4"
  if "$UBLKD" features | grep -qw 'UBLK_F_ZERO_COPY\|UBLK_F_AUTO_BUF_REG'; then
    grep -q "the kernel refused .* to an unprivileged device.*CAP_SYS_ADMIN" <<<"$out4" ||
      fail "unprivileged --zero-copy=$m: the error does not say the kernel refused it: $out4"
  else
    grep -q "lacks zero copy" <<<"$out4" || fail "unprivileged --zero-copy=$m: unclear error: $out4"
  fi
done
[ -z "$(ublk_ids)" ] || fail "a refused --zero-copy add left devices: $(ublk_ids)"
