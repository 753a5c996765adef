#!/bin/bash
# The next command on an image must find it unlocked: each run below is two
# commands back to back, repeated LOCK_SEQ_RUNS times (default 100), and not
# one may fail.  Before file_close released the lock bytes itself, the lock
# lived until io_uring dropped its last reference to the file, a few
# milliseconds after close() and even after exit, and these sequences failed
# at random (1 in 100-200 converts in the 6.12 VM, up to 91 in 200 on a
# loaded machine).  The VM suite runs this script too, where it showed.
. "$(dirname "$0")/lib.sh"
N=${LOCK_SEQ_RUNS:-100}
fmt=vdi
"$UBLKD" img create -q -f vdi .probe.vdi 1M 2>/dev/null || fmt=raw
rm -f .probe.vdi

qemu-img create -q -f raw r.img 16M
qemu-io -f raw -c 'write -P 0x5a 0 1M' r.img >/dev/null

fails=0 first=
check() {   # check WHAT CMD...: run, count and remember the first failure
    local what=$1
    shift
    if ! "$@" >.seq.out 2>&1; then
        fails=$((fails + 1))
        [ -n "$first" ] || first="$what: $(tr '\n' ' ' <.seq.out)"
    fi
}
for i in $(seq "$N"); do
    # convert creates its target, closes it and opens it again at once
    rm -f cv.img
    check "convert (own target)" "$UBLKD" img convert -f raw -O $fmt r.img cv.img
    check "info after convert" "$UBLKD" img info -f $fmt cv.img
    check "qemu-img info after convert" qemu-img info -f $fmt cv.img
    check "io write" "$UBLKD" img io -f raw -c "write -P $((i % 250)) 4k 4k" -c flush r.img
    check "qemu-io after ublkd write" qemu-io -f raw -c "read -P $((i % 250)) 4k 4k" r.img
    check "info after io write" "$UBLKD" img info -f raw r.img
done
[ "$fails" = 0 ] || fail "$fails of $((N * 6)) commands failed; first: $first"
echo "ok: $((N * 6)) commands in back-to-back sequences, none failed"
