#!/bin/bash
# map: human and JSON output identical to qemu-img map for raw files with
# holes, including --start-offset / --max-length windows.
. "$(dirname "$0")/lib.sh"
require_format raw

make_sparse_raw holes.raw 64M
"$QEMU_IMG" create -q -f raw empty.raw 10M
"$QEMU_IMG" create -q -f raw zero.raw 0
truncate -s 5M nofirst.raw
"$QEMU_IO" -f raw -c 'write -P 1 2M 4k' nofirst.raw >/dev/null
head -c 3M /dev/urandom >full.raw

map_both() {
    "$QEMU_IMG" map "$@" >q.out 2>&1
    local qrc=$?
    uimg map "$@" >u.out 2>&1
    local urc=$?
    [ $urc = $qrc ] || { cat u.out >&2; fail "map $*: ublkd exit $urc, qemu-img $qrc"; }
    same_output "map $*" u.out q.out
}

for f in holes.raw empty.raw zero.raw nofirst.raw full.raw; do
    map_both -f raw "$f"
    map_both -f raw --output=json "$f"
    map_both --output=human "$f"
done
map_both -f raw --start-offset=1M --max-length=8M holes.raw
map_both -f raw --output=json --start-offset=4k --max-length=7340032 holes.raw
map_both -f raw --output=json --start-offset=100M holes.raw
map_both -f raw --output=xml holes.raw
map_both -f raw nonexist.raw
exit 0
