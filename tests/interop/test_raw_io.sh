#!/bin/bash
# img io: what ublkd writes qemu-io reads back and vice versa, with qemu-io's
# output lines (the timing line excepted) and exit codes.
. "$(dirname "$0")/lib.sh"
require_format raw

"$QEMU_IMG" create -q -f raw t.raw 16M

# strip qemu-io's statistics lines, whose numbers differ run to run
nostats() { grep -v ' ops; .* ops/sec)$'; }

io_both() {   # io_both WANT_RC FILE cmds...: same output and rc from both
    local want=$1 f=$2
    shift 2
    local args=()
    for c in "$@"; do args+=(-c "$c"); done
    cp --sparse=always "$f" q.img && cp --sparse=always "$f" u.img
    "$QEMU_IO" -f raw "${args[@]}" q.img >q.out 2>&1
    local qrc=$?
    uimg io -f raw "${args[@]}" u.img >u.out 2>&1
    local urc=$?
    [ $qrc = "$want" ] || { cat q.out >&2; fail "qemu-io $* exited $qrc, test expects $want"; }
    [ $urc = $qrc ] || { cat u.out >&2; fail "io $*: ublkd exit $urc, qemu-io $qrc"; }
    nostats <q.out >q.txt; nostats <u.out >u.txt
    same_output "io $*" u.txt q.txt
    [ "$(sha u.img)" = "$(sha q.img)" ] || fail "io $*: images differ afterwards"
}

# ublkd writes, qemu-io verifies
expect_rc 0 uimg io -f raw -c 'write -P 0xa5 0 4k' -c 'write -P 0x5a 1M 64k' \
    -c 'writev -P 0x3c 2M 512 4k 1536' -c 'write -z 4M 1M' t.raw
expect_out "wrote 4096/4096 bytes at offset 0"
expect_out "wrote 6144/6144 bytes at offset 2097152"
expect_rc 0 "$QEMU_IO" -f raw -c 'read -P 0xa5 0 4k' -c 'read -P 0x5a 1M 64k' \
    -c 'read -P 0x3c 2M 6144' -c 'read -P 0 4M 1M' t.raw

# qemu-io writes, ublkd verifies
expect_rc 0 "$QEMU_IO" -f raw -c 'write -P 0x71 8M 8k' -c 'write -P 0x72 12345 100' t.raw
expect_rc 0 uimg io -f raw -c 'read -P 0x71 8M 8k' -c 'read -P 0x72 12345 100' \
    -c 'readv -P 0x71 8M 4k 4k' t.raw
expect_out "read 8192/8192 bytes at offset 8388608"

# a pattern mismatch fails the run (exit 1), later commands still run
expect_rc 1 uimg io -f raw -c 'read -P 0x00 8M 4k' -c 'read 0 512' t.raw
expect_out "Pattern verification failed at offset 8388608, 4096 bytes"
expect_out "read 512/512 bytes at offset 0"

# same output and resulting image as qemu-io for whole command sequences
io_both 0 t.raw 'read -P 0xa5 0 4k' 'read -v 1M 32' 'length' 'map'
io_both 0 t.raw 'write -P 0x11 1k 2k' 'read -P 0x11 1k 2k' 'read -q 0 512' 'flush'
io_both 0 t.raw 'writev -P 7 100 1 2 3 4096' 'readv -P 7 100 4102' 'discard 8M 64k'
io_both 0 t.raw 'write -z -u 1M 64k' 'read -P 0 1M 64k' 'write -f 0 4k'
io_both 1 t.raw 'read -P 0x12 0 4k' 'read -P 0xa5 0 4k'
io_both 1 t.raw 'read 15M 2M'
io_both 1 t.raw 'read 1 2x'
io_both 1 t.raw 'read 0'
io_both 1 t.raw 'bogus 1 2'
io_both 1 t.raw 'read -P 300 0 512'
io_both 0 t.raw 'truncate 20M' 'length'

# read-only and open errors
expect_rc 1 uimg io -r -f raw -c 'write 0 512' t.raw
expect_rc 1 uimg io -f raw -c 'read 0 512' nonexist.raw
expect_out "nonexist.raw"
exit 0
