#!/bin/bash
# Image locking: ublkd takes QEMU's lock bytes (file-posix's layout), so
# using an image twice - convert onto itself, a second writer, a reader next
# to a writer - is refused as qemu-img refuses it, and qemu-img/qemu-io see
# ublkd's locks (and ublkd theirs).
. "$(dirname "$0")/lib.sh"
require_format raw

# wait_lock FILE BYTE [gone]: wait until some process holds an OFD lock
# covering BYTE of FILE, or with "gone" until none does (/proc/locks lists
# "OFDLCK ... maj:min:inode start end").  A killed process's locks can
# outlive it briefly: io_uring drops its file references from a worker.
wait_lock() {
    local ino=$(stat -c %i "$1") want=${3:-held} i
    for i in $(seq 100); do
        awk -v ino=":$ino" -v b="$2" -v want="$want" '$2 == "OFDLCK" &&
            substr($6, length($6) - length(ino) + 1) == ino && $7 <= b && ($8 == "EOF" || $8 >= b) {
            found = 1 } END { exit !(want == "held" ? found : !found) }' /proc/locks && return 0
        sleep 0.1
    done
    return 1
}

make_sparse_raw s.raw
want=$(sha s.raw)

# convert onto itself: both tools refuse at the lock, the source survives
cp s.raw q.raw
"$QEMU_IMG" convert -f raw -O raw q.raw q.raw >q.out 2>&1
qrc=$?
[ $qrc != 0 ] || fail "qemu-img convert onto itself succeeded"
[ "$(sha q.raw)" = "$want" ] || fail "qemu-img convert onto itself changed the image"
sed -i 's/q\.raw/s.raw/g' q.out
uimg convert -f raw -O raw s.raw s.raw >u.out 2>&1
urc=$?
[ $urc = $qrc ] || { cat u.out >&2; fail "convert onto itself: ublkd exit $urc, qemu-img $qrc"; }
[ "$(sha s.raw)" = "$want" ] || fail "ublkd convert onto itself changed the image"
same_output "convert onto itself" u.out q.out
# expect_in TEXT FILE: like expect_out, for a file other than expect_rc's
expect_in() { grep -qF -- "$1" "$2" || { sed 's/^/    | /' "$2" >&2; fail "$2 lacks '$1'"; }; }
expect_in 'Failed to get "write" lock' u.out
expect_in 'Is another process using the image [s.raw]?' u.out
# also through -n (no create): the target open is what is refused
expect_rc 1 uimg convert -n -f raw -O raw s.raw s.raw
[ "$(sha s.raw)" = "$want" ] || fail "convert -n onto itself changed the image"

# A ublkd writer that stays a while: a long write bench.
"$UBLKD" img bench -f raw -w -c 100000000 -d 1 -s 512 s.raw >/dev/null 2>&1 &
bench=$!
trap 'kill -KILL $bench 2>/dev/null; wait $bench 2>/dev/null; rm -rf "$WORK"' EXIT
# lock bytes as QEMU's (write held: 101; write not shared: 201)
wait_lock s.raw 201 || fail "no lock on byte 201 of s.raw while ublkd writes it"

"$QEMU_IO" -f raw -c 'write 0 512' s.raw >q.out 2>&1 && fail "qemu-io wrote an image ublkd is writing"
expect_in 'Failed to get "write" lock' q.out
"$QEMU_IMG" create -f raw s.raw 1M >q.out 2>&1 && fail "qemu-img create over an image ublkd is writing"
expect_in 'Failed to get "write" lock' q.out

uimg bench -f raw -w -c 1 s.raw >u.out 2>&1 && fail "a second ublkd writer got in"
expect_in 'Failed to get "write" lock' u.out
# readers share writes as qemu-img's do: info, map, compare work beside a
# writer; convert's source does not let writes in and is refused.
# compare reads s.raw twice while the writer changes it, so "differ" (1) is
# as good an answer as "identical" (0): only 2 (could not open) is a failure.
for cmd in "info -f raw s.raw" "map -f raw s.raw" "compare -f raw -F raw s.raw s.raw"; do
    ok=0; case $cmd in compare*) ok=1;; esac
    "$QEMU_IMG" $cmd >q.out 2>&1; qrc=$?
    uimg $cmd >u.out 2>&1; urc=$?
    [ $qrc -le $ok ] && [ $urc -le $ok ] || { cat q.out u.out >&2; fail "$cmd beside a ublkd writer: qemu-img $qrc, ublkd $urc"; }
    ! grep -q "lock" q.out u.out || { cat q.out u.out >&2; fail "$cmd beside a ublkd writer hit a lock"; }
done
uimg convert -f raw -O raw s.raw c.raw >u.out 2>&1 && fail "ublkd convert read an image ublkd is writing"
expect_in "Could not open 's.raw': Failed to get shared \"write\" lock" u.out
expect_in 'Is another process using the image [s.raw]?' u.out
uimg create -f raw s.raw 1M >u.out 2>&1 && fail "ublkd create over an image ublkd is writing"
expect_in 'Failed to get "write" lock' u.out
# -U: read-only, no lock - like qemu-img info -U
expect_rc 0 uimg info -U -f raw s.raw
expect_out "virtual size: 64 MiB"
# locking=off opts out, as with QEMU
expect_rc 0 uimg info --image-opts driver=raw,file.filename=s.raw,file.locking=off
expect_rc 1 uimg info --image-opts driver=raw,file.filename=s.raw,file.locking=bogus
expect_out "locking"

kill -KILL $bench; wait $bench 2>/dev/null
wait_lock s.raw 201 gone || fail "byte 201 of s.raw still locked 10s after ublkd was killed"
# once the writer is gone everything works again
expect_rc 0 uimg info -f raw s.raw

# A qemu-io writer: ublkd's reader and writer are refused
"$QEMU_IO" -f raw -c 'sleep 60000' s.raw >/dev/null 2>&1 &
qio=$!
trap 'kill $qio 2>/dev/null; wait $qio 2>/dev/null; rm -rf "$WORK"' EXIT
wait_lock s.raw 101 || fail "qemu-io took no lock on byte 101 of s.raw"
uimg bench -f raw -w -c 1 s.raw >u.out 2>&1 && fail "ublkd wrote an image qemu-io is writing"
uimg io -f raw -c 'write 0 512' s.raw >u.out 2>&1 && fail "ublkd io wrote an image qemu-io is writing"
expect_in 'Failed to get shared "write" lock' u.out
kill $qio; wait $qio 2>/dev/null
exit 0
