#!/bin/bash
# compare: same messages and exit codes as qemu-img compare on identical,
# different and size-mismatched raw images made by qemu-img/qemu-io.
. "$(dirname "$0")/lib.sh"
require_format raw

make_sparse_raw a.raw 32M
cp --sparse=always a.raw same.raw
cp --sparse=always a.raw diff.raw
"$QEMU_IO" -f raw -c 'write -P 0x99 9M 512' diff.raw >/dev/null
cp --sparse=always a.raw bigger.raw && truncate -s 48M bigger.raw
cp --sparse=always bigger.raw bigdirty.raw
"$QEMU_IO" -f raw -c 'write -P 0x01 40M 4k' bigdirty.raw >/dev/null
# same content, different allocation: a hole vs written zeroes
"$QEMU_IMG" create -q -f raw z1.raw 8M
"$QEMU_IMG" create -q -f raw z2.raw 8M
"$QEMU_IO" -f raw -c 'write -P 0 1M 1M' z2.raw >/dev/null
# a mismatch inside a sector, not at its start
cp --sparse=always a.raw mid.raw
"$QEMU_IO" -f raw -c 'write -P 0x5a 1050000 10' mid.raw >/dev/null

cmp_both() {   # cmp_both WANT_RC args...
    local want=$1
    shift
    "$QEMU_IMG" compare "$@" >q.out 2>&1
    local qrc=$?
    uimg compare "$@" >u.out 2>&1
    local urc=$?
    [ $qrc = "$want" ] || fail "qemu-img compare $* exited $qrc, test expects $want"
    [ $urc = $qrc ] || { cat u.out >&2; fail "compare $*: ublkd exit $urc, qemu-img $qrc"; }
    same_output "compare $*" u.out q.out
}

cmp_both 0 -f raw -F raw a.raw same.raw
cmp_both 0 a.raw same.raw
cmp_both 1 -f raw -F raw a.raw diff.raw
cmp_both 1 -f raw -F raw diff.raw a.raw
cmp_both 0 -f raw -F raw a.raw bigger.raw
cmp_both 0 -f raw -F raw bigger.raw a.raw
cmp_both 1 -f raw -F raw a.raw bigdirty.raw
cmp_both 1 -s -f raw -F raw a.raw bigger.raw
cmp_both 0 -f raw -F raw z1.raw z2.raw
cmp_both 1 -f raw -F raw a.raw mid.raw
cmp_both 0 -q -f raw -F raw a.raw same.raw
cmp_both 1 -q -f raw -F raw a.raw diff.raw
cmp_both 2 -f raw -F raw a.raw nonexist.raw
cmp_both 2 -f raw -F raw nonexist.raw a.raw
cmp_both 0 -p -f raw -F raw a.raw same.raw
exit 0
