#!/bin/bash
# create: same "Formatting" line, resulting size and error messages as
# qemu-img create for raw; -o help lists the driver's options.
. "$(dirname "$0")/lib.sh"
require_format raw

create_both() {   # create_both WANT_RC args (FILE is the first non-option)
    local want=$1
    shift
    rm -f c.raw
    "$QEMU_IMG" create "$@" >q.out 2>&1
    local qrc=$?
    local qsize=$(stat -c %s c.raw 2>/dev/null)
    rm -f c.raw
    uimg create "$@" >u.out 2>&1
    local urc=$?
    local usize=$(stat -c %s c.raw 2>/dev/null)
    [ $qrc = "$want" ] || fail "qemu-img create $* exited $qrc, test expects $want"
    [ $urc = $qrc ] || { cat u.out >&2; fail "create $*: ublkd exit $urc, qemu-img $qrc"; }
    [ "$usize" = "$qsize" ] || fail "create $*: size $usize, qemu-img made $qsize"
    same_output "create $*" u.out q.out
}

create_both 0 -f raw c.raw 1G
create_both 0 -f raw c.raw 1536
create_both 0 -f raw c.raw 1.5k
create_both 0 -f raw c.raw 0x10000
# unaligned sizes: file-posix rounds up to whole 512-byte sectors
for sz in 1 511 513 1000 1025 1.3k 1048577; do
    create_both 0 -f raw c.raw $sz
done
create_both 0 -f raw -o size=1000 c.raw
create_both 0 c.raw 10M
create_both 0 -f raw -o size=4M c.raw
create_both 0 -q -f raw c.raw 1M
create_both 1 -f raw c.raw 1Q
create_both 1 -f raw c.raw 8E
create_both 1 -f raw c.raw
create_both 1 -f raw -o foo=1 c.raw 1M
create_both 1 -f nosuchfmt c.raw 1M
# -o help: qemu-img's listing (preallocation is the protocol's, which
# raw takes all the same)
for h in help '?'; do
    create_both 0 -f raw -o "$h"
done
for p in off falloc full; do
    create_both 0 -f raw -o preallocation=$p c.raw 1M
done
[ "$(alloc_bytes c.raw)" -ge $((1024 * 1024)) ] || fail "preallocation=full did not allocate"
create_both 1 -f raw dir/does/not/exist/c.raw 1M
# the new image reads as zeros and is sparse
expect_rc 0 uimg create -f raw z.raw 100M
[ "$(alloc_bytes z.raw)" -le $((64 * 1024)) ] || fail "new raw image is not sparse"
expect_rc 0 "$QEMU_IO" -f raw -c 'read -P 0 0 100M' z.raw
exit 0
